"""Plain domain types that flow through the bot. No discord.py types past the adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One stored line of a channel's conversation."""

    role: Role
    content: str
    author_name: str | None = None
    id: int | None = None  # the database row, once stored
    author_id: int | None = None
    message_id: int | None = None
    created_at: datetime | None = None
    cut_short: str | None = None  # an answer stopped early: timeout | restart | stopped | interrupted | post_failed
    persona: str | None = None  # the persona an answer was written under, where recorded (exports read it)


# The terminal chat is a "server" of its own, with one channel; Discord ids are never 0, so
# these never collide with a Discord server's.
TERMINAL_GUILD_ID = 0
TERMINAL_CHANNEL_ID = 0


@dataclass(frozen=True)
class IncomingMessage:
    """A chat message as the adapters see it, whichever platform it came from."""

    channel_id: int
    author_id: int
    author_name: str
    content: str
    guild_id: int | None = None  # None in a DM
    message_id: int | None = None
    author_is_bot: bool = False
    is_system: bool = False
    mentions_bot: bool = False
    replies_to_bot: bool = False
    # A reply whose target the front end could not see (Discord may leave it out, and it may be
    # out of the cache, after a restart): that message's id. Whether it is one of the bot's
    # answers is for the service to look up in what it stored.
    replies_to_unknown: int | None = None
    # The names of the files and stickers it carries, which the bot cannot open: named to the
    # model beside the text (for the prompt only, like replied_text).
    attachment_names: tuple[str, ...] = ()
    # What it replies to, when that is someone else's message ('Mod: "Rules: no spam"', cut short):
    # the model needs it to know what "this" is. For the prompt only: the stored turn keeps the
    # person's own words, so a later delete of that message leaves nothing of it behind.
    replied_text: str | None = None

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None

    @property
    def has_attachments(self) -> bool:
        return bool(self.attachment_names)


@dataclass(frozen=True)
class Reply:
    """What the bot says back: the whole text, and how it came about. Front ends present it their
    own way (Discord splits it into messages of its size limit; the terminal prints it whole)."""

    text: str
    ok: bool = True  # False when the reply is an error or refusal, not the model's answer
    dropped_turns: int = 0  # older turns left out of the prompt to fit the model's context
    notes: list[str] = field(default_factory=list)
    stored_as: int | None = None  # the stored answer's row id (None: nothing stored)


@dataclass(frozen=True)
class Delivered:
    """How a front end showed a reply: the ids of the messages it posted, in order."""

    message_ids: tuple[int, ...] = ()
    complete: bool = True  # False when some of it could not be shown
    # Not complete: the text its posted messages show, where that is only part of the answer
    # (None: all of it, or none); what is kept of the answer, for the bot must not later
    # refer to what nobody saw.
    shown: str | None = None
