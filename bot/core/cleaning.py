"""Make model output safe and tidy to post: no reasoning blocks, no mass pings."""

from __future__ import annotations

import re

ZERO_WIDTH_SPACE = "\u200b"

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_OPEN_THINK = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
_CLOSE_THINK = re.compile(r"\A.*?</think>", re.DOTALL | re.IGNORECASE)
_MASS_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def strip_thinking(text: str) -> str:
    """Remove <think> blocks, including one cut off by the token limit and one opened by the prompt."""
    text = _THINK_BLOCK.sub("", text)
    text = _CLOSE_THINK.sub("", text)  # the template may have opened the block for the model
    text = _OPEN_THINK.sub("", text)   # the answer ran out of tokens while still thinking
    return text


def neutralise_mentions(text: str) -> str:
    """Break @everyone, @here and role mentions so they read the same but can never ping.

    Allowed-mentions settings already stop pings; this is the second lock, so a
    copied or quoted message cannot ping anyone either.
    """
    text = _MASS_MENTION.sub(lambda m: "@" + ZERO_WIDTH_SPACE + m.group(1), text)
    return _ROLE_MENTION.sub(lambda m: "<@" + ZERO_WIDTH_SPACE + "&" + m.group(1) + ">", text)


def clean_reply(text: str) -> str:
    """What the model wrote, made ready to store and post."""
    return neutralise_mentions(strip_thinking(text)).strip()


def visible_so_far(partial: str) -> str:
    """What may be shown of a reply still being written: finished think blocks removed, an
    unfinished one hidden until it closes, mass mentions broken as in the final text."""
    return neutralise_mentions(strip_thinking(partial)).lstrip()
