"""Text from outside, made safe to store, tokenize and measure."""

from __future__ import annotations

import dataclasses
import re
import unicodedata

from .types import IncomingMessage

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def without_lone_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates (JSON such as "\\ud800" from the API decodes to one) replaced by
    U+FFFD. They cannot be encoded as UTF-8, so SQLite and the tokenizer would raise on them;
    a pair that arrived as two halves is joined into its real character."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def is_blank(text: str) -> bool:
    """Nothing a person can see: whitespace, zero-width and bidirectional controls (category Cf)."""
    return all(character.isspace() or unicodedata.category(character) == "Cf" for character in text)


def with_text_repaired(message: IncomingMessage) -> IncomingMessage:
    """The message with lone surrogates replaced in everything it says (its author's name too)."""
    return dataclasses.replace(message, content=without_lone_surrogates(message.content),
                               author_name=without_lone_surrogates(message.author_name))
