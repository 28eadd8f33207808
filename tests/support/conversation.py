"""A conversation as the ChatService sees it: a message someone said, and the turns it stored."""

from __future__ import annotations

from bot.core.types import IncomingMessage


def said(text, channel=10, guild=20, author="Ann", author_id=30, message_id=None) -> IncomingMessage:
    return IncomingMessage(channel_id=channel, guild_id=guild, author_id=author_id, author_name=author, content=text,
                           message_id=message_id)


async def stored(store, channel=10) -> list[tuple[str, str]]:
    """A channel's stored turns, oldest first, as (role, content)."""
    return [(t.role, t.content) for t in await store.recent_turns(channel, 100)]
