"""The remote backend: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang,
llama.cpp's servers, `transformers serve`) writes the replies; the bot only sends the chat
messages it built and reads the answer back as a server-sent-event stream.

The server does its own batching and caching, so this front keeps no queue: a reply starts
at once (place_in_line is 0) and `forget` has nothing to drop. The token budget is still
enforced here, before the request (bot/llm/remote_counting.py). What the servers do
differently (field names, context length, counting) follows from the server's kind
(bot/llm/server_kind.py). Setting it up from the configuration: bot/llm/remote_setup.py.

A server can fail in many ways; each ends in a sentence for the user and a channel that keeps
working: a request that fails before any answer is tried once more on a fresh connection (a
keep-alive connection the server had closed); a prompt refused as too long is tried once more
with older turns left out; a field the server does not take is left out from then on (one
warning); a busy or loading server is asked once more after the wait it names; a stream that
breaks off, or ends without saying it is finished, keeps what was written as an answer cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import AsyncIterator, Callable, Hashable

import aiohttp

from ..config import GenerationSettings
from .adapters import NO_ADAPTERS, Adapters
from .decoding import openai_fields
from .port import (Abilities, ChatMessages, ChatModel, GenerationFailed, GenerationInterrupted, GenerationTimeout,
                   ModelKind, PromptRefused, RenderedPrompt)
from .remote_counting import RemoteTokenCounter
from .server_kind import TOO_LONG_CODE, ServerKind, named_context, refused_field, says_too_long

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
BUSY_RETRY_S = 1.0  # the wait before asking again a busy server (429, 503) that names no wait
READ_WAIT_S = 5.0  # how long a reply waits for a server unread at start to be read

# Request fields a server may refuse as ones it does not take (OpenAI and Groq refuse every
# field they do not know; OpenAI's reasoning models refuse max_tokens and a temperature): sent
# without them from then on, with one warning saying what that costs.
OPTIONAL_FIELDS = {
    "chat_template_kwargs": "the thinking switch is not sent; the server's chat template decides",
    "stream_options": "the prompt's real token count does not come back; the bot's estimate is used",
    "repetition_penalty": "the repetition penalty is not applied",
    "repeat_penalty": "the repetition penalty is not applied",
    "top_p": "the server's own top-p applies",
    "temperature": "the server's own temperature and top-p apply",
    "max_tokens": "the answer's length limit is sent as max_completion_tokens instead",
}


@dataclasses.dataclass(frozen=True)
class ServerReading:
    """What the bot takes the server to be: read at start, or when it first answers."""

    kind: ServerKind
    context_tokens: int
    context_source: str  # where the context length comes from, said in /status
    counter: RemoteTokenCounter


class _NotAnswered(Exception):
    """A request that ended before the server wrote a word of the answer (internal)."""

    def __init__(self, reason: str, *, too_long: bool = False, context: int | None = None,
                 refused: str | None = None, wait_s: float | None = None, then: Exception | None = None):
        super().__init__(reason)
        self.too_long = too_long  # the server said (or, with an empty stream, seemed to say) the prompt is too long
        self.context = context  # the context length the server named, if it did
        self.refused = refused  # a field of the request the server does not take
        self.wait_s = wait_s  # busy: ask again after this many seconds, once ...
        self.then = then  # ... and if it is still busy, this is the error


@dataclasses.dataclass
class _Tries:
    """What one reply's requests have tried so far (each way of trying again is used once)."""

    messages: ChatMessages
    shortened: bool = False  # sent again with older turns left out
    fresh: bool = False  # sent again on a fresh connection
    waited: bool = False  # sent again after the wait a busy server asked for


class OpenAICompatibleModel(ChatModel):
    """Streams replies from an OpenAI-compatible server. Raises GenerationTimeout past the time
    limit, GenerationInterrupted when the server stops mid-answer, PromptRefused when the prompt
    cannot fit the server's context even shortened, and GenerationFailed (str() is a sentence
    for the user) when the server cannot answer. The server renders the prompt itself: it is
    sent as messages."""

    def __init__(self, base_url: str, model_name: str, context_tokens: int, counter: RemoteTokenCounter, *,
                 thinking: bool = False, timeout_s: float = 120.0, api_key: str | None = None,
                 send_repetition_penalty: bool = True, adapters: Adapters = NO_ADAPTERS,
                 server: ServerKind = ServerKind.OTHER, context_source: str = ""):
        self.name = model_name
        self.context_tokens = context_tokens
        self.base_url = base_url.rstrip("/")
        self.server = server
        # LoRA adapters the server serves as models of their own (vLLM's --lora-modules NAME=PATH):
        # a request for one is sent with that NAME as its model.
        self.abilities = Abilities(ModelKind.REMOTE, adapters=adapters, max_batch=0, server_url=self.base_url,
                                   counts_exactly=counter.exact, context_source=context_source)
        self.counter = counter
        self.thinking = thinking
        self.timeout_s = timeout_s
        self._send_penalty = send_repetition_penalty
        self._penalty_field = server.penalty_field if send_repetition_penalty else None
        self._left_out: set[str] = set()  # fields the server refused (see OPTIONAL_FIELDS)
        self._read_later: Callable[[], ServerReading | None] | None = None
        self._reading: asyncio.Future | None = None  # the server being read, at most one at a time
        self._api_key = api_key  # never logged: kept out of repr and messages
        self._session: aiohttp.ClientSession | None = None

    def read_server_when_it_answers(self, read: Callable[[], ServerReading | None]) -> None:
        """The server could not be read at start (not reachable yet, or still loading), so what it
        is and its context are guesses: `read` (None while the server still does not answer) is
        tried before each reply until it answers, and what it says then replaces the guesses."""
        self._read_later = read

    async def _read_server_if_still_unread(self) -> None:
        """One reading at a time, however many replies ask; a reply waits for it only briefly
        (READ_WAIT_S: a host that swallows packets, or Ollama loading a model, take long) and
        otherwise goes on with the guesses, which the reading replaces once it ends."""
        if self._read_later is None:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read_later))
            self._reading.add_done_callback(self._take_what_was_read)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reading), READ_WAIT_S)

    def _take_what_was_read(self, reading: asyncio.Future) -> None:
        if reading.cancelled():
            return
        if reading.exception() is not None:
            log.warning("could not read what the model server at %s is: %s", self.base_url, reading.exception())
        elif reading.result() is not None and self._read_later is not None:
            self._read_later = None
            self._take(reading.result())

    def _take(self, reading: ServerReading) -> None:
        self.server = reading.kind
        self.context_tokens = reading.context_tokens
        self.counter = reading.counter
        self._penalty_field = reading.kind.penalty_field if self._send_penalty else None
        self.abilities = dataclasses.replace(self.abilities, counts_exactly=reading.counter.exact,
                                             context_source=reading.context_source)

    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt:
        return RenderedPrompt(messages, self.counter.count(messages, thinking), thinking=thinking, opens_thought=None)

    def output_tokens(self, text: str) -> int | None:
        return self.counter.output_tokens(text)

    async def stream(self, prompt: RenderedPrompt, params: GenerationSettings, *, channel: Hashable | None = None,
                     adapter: str | None = None) -> AsyncIterator[str]:
        """The reply in text pieces as the server writes them. Stopping the iteration (break,
        cancel, time limit) closes the connection, which tells the server to stop generating.
        `adapter` (a name, "base", or None for the default) picks the served model."""
        await self._read_server_if_still_unread()
        model = self.adapter_to_run(adapter) or self.name
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        tries = _Tries(prompt.messages)
        try:
            while True:
                body = {**self.request_body(tries.messages, params, prompt.thinking), "model": model}
                try:
                    # Closed at once when the caller stops reading: that closes the connection.
                    async with contextlib.aclosing(self._answer(body, tries.messages, deadline, tries.fresh)) as answer:
                        async for delta in answer:
                            yield delta
                    return
                except _NotAnswered as failure:
                    await self._next_try(failure, tries, params, prompt.thinking, deadline)
        except TimeoutError:
            log.warning("the model server passed the %.0f s limit; the request was closed", self.timeout_s)
            raise GenerationTimeout(f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.") from None

    async def _next_try(self, failure: _NotAnswered, tries: _Tries, params: GenerationSettings,
                        thinking: bool | None, deadline: float) -> None:
        """What to send after a request that got no answer (updates `tries`): without a field the
        server refused; once more with older turns left out (a prompt refused as too long); once
        more after the wait a busy server asked for (if the time limit allows it); once more on a
        fresh connection (anything else); after that, the error for the user."""
        if failure.refused is not None:
            self._leave_out(failure.refused, str(failure))
        elif failure.too_long:
            fewer = tries.messages if tries.shortened else await self._shortened(
                tries.messages, failure.context, params.max_new_tokens, thinking)
            if len(fewer) == len(tries.messages):  # nothing (more) to leave out: asking again is no use
                raise PromptRefused(f"The prompt is too long for the model server: {failure}")
            tries.messages, tries.shortened = fewer, True
        elif failure.wait_s is not None:
            left = deadline - asyncio.get_running_loop().time()
            if tries.waited or failure.wait_s >= left:
                raise failure.then
            log.info("the model server is busy (%s); asking again in %.1f s", failure, failure.wait_s)
            await asyncio.sleep(failure.wait_s)
            tries.waited = True
        elif tries.fresh:
            log.warning("cannot reach the model server at %s: %s", self.base_url, failure)
            raise GenerationFailed("The model server could not be reached.")  # where: in the log line above
        else:
            log.info("the model server did not answer (%s); trying once more on a fresh connection", failure)
            tries.fresh = True

    def _leave_out(self, field: str, said: str) -> None:
        log.warning("The model server refused the request field %s (%s): requests go without it from now on, "
                    "so %s.", field, said, OPTIONAL_FIELDS[field])
        self._left_out.add(field)

    async def _answer(self, body: dict, messages: ChatMessages, deadline: float, fresh: bool) -> AsyncIterator[str]:
        """One request's answer. Before its first word every failure is _NotAnswered; after it,
        a stream that breaks off or ends unfinished is GenerationInterrupted."""
        written = finished = thought = False
        try:
            async with self._post(body, fresh=fresh) as response:
                await _raise_for_status(response, body)
                whole = await _whole_document(response)
                async for chunk in (_chunks(response, deadline) if whole is None else _just(whole)):
                    delta, finish, usage = _parts_of(chunk)
                    if usage is not None:
                        self.counter.server_counted(messages, usage)
                    finished = finished or finish
                    thought = thought or _thinks(chunk)
                    if delta:
                        written = True
                        yield delta
        # The time limit, which stream() reports. Caught first: aiohttp's read timeout is also a
        # ClientConnectionError, and must not be taken for a server that went away.
        except TimeoutError:
            raise
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
            if not written:
                raise _NotAnswered(f"{type(error).__name__}: {error}") from None
            log.warning("the model server at %s stopped mid-answer: %s: %s", self.base_url, type(error).__name__, error)
            raise GenerationInterrupted("The model server stopped answering mid-reply.") from None
        except aiohttp.ClientError as error:  # the request could not be made at all (an invalid URL, say)
            log.warning("could not ask the model server at %s: %s: %s (check [model] base_url)", self.base_url,
                        type(error).__name__, error)
            raise GenerationFailed("The model server could not be asked (see the log).") from None
        if finished and thought and not written:
            # Its thought went apart (reasoning_content, or Ollama's and OpenRouter's reasoning),
            # and it used the whole allowance: without this, the user would read "empty answer".
            raise GenerationFailed("The model spent its whole allowance thinking and wrote no answer. Raise "
                                   "[generation] max_new_tokens, or switch its thinking off on the model server.")
        if not finished:
            if not written:  # llama-cpp-python's answer to a prompt longer than its context
                raise _NotAnswered("it sent an empty answer", too_long=True)
            log.warning("the model server at %s ended an answer without finishing it (no finish_reason)",
                        self.base_url)
            raise GenerationInterrupted("The model server ended the answer before it was finished.")

    async def _shortened(self, messages: ChatMessages, server_context: int | None, answer_tokens: int,
                         thinking: bool | None) -> ChatMessages:
        """The prompt with its oldest turns left out until it fits what the server takes (the
        context it named, which is remembered, else three quarters of what was sent)."""
        if server_context and server_context < self.context_tokens:
            log.warning("The model server's context is %d tokens, not %d: prompts are cut to fit from now on.",
                        server_context, self.context_tokens)
            self.context_tokens = server_context
            self.abilities = dataclasses.replace(self.abilities, context_source="as the server said when it "
                                                 "refused a longer prompt")
        sent = await asyncio.to_thread(self.counter.count, messages, thinking)
        budget = min(self.context_tokens - answer_tokens, sent * 3 // 4)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = list(messages[len(system):])
        while len(turns) > 1:
            turns.pop(0)
            while len(turns) > 1 and turns[0]["role"] != "user":
                turns.pop(0)
            if await asyncio.to_thread(self.counter.count, [*system, *turns], thinking) <= budget:
                break
        return [*system, *turns]

    def request_body(self, messages: ChatMessages, params: GenerationSettings, thinking: bool | None = None) -> dict:
        body = {"model": self.name, "messages": messages, "stream": True,
                **openai_fields(params, penalty_field=self._penalty_field)}
        if self.server.reports_usage:  # the prompt's real token count comes back at the end
            body["stream_options"] = {"include_usage": True}
        if self.server.takes_template_arguments:
            # vLLM, SGLang and llama-server pass these to the chat template; SmolLM3 reads enable_thinking.
            body["chat_template_kwargs"] = {"enable_thinking": self.thinking if thinking is None else thinking}
        for field in self._left_out:
            if field == "max_tokens" and field in body:
                body["max_completion_tokens"] = body.pop("max_tokens")
            elif field == "temperature":
                body.pop("temperature", None)
                body.pop("top_p", None)
            else:
                body.pop(field, None)
        return body

    @contextlib.asynccontextmanager
    async def _post(self, body: dict, *, fresh: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        # sock_read bounds the wait for the response headers; the deadline bounds the rest.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self.timeout_s)
        client = await self._client(fresh)
        async with client.post(f"{self.base_url}/chat/completions", json=body, headers=headers,
                               timeout=timeout) as response:
            yield response

    async def _client(self, fresh: bool = False) -> aiohttp.ClientSession:
        # Created on first use: the model is loaded in a thread with no event loop. A fresh one
        # drops every kept-alive connection, any of which the server may have closed.
        if fresh and self._session is not None:
            await self._session.close()
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


async def _raise_for_status(response: aiohttp.ClientResponse, sent: dict) -> None:
    if response.status < 400:
        return
    body = await response.text()
    detail = _server_message(body)
    log.warning("the model server answered HTTP %s: %s", response.status, detail)
    field = refused_field(body) if response.status in (400, 422) else None
    if field in OPTIONAL_FIELDS and field in sent:
        raise _NotAnswered(detail, refused=field)
    if response.status in (400, 413, 422) and (says_too_long(detail) or _error_code(body) == TOO_LONG_CODE):
        raise _NotAnswered(detail, too_long=True, context=named_context(body))
    side = "refused the request" if response.status < 500 else "failed"
    # The channel reads a sentence; the server's own words (addresses, paths, pages) go to the log only.
    error = GenerationFailed(f"The model server {side} (HTTP {response.status}).")
    if response.status == 429:
        error = GenerationFailed("The model server is busy right now (too many requests); try again in a moment.")
    if response.status in (429, 503):  # busy, or still loading its model: worth one more try
        raise _NotAnswered(detail, wait_s=_retry_after(response), then=error)
    raise error


def _retry_after(response: aiohttp.ClientResponse) -> float:
    """The wait a busy server asks for (Retry-After, in seconds), else BUSY_RETRY_S."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: a short wait either way
        return BUSY_RETRY_S


def _error_code(text: str) -> object:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    return error.get("code") if isinstance(error, dict) else None


async def _whole_document(response: aiohttp.ClientResponse) -> dict | None:
    """A 200 that is a whole document, not a stream: a server that does not stream sends its
    whole chat completion (returned as one chunk of the stream it would have sent); anything
    else (a proxy's page, an error as JSON) is the error. Without this it would read as an empty
    stream, which llama-cpp-python sends for a prompt too long, and the message would be
    refused as too long. None: it is a stream."""
    if response.content_type not in ("application/json", "text/html"):
        return None
    text = await response.text()
    try:
        document = json.loads(text)
        choice = document["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        content = None
    if isinstance(content, str):
        return {"choices": [{"delta": {"content": content}, "finish_reason": choice.get("finish_reason") or "stop"}],
                "usage": document.get("usage")}
    detail = _server_message(text)
    log.warning("the model server answered with %s instead of a stream (check [model] base_url): %s",
                response.content_type, detail)
    raise GenerationFailed(f"The model server sent no answer ({response.content_type} instead of a stream).")


async def _just(chunk: dict) -> AsyncIterator[dict]:
    yield chunk


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


async def _chunks(response: aiohttp.ClientResponse, deadline: float) -> AsyncIterator[dict]:
    """The chunks of a chat-completion SSE stream, until `data: [DONE]` or the end."""
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
        yield _chunk(data)
        if loop.time() > deadline:
            raise TimeoutError


def _sse_data(line: bytes) -> str | None:
    """The payload of one `data:` line; None for blank lines, comments and other fields."""
    text = line.decode("utf-8").strip()
    if not text.startswith("data:"):
        return None
    return text[len("data:"):].strip()


def _chunk(data: str) -> dict:
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise GenerationFailed("The model server sent a reply the bot could not read.")
    if "error" in chunk:  # vLLM reports errors inside the stream once it has started
        log.warning("the model server failed while writing: %s", _server_message(data))
        raise GenerationFailed("The model server failed while writing the reply.")
    return chunk


def _first_choice(chunk: dict) -> dict:
    """The chunk's first choice ({} in a usage-only chunk, whose choices are empty or null)."""
    choices = chunk.get("choices") or [{}]
    return choices[0] if isinstance(choices[0], dict) else {}


def _thinks(chunk: dict) -> bool:
    """Whether the chunk carries thought, which servers that split it off send apart from the
    answer (vLLM, llama-server, LM Studio: reasoning_content; Ollama, OpenRouter: reasoning)."""
    delta = _first_choice(chunk).get("delta") or {}
    return isinstance(delta, dict) and bool(delta.get("reasoning_content") or delta.get("reasoning"))


def _parts_of(chunk: dict) -> tuple[str, bool, int | None]:
    """A chunk's text, whether it says the answer is finished, and the prompt's token count if
    it reports one (the last chunk, with stream_options.include_usage)."""
    choice = _first_choice(chunk)
    usage = chunk.get("usage")
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return ((choice.get("delta") or {}).get("content") or "", bool(choice.get("finish_reason")),
            prompt_tokens if isinstance(prompt_tokens, int) else None)

