"""Should the bot answer this message? A pure decision, with the reason, for every front end.

The bot answers when it is spoken to: mentioned, replied to, in a DM, or in a
channel where auto-reply is on. It never answers bots (itself included, so two
bots can never talk each other into a loop), system messages ("X joined",
"pinned a message") or messages with nothing to read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from .text import is_blank
from .types import IncomingMessage


class Action(Enum):
    ANSWER = "answer"
    EXPLAIN_TEXT_ONLY = "say that only text can be read"
    EXPLAIN = "say why it cannot be answered (the reason is what is said)"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # why, for the debug log and the tests

    @property
    def ignored(self) -> bool:
        return self.action is Action.IGNORE


def is_addressed(message: IncomingMessage) -> bool:
    """Spoken to directly, whatever the channel's auto-reply setting."""
    return message.is_dm or message.mentions_bot or message.replies_to_bot


def could_be_answered(message: IncomingMessage) -> bool:
    """Whether the service might answer it, before anything is looked up: with auto-reply on
    in its channel, and a reply to a message the front end could not see being to one of the
    bot's answers (the service checks both, in the channel's turn)."""
    if message.replies_to_unknown is not None:
        message = dataclasses.replace(message, replies_to_bot=True)
    return not should_answer(message, auto_reply=True).ignored


def should_answer(message: IncomingMessage, auto_reply: bool) -> Decision:
    """`auto_reply`: whether auto-reply is switched on in the message's channel."""
    if message.author_is_bot:
        return Decision(Action.IGNORE, "the author is a bot")
    if message.is_system:
        return Decision(Action.IGNORE, "a system message")
    if not (is_addressed(message) or auto_reply):
        return Decision(Action.IGNORE, "not addressed to the bot")
    if is_blank(message.content):  # invisible characters alone are no text either
        if message.has_attachments and is_addressed(message):  # not to every picture of an auto-reply channel
            return Decision(Action.EXPLAIN_TEXT_ONLY, "attachments without text")
        return Decision(Action.IGNORE, "no text")
    return Decision(Action.ANSWER, _why_answered(message))


def _why_answered(message: IncomingMessage) -> str:
    if message.is_dm:
        return "a direct message"
    if message.mentions_bot:
        return "mentions the bot"
    if message.replies_to_bot:
        return "replies to the bot"
    return "auto-reply is on in this channel"
