"""Make model output safe and tidy to post: no reasoning blocks, no mass pings."""

from __future__ import annotations

import re

from .text import is_blank

ZERO_WIDTH_SPACE = "\u200b"

OPEN_THOUGHT, CLOSE_THOUGHT = "<think>", "</think>"
# Reasoning models think first: a thought is a block at the very start of the answer. A <think>
# further on is the answer talking about the tags (SmolLM3 users ask what they are), and stays.
_LEADING_THOUGHT = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
_LEADING_OPEN_THOUGHT = re.compile(r"\A\s*<think>.*\Z", re.DOTALL)  # the answer ran out of tokens still thinking
_CLOSED_BEFORE_OPENED = re.compile(r"\A(?:(?!<think>).)*?</think>", re.DOTALL)
_MASS_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)
# Inside an address (john@hereford.example: a word before, more of the name after), which a
# zero-width space would spoil for whoever copies it.
_IN_AN_ADDRESS = re.compile(r"[\w.]@(?:everyone|here)\.?\w", re.IGNORECASE)
# Where Discord makes no mention of its own: closed code blocks and spans (a backslash-escaped
# backtick opens none), and links, which its link rule takes whole. A mention broken there
# would only spoil the code or the link.
_NO_MENTIONS_IN = re.compile(r"```.*?```|(?<!\\)`[^`\n]+`|https?://[^\s<>]+", re.DOTALL)
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def strip_thinking(text: str, thought_opened: bool | None = False) -> str:
    """The answer without the thought it began with, including one cut off by the token limit.
    `thought_opened`: the prompt ended inside a thought (a chat template that opens it for the
    model), so the text starts in one; None: not known (a server rendered the prompt), and a
    closing with no opening before it is taken as the end of such a thought."""
    if thought_opened:
        text = OPEN_THOUGHT + text
    elif thought_opened is None:
        text = _CLOSED_BEFORE_OPENED.sub("", text)
    text = _LEADING_THOUGHT.sub("", text)
    return _LEADING_OPEN_THOUGHT.sub("", text)


def neutralise_mentions(text: str) -> str:
    """Break @everyone, @here and role mentions so they read the same but can never ping.

    Allowed-mentions settings already stop pings; this is the second lock, so a copied or
    quoted message cannot ping anyone either. Code and links are left whole (see _NO_MENTIONS_IN).
    """
    pieces, written = [], 0
    for kept in _NO_MENTIONS_IN.finditer(text):
        pieces += [_break_mentions(text[written:kept.start()]), kept.group()]
        written = kept.end()
    return "".join(pieces) + _break_mentions(text[written:])


def _break_mentions(text: str) -> str:
    text = _MASS_MENTION.sub(_broken_unless_in_an_address, text)
    return _ROLE_MENTION.sub(lambda m: "<@" + ZERO_WIDTH_SPACE + "&" + m.group(1) + ">", text)


def _broken_unless_in_an_address(mention: re.Match) -> str:
    start = mention.start()
    if start > 0 and _IN_AN_ADDRESS.match(mention.string, start - 1):
        return mention.group()
    return "@" + ZERO_WIDTH_SPACE + mention.group(1)


def clean_reply(text: str, thought_opened: bool | None = False) -> str:
    """What the model wrote, made ready to store and post (`thought_opened`: see strip_thinking);
    empty if nothing in it can be seen (a message of zero-width characters would look empty)."""
    text = neutralise_mentions(strip_thinking(text, thought_opened)).strip()
    return "" if is_blank(text) else text


def visible_so_far(partial: str, thought_opened: bool | None = False) -> str:
    """What may be shown of a reply still being written: a finished thought removed, an
    unfinished one hidden until it closes (and a thought's opening still coming in, "<thi"),
    mass mentions broken as in the final text."""
    shown = strip_thinking(partial, thought_opened).lstrip()
    if shown and OPEN_THOUGHT.startswith(shown):
        return ""
    return neutralise_mentions(shown)
