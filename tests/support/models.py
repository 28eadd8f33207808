"""Asking a model (any ChatModel, bot/llm/port.py) for one whole answer, as the service does:
render the messages once, then stream the answer from that render."""

from __future__ import annotations

from typing import AsyncIterator, Hashable

from bot.config import GenerationSettings
from bot.core.prompt import ChatMessages
from bot.llm.port import ChatModel


def stream(model: ChatModel, messages: ChatMessages, params: GenerationSettings, *,
           channel: Hashable | None = None, adapter: str | None = None) -> AsyncIterator[str]:
    return model.stream(model.render(messages), params, channel=channel, adapter=adapter)


async def generate(model: ChatModel, messages: ChatMessages, params: GenerationSettings, *,
                   channel: Hashable | None = None, adapter: str | None = None) -> str:
    """The model's raw answer, whole."""
    return "".join([piece async for piece in stream(model, messages, params, channel=channel, adapter=adapter)])


def kept_bytes(prefix_cache) -> int:
    """The bytes a PrefixCache (bot/llm/kv_cache.py) holds now: what its budget bounds."""
    return sum(entry.nbytes for entry in list(prefix_cache._entries.values()))
