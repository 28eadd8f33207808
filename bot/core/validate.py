"""Checks on user input, before anything is stored. Each returns None or a sentence for the user."""

from __future__ import annotations

from .. import messages
from .text import is_blank


def problem_with_message(content: str, limit: int) -> str | None:
    if is_blank(content):
        return messages.EMPTY_MESSAGE
    if len(content) > limit:
        return messages.MESSAGE_TOO_LONG.format(length=len(content), limit=limit)
    return None


def problem_with_persona(text: str, limit: int, channel_scope: bool = False) -> str | None:
    """`channel_scope`: a channel's own persona, whose empty text points to the channel's reset."""
    if is_blank(text):
        return messages.PERSONA_EMPTY_CHANNEL if channel_scope else messages.PERSONA_EMPTY
    if len(text) > limit:
        return messages.PERSONA_TOO_LONG.format(length=len(text), limit=limit)
    return None
