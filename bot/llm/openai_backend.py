"""The remote backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang,
llama.cpp server, `transformers serve`) writes the replies; the bot only sends the chat
messages it built and reads the answer back as a server-sent-event stream.

The server does its own batching and caching, so this front keeps no queue: a reply starts
at once (place_in_line is 0) and `forget` has nothing to drop. The token budget is still
enforced here, before the request, with the model's own tokenizer when it is on this machine
(exact), else with a conservative character estimate (logged once as approximate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Hashable

import aiohttp

from ..config import ConfigError, GenerationSettings, ModelSettings
from . import embedded
from .adapters import NO_ADAPTERS, Adapters, find_adapters
from .worker import ChatMessages, GenerationFailed, GenerationTimeout, ModelFront

log = logging.getLogger(__name__)

API_KEY_VARIABLES = ("BOT_MODEL_API_KEY", "OPENAI_API_KEY")
# Without the tokenizer we cannot count; three characters a token overestimates English
# (about four) so a prompt estimated to fit will fit.
CHARS_PER_TOKEN_ESTIMATE = 3
TOKENS_PER_MESSAGE_ESTIMATE = 8  # role markers and separators each message adds
FALLBACK_CONTEXT_TOKENS = 4096  # when neither the setting, the server nor a local config says
CONNECT_TIMEOUT_S = 10
SERVER_INFO_TIMEOUT_S = 5  # asking the server for its context length, once at start


class RemoteTokenCounter:
    """Counts prompt tokens for a model that runs elsewhere: exactly with a local tokenizer,
    else by estimate. Shaped like a Backend so that ModelFront's locked counting applies."""

    def __init__(self, name: str, context_tokens: int, thinking: bool, tokenizer=None):
        self.name = name
        self.context_tokens = context_tokens
        self.thinking = thinking
        self.tokenizer = tokenizer

    def count_tokens(self, messages: ChatMessages) -> int:
        if self.tokenizer is None:
            return estimate_tokens(messages)
        from .chat_template import render_prompt_ids
        return len(render_prompt_ids(self.tokenizer, messages, enable_thinking=self.thinking))


def estimate_tokens(messages: ChatMessages) -> int:
    return sum(len(m["content"]) // CHARS_PER_TOKEN_ESTIMATE + TOKENS_PER_MESSAGE_ESTIMATE for m in messages)


class OpenAICompatibleModel(ModelFront):
    """Streams replies from an OpenAI-compatible server. Raises GenerationTimeout past the time
    limit and GenerationFailed (str() is a sentence for the user) when the server cannot answer."""

    def __init__(self, base_url: str, model_name: str, counter: RemoteTokenCounter, *,
                 thinking: bool = False, timeout_s: float = 120.0, api_key: str | None = None,
                 send_repetition_penalty: bool = True, adapters: Adapters = NO_ADAPTERS):
        super().__init__(counter)
        # LoRA adapters the server serves as models of their own (vLLM's --lora-modules NAME=PATH):
        # a request for one is sent with that NAME as its model.
        self._adapters = adapters
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.thinking = thinking
        self.timeout_s = timeout_s
        self.send_repetition_penalty = send_repetition_penalty
        self._api_key = api_key  # never logged: kept out of repr and messages
        self._session: aiohttp.ClientSession | None = None
        self.open_streams = 0  # responses being read now (0 once every stream is closed)

    @property
    def adapters(self) -> Adapters:
        return self._adapters

    async def generate(self, messages: ChatMessages, params: GenerationSettings, *,
                       cache_key: Hashable | None = None, adapter: str | None = None) -> str:
        return "".join([delta async for delta in self.stream(messages, params, adapter=adapter)])

    async def stream(self, messages: ChatMessages, params: GenerationSettings, *,
                     cache_key: Hashable | None = None, adapter: str | None = None) -> AsyncIterator[str]:
        """The reply in text pieces as the server writes them. Stopping the iteration (break,
        cancel, time limit) closes the connection, which tells the server to stop generating.
        `adapter` (a name, "base", or None for the default) picks the served model."""
        body = self.request_body(messages, params)
        body["model"] = self.lora_for(adapter) or self.model_name
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with self._post(body) as response:
                self.open_streams += 1
                try:
                    await _raise_for_status(response)
                    async for delta in _text_deltas(response, deadline):
                        yield delta
                finally:
                    self.open_streams -= 1
        except TimeoutError:
            log.warning("the model server passed the %.0f s limit; the request was closed", self.timeout_s)
            raise GenerationTimeout(f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.") from None
        except aiohttp.ClientConnectionError as error:
            log.warning("cannot reach the model server at %s: %s", self.base_url, error)
            raise GenerationFailed(f"The model server at {self.base_url} could not be reached.") from None

    def request_body(self, messages: ChatMessages, params: GenerationSettings) -> dict:
        body = {
            "model": self.model_name,
            "messages": messages,
            "stream": True,
            "max_tokens": params.max_new_tokens,
            # Greedy decoding is temperature 0 in this API; there is no do_sample field.
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p if params.do_sample else 1.0,
            # vLLM and SGLang pass these to the chat template; SmolLM3 reads enable_thinking.
            "chat_template_kwargs": {"enable_thinking": self.thinking},
        }
        if self.send_repetition_penalty:
            # Not part of the OpenAI API (frequency_penalty is a different, additive penalty);
            # vLLM, SGLang and llama.cpp server accept it, `transformers serve` refuses it.
            body["repetition_penalty"] = params.repetition_penalty
        return body

    def _post(self, body: dict):
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        # sock_read bounds the wait for the response headers; the deadline bounds the rest.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self.timeout_s)
        return self._client().post(f"{self.base_url}/chat/completions", json=body, headers=headers,
                                   timeout=timeout)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: the model is loaded in a thread with no event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        """Close the connection pool (scheduled on the running loop: the App closes models
        synchronously)."""
        if self._session is None or self._session.closed:
            return
        try:
            asyncio.get_running_loop().create_task(self.aclose())
        except RuntimeError:  # no loop any more: the process is ending and the sockets with it
            pass


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    detail = _server_message(await response.text())
    log.warning("the model server answered HTTP %s: %s", response.status, detail)
    if response.status == 429:
        raise GenerationFailed("The model server is busy right now (too many requests); try again in a moment.")
    side = "refused the request" if response.status < 500 else "failed"
    raise GenerationFailed(f"The model server {side} (HTTP {response.status}): {detail}")


def _server_message(text: str) -> str:
    """The error sentence inside an OpenAI-style ({"error": {"message"}}) or FastAPI-style
    ({"detail"}) body, else the body itself, cut short."""
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:300]
        if isinstance(data.get("detail"), list):  # FastAPI's validation errors: where and what, not the input
            return "; ".join(_validation_problem(item) for item in data["detail"])[:300]
        if "detail" in data:
            return str(data["detail"])[:300]
        if isinstance(error, str):
            return error[:300]
    return text.strip()[:300]


def _validation_problem(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc") or ())
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", ""))


async def _text_deltas(response: aiohttp.ClientResponse, deadline: float) -> AsyncIterator[str]:
    """The content pieces of a chat-completion SSE stream, until `data: [DONE]` or the end."""
    loop = asyncio.get_running_loop()
    while True:
        async with asyncio.timeout_at(deadline):
            line = await response.content.readline()
        if not line:
            return
        data = _sse_data(line)
        if data is None:
            continue
        if data == "[DONE]":
            return
        delta = _content_of(data)
        if delta:
            yield delta
        if loop.time() > deadline:
            raise TimeoutError


def _sse_data(line: bytes) -> str | None:
    """The payload of one `data:` line; None for blank lines, comments and other fields."""
    text = line.decode("utf-8").strip()
    if not text.startswith("data:"):
        return None
    return text[len("data:"):].strip()


def _content_of(data: str) -> str:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise GenerationFailed("The model server sent a reply the bot could not read.") from None
    if "error" in chunk:  # vLLM reports errors inside the stream once it has started
        raise GenerationFailed(f"The model server failed while writing: {_server_message(data)}")
    choices = chunk.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def load_openai_model(settings: ModelSettings) -> OpenAICompatibleModel:
    """The remote model as configured, with the best token counting this machine allows."""
    if not settings.base_url:
        raise ConfigError('[model] backend = "openai" needs base_url, e.g. "http://127.0.0.1:8000/v1".')
    local_source = _local_model_source(settings.name)
    tokenizer = _local_tokenizer(local_source)
    api_key = api_key_from_environment()
    # The server's own limit first: it may serve less than the model's config allows (--max-model-len).
    context = (settings.context_tokens or server_context_length(settings.base_url, settings.name, api_key)
               or _local_context_length(local_source) or FALLBACK_CONTEXT_TOKENS)
    if tokenizer is None:
        log.warning("No local tokenizer for %s: the prompt token budget (%d tokens) is approximate "
                    "(about %d characters a token).", settings.name, context, CHARS_PER_TOKEN_ESTIMATE)
    counter = RemoteTokenCounter(settings.name, context, settings.thinking, tokenizer)
    adapters = served_adapters(settings)
    log.info("Replies come from %s (model %s%s).", settings.base_url, settings.name,
             f"; LoRA adapters: {', '.join(adapters.names) or 'none to pick'}, default {adapters.default or 'none'}"
             if adapters.any else "")
    return OpenAICompatibleModel(settings.base_url, settings.name, counter, thinking=settings.thinking,
                                 timeout_s=settings.generation_timeout, api_key=api_key,
                                 send_repetition_penalty=settings.send_repetition_penalty, adapters=adapters)


def served_adapters(settings: ModelSettings) -> Adapters:
    """The adapters a remote server serves, by the model name each is sent as: the folder's name
    (vLLM: --lora-modules NAME=PATH with NAME the folder's name). The server has the weights; here,
    adapters_dir only says which names server admins may pick, so it is read (and checked) as for
    a local model, and [model] adapter need not exist on this machine."""
    names = tuple(sorted(find_adapters(Path(settings.adapters_dir)))) if settings.adapters_dir else ()
    default = Path(settings.adapter).name if settings.adapter else None
    return Adapters(default, names, default)


def api_key_from_environment(environ: dict[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return next((environ[name].strip() for name in API_KEY_VARIABLES if environ.get(name, "").strip()), None)


def server_context_length(base_url: str, model_name: str, api_key: str | None = None) -> int:
    """The context length (prompt + answer tokens) the server reports for `model_name`; 0 if it
    reports none or cannot be asked. vLLM and SGLang: `max_model_len` of the model's entry in
    GET {base_url}/models. llama.cpp server: one slot's `n_ctx` in GET /props (its /models entry
    has `meta.n_ctx_train`, the length the model was trained for, which the server may not
    have allotted). `transformers serve` reports none."""
    listing = _get_json(f"{base_url.rstrip('/')}/models", api_key)
    entries = listing.get("data") if isinstance(listing, dict) else None
    entry = _model_entry(entries if isinstance(entries, list) else [], model_name)
    length = entry.get("max_model_len")
    if isinstance(length, int) and length > 0:
        log.info("The model server serves %s with a context of %d tokens.", model_name, length)
        return length
    if "meta" in entry:  # llama.cpp server
        props = _get_json(f"{_server_root(base_url)}/props", api_key)
        slot = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = slot.get("n_ctx") if isinstance(slot, dict) else None
        if isinstance(n_ctx, int) and n_ctx > 0:
            log.info("The llama.cpp server gives each request a context of %d tokens.", n_ctx)
            return n_ctx
    return 0


def _model_entry(entries: list, model_name: str) -> dict:
    """The entry for the model the bot asks for; the only entry if none is named so (llama.cpp
    names its one model after the file)."""
    models = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in models if entry.get("id") == model_name]
    return (named or (models if len(models) == 1 else [{}]))[0]


def _server_root(base_url: str) -> str:
    base_url = base_url.rstrip("/")
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def _get_json(url: str, api_key: str | None) -> object:
    """GET a JSON document (at load time, off the event loop); None if that fails in any way."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=SERVER_INFO_TIMEOUT_S) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as error:  # unreachable, HTTP error, timeout, not JSON
        log.debug("could not read %s: %s", url, error)
        return None


def _local_model_source(name: str) -> str | Path:
    if name == embedded.EMBEDDED_NAME:
        try:
            return embedded.converted_model_dir()
        except embedded.EmbeddedModelMissing:
            return name
    return name


def _local_tokenizer(source: str | Path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _local_context_length(source: str | Path) -> int:
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return 0
    return int(getattr(config, "max_position_embeddings", 0) or 0)
