"""Which OpenAI-compatible server the remote backend talks to, and what follows from that.

The servers share `/v1/chat/completions` but not the rest: llama.cpp's servers read the
repetition penalty as `repeat_penalty` (and ignore `repetition_penalty`), `transformers serve`
refuses fields it does not know, each says its context length (or not) in its own place, and
each offers its own way (or none) to count a prompt's tokens. The kind is detected once at
start from the server's own signs, or set with `[model] server`.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)

SERVER_INFO_TIMEOUT_S = 5  # each question asked of the server at start or to count a prompt


class ServerKind(Enum):
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMA_CPP = "llama.cpp"  # llama.cpp's own C++ server, llama-server
    LLAMA_CPP_PYTHON = "llama-cpp-python"  # the server of the llama-cpp-python package
    TRANSFORMERS = "transformers"  # `transformers serve`
    OLLAMA = "ollama"  # Ollama's OpenAI-compatible API (/v1)
    OTHER = "openai"  # any other OpenAI-compatible server: only the API's own fields are certain

    @property
    def penalty_field(self) -> str | None:
        """The request field the server reads the repetition penalty from (None: it has none)."""
        if self in (ServerKind.LLAMA_CPP, ServerKind.LLAMA_CPP_PYTHON):
            return "repeat_penalty"
        if self is ServerKind.TRANSFORMERS:
            return None  # it refuses unknown fields
        if self is ServerKind.OLLAMA:
            return None  # its /v1 reads frequency_penalty and presence_penalty only, and ignores the rest
        return "repetition_penalty"  # vLLM, SGLang, and the most common name elsewhere

    @property
    def reports_usage(self) -> bool:
        """It takes stream_options.include_usage and ends the stream with the token counts."""
        return self in (ServerKind.VLLM, ServerKind.SGLANG, ServerKind.LLAMA_CPP, ServerKind.TRANSFORMERS)

    @property
    def takes_template_arguments(self) -> bool:
        """It passes chat_template_kwargs (SmolLM3's enable_thinking) to the chat template."""
        return self not in (ServerKind.LLAMA_CPP_PYTHON, ServerKind.OLLAMA)


@dataclass(frozen=True)
class ServerFacts:
    """What the server says of itself at start."""

    kind: ServerKind
    context_tokens: int = 0  # 0: it does not say


def server_facts(api: "ServerApi", model_name: str, setting: str = "auto") -> ServerFacts:
    """Ask the server (once, at start) what it is and how long its context is."""
    listing = api.get_json("/v1/models")
    entries = listing.get("data") if isinstance(listing, dict) else None
    entry = _model_entry(entries if isinstance(entries, list) else [], model_name)
    props = api.get_json("/props")
    kind = ServerKind(setting) if setting != "auto" else _detect(api, entry, props)
    return ServerFacts(kind, _context_length(api, kind, entry, props, model_name))


def _detect(api: "ServerApi", entry: dict, props: object) -> ServerKind:
    owner = str(entry.get("owned_by", "")).lower()
    if isinstance(props, dict) and ("default_generation_settings" in props or "build_info" in props):
        return ServerKind.LLAMA_CPP
    if owner in ("vllm", "sglang"):
        return ServerKind(owner)
    if owner == "llamacpp" or "meta" in entry:
        return ServerKind.LLAMA_CPP
    schema = api.get_json("/openapi.json")
    schema = schema if isinstance(schema, dict) else {}
    title = str((schema.get("info") or {}).get("title", "")).lower()
    if "llama.cpp" in title or owner == "me":
        return ServerKind.LLAMA_CPP_PYTHON
    if "/load_model" in (schema.get("paths") or {}):  # `transformers serve` (its title is FastAPI's default)
        return ServerKind.TRANSFORMERS
    version = api.get_json("/api/version")  # Ollama's own API, beside its /v1
    if owner == "library" or (isinstance(version, dict) and set(version) == {"version"}):
        return ServerKind.OLLAMA
    return ServerKind.OTHER


def _context_length(api: "ServerApi", kind: ServerKind, entry: dict, props: object, model_name: str) -> int:
    """vLLM and SGLang: `max_model_len` in the model's /v1/models entry. llama-server: a slot's
    `n_ctx` (in /props, else /slots); its /models entry's n_ctx_train is what the model was
    trained for, which the server may not have allotted. Ollama: see `_ollama_context`. The
    others do not say."""
    if length := _length_in(entry, "max_model_len"):
        return length
    if kind is ServerKind.LLAMA_CPP:
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        if length := _length_in(settings, "n_ctx") or _length_in(props, "n_ctx"):
            return length
        slots = api.get_json("/slots")  # asked only where /props does not say
        return _length_in(slots[0] if isinstance(slots, list) and slots else None, "n_ctx")
    if kind is ServerKind.LLAMA_CPP_PYTHON:
        return _context_from_refusal(api)
    if kind is ServerKind.OLLAMA:
        return _ollama_context(api, model_name)
    return 0


OLLAMA_LOAD_TIMEOUT_S = 300  # loading a model of several GB from disk, once at start


def _ollama_context(api: "ServerApi", model_name: str) -> int:
    """The context Ollama runs the model with, which its /v1 cannot be told and past which it cuts
    a prompt without a word: a `num_ctx` the Modelfile sets (in /api/show's parameters) is what
    every request gets; else the server's default (OLLAMA_CONTEXT_LENGTH, or one chosen from the
    GPU's memory), which only /api/ps tells (`context_length`, in releases since July 2025), of a
    loaded model. So a model not loaded yet is loaded (a generate request with no prompt only
    loads it), as the first reply would have done anyway."""
    shown = api.post_json("/api/show", {"model": model_name})
    if set_in_modelfile := _num_ctx(shown.get("parameters") if isinstance(shown, dict) else None):
        return set_in_modelfile
    if loaded := _ollama_loaded_context(api, model_name):
        return loaded
    log.info("Ollama is loading %s, to read the context it runs it with.", model_name)
    api.post_json("/api/generate", {"model": model_name, "stream": False}, timeout_s=OLLAMA_LOAD_TIMEOUT_S)
    return _ollama_loaded_context(api, model_name)


def _num_ctx(parameters: object) -> int:
    """`num_ctx` in /api/show's parameters, one "name value" a line ("num_ctx 8192"); 0 if unset."""
    for line in parameters.splitlines() if isinstance(parameters, str) else ():
        name, _, value = line.strip().partition(" ")
        if name == "num_ctx" and value.strip().isdigit():
            return int(value.strip())
    return 0


def _ollama_loaded_context(api: "ServerApi", model_name: str) -> int:
    """The model's `context_length` in /api/ps, which lists the models loaded now. A name without
    a tag is Ollama's ":latest"."""
    names = {model_name, model_name if ":" in model_name else f"{model_name}:latest"}
    running = api.get_json("/api/ps")
    models = running.get("models") if isinstance(running, dict) else None
    for model in models if isinstance(models, list) else ():
        if isinstance(model, dict) and names & {model.get("name"), model.get("model")}:
            return _length_in(model, "context_length")
    return 0


def _length_in(document: object, key: str) -> int:
    """A positive whole number under `key` of a JSON object; 0 if there is none."""
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


# A prompt longer than any context a server is started with (300,000 tokens): refusing it,
# llama-cpp-python names its context ("maximum context length is 2048 tokens"), having only
# tokenized it (0.7 s measured), since it says its context nowhere else.
_PROBE_PROMPT = " hi" * 300_000


def _context_from_refusal(api: "ServerApi") -> int:
    answer = api.post_json("/v1/completions", {"prompt": _PROBE_PROMPT, "max_tokens": 1, "stream": False},
                           keep_error=True)
    return (named_context(json.dumps(answer)) or 0) if answer is not None else 0


# How servers name their context when they refuse a prompt: vLLM and llama-cpp-python "maximum
# context length is 2048 tokens", llama-cpp-python's streaming path "context window of 2048",
# llama-server's JSON error "n_ctx": 2048, LM Studio "context length of only 4096", TGI
# "`max_new_tokens` must be <= 2048" (its total of prompt and answer).
_CONTEXT_NUMBER = re.compile(r"(?:context (?:length|window|size) (?:is|of)(?: only)?|n_ctx\W+|max_new_tokens` must be <=)"
                             r"\s*(\d+)", re.IGNORECASE)


# How servers say a prompt is longer than their context: vLLM "maximum context length is 2048
# tokens", llama-server "exceeds the available context size", llama-cpp-python "exceed context
# window of 2048", SGLang "longer than the model's context length", TGI "`inputs` tokens +
# `max_new_tokens` must be <= 2048", Groq "Please reduce the length of the messages", LM Studio
# "context length of only 4096".
_TOO_LONG = re.compile(r"context (length|size|window)|too long|exceeds? .*context|max_new_tokens` must be <="
                       r"|reduce the length of the messages", re.IGNORECASE)
# The error code OpenAI, Groq and others give it.
TOO_LONG_CODE = "context_length_exceeded"


def says_too_long(text: str) -> bool:
    """Whether a server's refusal says the prompt is longer than its context."""
    return bool(_TOO_LONG.search(text))


# How servers name a request field they do not take: OpenAI "Unrecognized request argument
# supplied: X", Groq "property 'X' is unsupported", OpenAI's "Unsupported parameter: 'X' ..." and
# "Unsupported value: 'X' ...".
_REFUSED_FIELD = re.compile(r"Unrecognized request argument supplied: (\w+)|property '(\w+)' is unsupported"
                            r"|Unsupported (?:parameter|value): '(\w+)'", re.IGNORECASE)


def refused_field(text: str) -> str | None:
    """The request field a server's refusal names as one it does not take (unknown, or not for
    this model), if it names one: OpenAI's and Groq's messages, OpenAI's `param` with code
    unsupported_parameter/unsupported_value, FastAPI's extra_forbidden (`transformers serve`)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if (isinstance(error, dict) and error.get("code") in ("unsupported_parameter", "unsupported_value")
                and isinstance(error.get("param"), str)):
            return error["param"]
        detail = data.get("detail")
        for item in detail if isinstance(detail, list) else ():
            if isinstance(item, dict) and item.get("type") in ("extra_forbidden", "value_error.extra") and item.get("loc"):
                return str(item["loc"][-1])
    match = _REFUSED_FIELD.search(text)
    return next(group for group in match.groups() if group) if match else None


def named_context(text: str) -> int | None:
    """The context length a server's refusal names, if it names one."""
    match = _CONTEXT_NUMBER.search(text)
    return int(match.group(1)) if match else None


def _model_entry(entries: list, model_name: str) -> dict:
    """The entry for the model the bot asks for; the only entry if none is named so (llama.cpp
    names its one model after the file)."""
    models = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in models if entry.get("id") == model_name]
    return (named or (models if len(models) == 1 else [{}]))[0]


class ServerApi:
    """Plain HTTP questions to the server, off the event loop (at start, or from the thread that
    renders prompts). Each answer is the JSON document, or None if anything went wrong."""

    def __init__(self, base_url: str, api_key: str | None):
        base_url = base_url.rstrip("/")
        self.root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def get_json(self, path: str) -> object:
        return self._ask(urllib.request.Request(self.root + path, headers=self._headers))

    def status(self, path: str) -> int | None:
        """The HTTP status of GET `path`; None when the server cannot be reached."""
        try:
            with urllib.request.urlopen(urllib.request.Request(self.root + path, headers=self._headers),
                                        timeout=SERVER_INFO_TIMEOUT_S) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def post_json(self, path: str, body: dict, keep_error: bool = False,
                  timeout_s: float = SERVER_INFO_TIMEOUT_S) -> object:
        """`keep_error`: an HTTP error's JSON body is the answer (else None)."""
        request = urllib.request.Request(self.root + path, data=json.dumps(body).encode(), method="POST",
                                         headers={**self._headers, "Content-Type": "application/json"})
        return self._ask(request, keep_error, timeout_s)

    def _ask(self, request: urllib.request.Request, keep_error: bool = False,
             timeout_s: float = SERVER_INFO_TIMEOUT_S) -> object:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if keep_error:
                try:
                    return json.loads(error.read())
                except (OSError, ValueError):
                    return None
            log.debug("could not read %s: %s", request.full_url, error)
            return None
        except (OSError, ValueError) as error:  # unreachable, HTTP error, timeout, not JSON
            log.debug("could not read %s: %s", request.full_url, error)
            return None
