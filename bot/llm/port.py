"""The model port: the one interface every way of producing a reply implements.

The conversation (bot/service.py) knows models only through `ChatModel`: the batching
engine, the one-at-a-time worker, the OpenAI-compatible client and the scripted test
model are each a swap behind it. What a model can do is declared in its `abilities`,
never found out by probing its attributes.

A turn goes through a model in two calls:

1. `render(messages)`: the chat messages as the model will read them, rendered with the
   model's own chat template and tokenized once. The count is exact wherever the model's
   tokenizer is on this machine. Safe to call from any thread (the service renders off
   the event loop while the model generates).
2. `stream(prompt, params, channel=..., adapter=...)`: the answer as text pieces. A local
   model prefills the rendered token ids as they are, without rendering again; a remote
   server gets the messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import AsyncIterator, Hashable

from ..config import GenerationSettings
from ..core.prompt import ChatMessages, RenderedPrompt
from .adapters import NO_ADAPTERS, Adapters, UnknownAdapter

__all__ = ["Abilities", "ChatMessages", "ChatModel", "GenerationError", "GenerationFailed", "GenerationTimeout",
           "ModelBusy", "ModelKind", "ModelLoad", "RenderedPrompt"]


class GenerationError(Exception):
    """The model could not produce a reply. str() is a sentence for the user."""


class GenerationTimeout(GenerationError):
    pass


class GenerationFailed(GenerationError):
    pass


class GenerationInterrupted(GenerationFailed):
    """The model stopped in the middle of an answer (a server that went away, a stream cut
    short): what it wrote so far stands, as after a time limit."""


class PromptRefused(GenerationFailed):
    """The model's server refused the prompt as longer than its context, even after the
    window was shortened: the message cannot be answered as it is."""


class ModelBusy(GenerationError):
    """Too many replies are waiting for the model already. `waiting` says how many."""

    def __init__(self, waiting: int):
        super().__init__(f"The model is busy: {waiting} replies are already waiting.")
        self.waiting = waiting


class ModelKind(Enum):
    BATCHING = "batching engine"  # the local model, many channels in one batch
    ONE_AT_A_TIME = "one at a time"  # the local model (or a scripted one) on a single worker thread
    REMOTE = "remote server"  # an OpenAI-compatible server writes the replies


@dataclass(frozen=True)
class Abilities:
    """What a model declares about itself, for the service, /status and the metrics."""

    kind: ModelKind
    adapters: Adapters = NO_ADAPTERS  # the LoRA adapters it serves
    streams: bool = True  # answers arrive in pieces as they are written (else in one piece)
    channel_caches: bool = False  # keeps each channel's computed prompt for its next turn
    max_batch: int = 1  # replies written at once (the engine's batch; 1 for the worker)
    server_url: str | None = None  # where a remote model runs
    counts_exactly: bool = True  # render() counts with the model's own tokenizer (else an estimate)
    context_source: str = ""  # where a remote model's context length comes from, for /status
    max_waiting: int | None = None  # replies that may wait for a place before ModelBusy (None: no bound)
    # It can think before answering (a <think> block, as SmolLM3): False when its tokenizer has
    # no such markers (SmolLM2), None when not known (a server's model).
    thinks: bool | None = None


@dataclass(frozen=True)
class ModelLoad:
    """What the model is doing now (safe to read from any thread)."""

    waiting: int = 0  # requests queued for a place
    active: int = 0  # requests being read or written
    cached_channels: int = 0  # channels whose prompt is kept for their next turn


class ChatModel(ABC):
    """One way of producing replies. Errors: GenerationTimeout past the time limit, ModelBusy
    when too many replies wait, GenerationFailed otherwise (str() is a sentence for the user)."""

    name: str
    context_tokens: int  # prompt and answer together
    abilities: Abilities

    @abstractmethod
    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt:
        """The prompt as this model reads it, with its exact length. Thread-safe. `thinking`
        switches SmolLM3's reasoning on or off for this prompt (None: the configured default)."""

    @abstractmethod
    def stream(self, prompt: RenderedPrompt, params: GenerationSettings, *, channel: Hashable | None = None,
               adapter: str | None = None) -> AsyncIterator[str]:
        """The answer in text pieces as they are written. `prompt` comes from this model's render();
        `channel` keys the kept prompt cache where the model keeps one; `adapter` is a LoRA adapter's
        name, "base", or None for the configured default. Stopping the iteration early (aclosing,
        cancel) stops the model at its next token."""

    def output_tokens(self, text: str) -> int | None:
        """How many tokens the model wrote for `text`, where its tokenizer is here (else None)."""
        return None

    def place_in_line(self) -> int:
        """Where a reply asked for now would wait for the model (0: it starts at once)."""
        return 0

    def load(self) -> ModelLoad:
        return ModelLoad()

    def forget(self, channel: Hashable) -> None:
        """Drop whatever is kept for `channel` (its history was wiped). Nothing, by default."""

    def close(self) -> None:
        """Release threads and connections; pending replies end with GenerationFailed."""

    def adapter_to_run(self, adapter: str | None) -> str | None:
        """The adapter a request for `adapter` runs with (None: the base model). The service only
        asks for adapters it was offered; anything else is refused here all the same."""
        try:
            return self.abilities.adapters.resolve(adapter)
        except UnknownAdapter:
            raise GenerationFailed(f'The adapter "{adapter}" is not loaded.') from None
