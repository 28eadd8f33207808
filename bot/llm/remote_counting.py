"""Counting a prompt's tokens for a model that runs on a server, so the window never holds more
than the server takes: exactly where the server can count (llama-server's template and
tokenizer, vLLM's /tokenize), else with the model's tokenizer on this machine, else by a
cautious estimate that the server's own reported counts correct upwards."""

from __future__ import annotations

import logging
import math
import threading

from .chat_template import TokenizerPool, render_prompt_ids
from .port import ChatMessages
from .server_kind import ServerApi, ServerKind

log = logging.getLogger(__name__)

# An estimate must not undercount. Byte-level BPE tokenizers (SmolLM's among them) give a
# token at most per UTF-8 byte, and English runs about four characters a token: so plain ASCII
# counts a token per three characters, any other character a token per byte (Chinese is three
# bytes a character; SmolLM2's tokenizer spends about 2.3 tokens on each).
CHARS_PER_TOKEN_ESTIMATE = 3
TOKENS_PER_MESSAGE_ESTIMATE = 8  # role markers and separators each message adds


def estimate_tokens(messages: ChatMessages) -> int:
    return sum(estimate_text_tokens(m["content"]) + TOKENS_PER_MESSAGE_ESTIMATE for m in messages)


def estimate_text_tokens(text: str) -> int:
    ascii_chars = sum(1 for char in text if char < "\x80")
    other_bytes = len(text.encode("utf-8")) - ascii_chars
    return -(-ascii_chars // CHARS_PER_TOKEN_ESTIMATE) + other_bytes


class RemoteTokenCounter:
    """Counts prompt tokens for a model that runs elsewhere. Safe from any thread.

    `server` (the server's own counting, where its kind has one) comes first, then a local
    `tokenizer`, then the estimate. `exact` says whether the counts are the server's truth."""

    def __init__(self, thinking: bool, tokenizer=None, server: "ServerCounting | None" = None):
        self.thinking = thinking
        self._server = server
        self._tokenizers = TokenizerPool(tokenizer) if tokenizer is not None else None
        self.exact = tokenizer is not None or (server is not None and server.exact)
        self._correction = 1.0  # the estimate times this never fell short of a count the server reported
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        """How prompts are counted, for the log."""
        if self._server is not None and self._server.exact:
            return "counted by the server"
        if self._tokenizers is not None:
            return "counted with the model's tokenizer on this machine"
        if self._server is not None:
            return "the server counts each message's text, the template's tokens are estimated"
        return "estimated, then corrected by the counts the server reports"

    def count(self, messages: ChatMessages, thinking: bool | None = None) -> int:
        thinking = self.thinking if thinking is None else thinking  # the template renders either way
        if self._server is not None and self._server.exact:
            counted = self._server.count(messages, thinking)
            if counted is not None:
                return counted
        if self._tokenizers is not None:
            with self._tokenizers.borrowed() as tokenizer:
                return len(render_prompt_ids(tokenizer, messages, enable_thinking=thinking))
        counted = self._server.count(messages, thinking) if self._server is not None else None
        if counted is not None:
            return counted
        return math.ceil(estimate_tokens(messages) * self._correction)

    def output_tokens(self, text: str) -> int | None:
        if self._tokenizers is None:
            return None
        with self._tokenizers.borrowed() as tokenizer:
            return len(tokenizer.encode(text, add_special_tokens=False))

    def server_counted(self, messages: ChatMessages, prompt_tokens: int) -> None:
        """The server reported how many tokens a prompt really was: an estimate that fell short
        grows to match from now on (it never shrinks: a count too low gets prompts refused)."""
        if self.exact or prompt_tokens <= 0:
            return
        estimated = estimate_tokens(messages)
        with self._lock:
            if prompt_tokens > estimated * self._correction:
                self._correction = prompt_tokens / estimated
                log.info("The model server counted %d prompt tokens where the estimate said %d: estimates "
                         "are now multiplied by %.2f.", prompt_tokens, estimated, self._correction)


class ServerCounting:
    """A server's own token counting, over HTTP from the thread that renders prompts. `count`
    is None when the server could not answer (the caller falls back)."""

    def __init__(self, api: ServerApi, kind: ServerKind, model_name: str):
        self._api, self.kind, self._model = api, kind, model_name
        # llama-server renders its chat template and tokenizes; vLLM tokenizes chat messages.
        # llama-cpp-python only tokenizes text, so the template's own tokens are estimated.
        self.exact = kind in (ServerKind.LLAMA_CPP, ServerKind.VLLM)

    @classmethod
    def for_server(cls, api: ServerApi, kind: ServerKind, model_name: str) -> "ServerCounting | None":
        """The server's counting if its kind has one and it answers now."""
        if kind not in (ServerKind.LLAMA_CPP, ServerKind.VLLM, ServerKind.LLAMA_CPP_PYTHON):
            return None
        counting = cls(api, kind, model_name)
        return counting if counting.count([{"role": "user", "content": "hello"}]) is not None else None

    def count(self, messages: ChatMessages, thinking: bool = False) -> int | None:
        """The prompt's tokens as the server renders it, with SmolLM3's thinking switch as sent."""
        template_arguments = {"chat_template_kwargs": {"enable_thinking": thinking}}
        if self.kind is ServerKind.LLAMA_CPP:
            rendered = self._api.post_json("/apply-template", {"messages": messages, **template_arguments})
            prompt = rendered.get("prompt") if isinstance(rendered, dict) else None
            if not isinstance(prompt, str):
                return None
            return _length(self._api.post_json("/tokenize", {"content": prompt, "add_special": True}), "tokens")
        if self.kind is ServerKind.VLLM:
            return _length(self._api.post_json("/tokenize", {"model": self._model, "messages": messages,
                                                             "add_generation_prompt": True, **template_arguments}),
                           "count")
        text = "\n".join(m["content"] for m in messages)
        counted = _length(self._api.post_json("/extras/tokenize/count", {"input": text}), "count")
        return None if counted is None else counted + TOKENS_PER_MESSAGE_ESTIMATE * len(messages)


def _length(answer: object, key: str) -> int | None:
    value = answer.get(key) if isinstance(answer, dict) else None
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) else None
