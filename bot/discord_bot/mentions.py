"""Discord's mention markup -> text a language model can read (pure; no discord.py).

`<@123>` means nothing to the model; `@Alice` does. The bot's own mention is
removed instead: it only says "this is for you", which the model knows already.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

# Optional spaces before the mention are captured so that removing the bot's own
# mention from "hey <@1>, hi" gives "hey, hi" rather than "hey , hi".
_MENTION = re.compile(r"([ \t]*)<(@!?|@&|#)(\d+)>")
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")


@dataclass(frozen=True)
class MentionNames:
    """Names for the ids one message mentions. Ids in `own` are the bot's: its user and its role."""

    users: Mapping[int, str] = field(default_factory=dict)
    roles: Mapping[int, str] = field(default_factory=dict)
    channels: Mapping[int, str] = field(default_factory=dict)
    own: frozenset[int] = frozenset()


def readable_text(content: str, names: MentionNames) -> str:
    """`content` with the bot's mention removed and every other mention, and custom emoji, by name."""

    def replace(match: re.Match) -> str:
        space, kind, target = match[1], match[2], int(match[3])
        if kind == "#":
            return f"{space}#{names.channels.get(target, 'deleted-channel')}"
        if target in names.own:
            return ""
        if kind == "@&":
            return f"{space}@{names.roles.get(target, 'deleted-role')}"
        # Discord's own client shows a user it cannot resolve as "@unknown-user".
        return f"{space}@{names.users.get(target, 'unknown-user')}"

    text = _MENTION.sub(replace, content)
    return _CUSTOM_EMOJI.sub(r":\1:", text).strip()
