"""Discord's documented limits on application commands, checked as Discord checks them when
commands are registered: one breach and the whole request is refused (400 Invalid Form Body).

From the Application Command Object docs
(discord.com/developers/docs/interactions/application-commands):
- a name is 1-32 characters of letters, digits, `-` and `_` (lowercase for slash commands);
- a slash command's, subcommand's and option's description is 1-100 characters;
- at most 25 options, 25 choices; a choice's name 1-100 characters, a string value up to 100;
- required options come before optional ones;
- name, description and every option's name, description and choices together: 4,000 characters.
"""

from __future__ import annotations

import re
from typing import Iterator, List

CHAT_INPUT = 1
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
NAME = re.compile(r"^[-_\w]{1,32}$")
DESCRIPTION_MAX = 100
MOST_OPTIONS = MOST_CHOICES = 25
CHOICE_MAX = 100
COMBINED_MAX = 4000


def command_problems(body: dict) -> List[str]:
    """Every breach in one command's registration body, each as "path: what is wrong"."""
    slash = body.get("type", CHAT_INPUT) == CHAT_INPUT
    problems = list(_named_problems(body, body.get("name", ""), slash))
    if slash and _combined_length(body) > COMBINED_MAX:
        problems.append(f"{body.get('name')}: over {COMBINED_MAX} characters in all")
    return problems


def _named_problems(thing: dict, path: str, slash: bool) -> Iterator[str]:
    name, description = thing.get("name", ""), thing.get("description", "")
    if not NAME.match(name) or (slash and name != name.lower()):
        yield f"{path}: name {name!r} is not 1-32 lowercase letters, digits, - or _"
    if slash and not 1 <= len(description) <= DESCRIPTION_MAX:
        yield f"{path}: description is {len(description)} characters (1-{DESCRIPTION_MAX})"
    options = thing.get("options") or []
    if len(options) > MOST_OPTIONS:
        yield f"{path}: {len(options)} options (at most {MOST_OPTIONS})"
    seen_optional = False
    for option in options:
        option_path = f"{path} {option.get('name', '')}"
        yield from _named_problems(option, option_path, slash)
        yield from _choice_problems(option, option_path)
        if option.get("type") not in (SUB_COMMAND, SUB_COMMAND_GROUP):
            if option.get("required") and seen_optional:
                yield f"{option_path}: a required option after an optional one"
            seen_optional = seen_optional or not option.get("required")


def _choice_problems(option: dict, path: str) -> Iterator[str]:
    choices = option.get("choices") or []
    if len(choices) > MOST_CHOICES:
        yield f"{path}: {len(choices)} choices (at most {MOST_CHOICES})"
    for choice in choices:
        if not 1 <= len(choice.get("name", "")) <= CHOICE_MAX:
            yield f"{path}: choice name {choice.get('name')!r} is not 1-{CHOICE_MAX} characters"
        if isinstance(choice.get("value"), str) and len(choice["value"]) > CHOICE_MAX:
            yield f"{path}: choice value over {CHOICE_MAX} characters"


def _combined_length(thing: dict) -> int:
    own = len(thing.get("name", "")) + len(thing.get("description", ""))
    choices = sum(len(c.get("name", "")) + len(str(c.get("value", ""))) for c in thing.get("choices") or [])
    return own + choices + sum(_combined_length(option) for option in thing.get("options") or [])
