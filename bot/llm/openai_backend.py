"""The remote backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang,
llama.cpp server, `transformers serve`) writes the replies; the bot only sends the chat
messages it built and reads the answer back as a server-sent-event stream.

The server does its own batching and caching, so this front keeps no queue: a reply starts
at once (place_in_line is 0) and `forget` has nothing to drop. The token budget is still
enforced here, before the request, with the model's own tokenizer when it is on this machine
(exact), else with a conservative character estimate (logged once as approximate).
Setting it up from the configuration: bot/llm/remote_setup.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Hashable

import aiohttp

from ..config import GenerationSettings
from .adapters import NO_ADAPTERS, Adapters
from .chat_template import TokenizerPool, render_prompt_ids
from .decoding import openai_fields
from .port import (Abilities, ChatMessages, ChatModel, GenerationFailed, GenerationTimeout, ModelKind,
                   RenderedPrompt)

log = logging.getLogger(__name__)

# Without the tokenizer we cannot count; three characters a token overestimates English
# (about four) so a prompt estimated to fit will fit.
CHARS_PER_TOKEN_ESTIMATE = 3
TOKENS_PER_MESSAGE_ESTIMATE = 8  # role markers and separators each message adds
CONNECT_TIMEOUT_S = 10


class RemoteTokenCounter:
    """Counts prompt tokens for a model that runs elsewhere: exactly with a local tokenizer,
    else by estimate. Safe from any thread."""

    def __init__(self, thinking: bool, tokenizer=None):
        self.thinking = thinking
        self.exact = tokenizer is not None
        self._tokenizers = TokenizerPool(tokenizer) if tokenizer is not None else None

    def count(self, messages: ChatMessages) -> int:
        if self._tokenizers is None:
            return estimate_tokens(messages)
        with self._tokenizers.borrowed() as tokenizer:
            return len(render_prompt_ids(tokenizer, messages, enable_thinking=self.thinking))

    def output_tokens(self, text: str) -> int | None:
        if self._tokenizers is None:
            return None
        with self._tokenizers.borrowed() as tokenizer:
            return len(tokenizer.encode(text, add_special_tokens=False))


def estimate_tokens(messages: ChatMessages) -> int:
    return sum(len(m["content"]) // CHARS_PER_TOKEN_ESTIMATE + TOKENS_PER_MESSAGE_ESTIMATE for m in messages)


class OpenAICompatibleModel(ChatModel):
    """Streams replies from an OpenAI-compatible server. Raises GenerationTimeout past the time
    limit and GenerationFailed (str() is a sentence for the user) when the server cannot answer.
    The server renders the prompt itself: it is sent as messages."""

    def __init__(self, base_url: str, model_name: str, context_tokens: int, counter: RemoteTokenCounter, *,
                 thinking: bool = False, timeout_s: float = 120.0, api_key: str | None = None,
                 send_repetition_penalty: bool = True, adapters: Adapters = NO_ADAPTERS):
        self.name = model_name
        self.context_tokens = context_tokens
        self.base_url = base_url.rstrip("/")
        # LoRA adapters the server serves as models of their own (vLLM's --lora-modules NAME=PATH):
        # a request for one is sent with that NAME as its model.
        self.abilities = Abilities(ModelKind.REMOTE, adapters=adapters, max_batch=0, server_url=self.base_url,
                                   counts_exactly=counter.exact)
        self.counter = counter
        self.thinking = thinking
        self.timeout_s = timeout_s
        self.send_repetition_penalty = send_repetition_penalty
        self._api_key = api_key  # never logged: kept out of repr and messages
        self._session: aiohttp.ClientSession | None = None

    def render(self, messages: ChatMessages) -> RenderedPrompt:
        return RenderedPrompt(messages, self.counter.count(messages))

    def output_tokens(self, text: str) -> int | None:
        return self.counter.output_tokens(text)

    async def stream(self, prompt: RenderedPrompt, params: GenerationSettings, *, channel: Hashable | None = None,
                     adapter: str | None = None) -> AsyncIterator[str]:
        """The reply in text pieces as the server writes them. Stopping the iteration (break,
        cancel, time limit) closes the connection, which tells the server to stop generating.
        `adapter` (a name, "base", or None for the default) picks the served model."""
        body = self.request_body(prompt.messages, params)
        body["model"] = self.adapter_to_run(adapter) or self.name
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with self._post(body) as response:
                await _raise_for_status(response)
                async for delta in _text_deltas(response, deadline):
                    yield delta
        except TimeoutError:
            log.warning("the model server passed the %.0f s limit; the request was closed", self.timeout_s)
            raise GenerationTimeout(f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.") from None
        except aiohttp.ClientConnectionError as error:
            log.warning("cannot reach the model server at %s: %s", self.base_url, error)
            raise GenerationFailed(f"The model server at {self.base_url} could not be reached.") from None

    def request_body(self, messages: ChatMessages, params: GenerationSettings) -> dict:
        return {
            "model": self.name,
            "messages": messages,
            "stream": True,
            **openai_fields(params, send_repetition_penalty=self.send_repetition_penalty),
            # vLLM and SGLang pass these to the chat template; SmolLM3 reads enable_thinking.
            "chat_template_kwargs": {"enable_thinking": self.thinking},
        }

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
