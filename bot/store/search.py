"""Words for full-text recall: what a question searches for, and how SQLite's index is keyed.

SQLite's FTS5 index (migration 0008) holds each message's words prefixed with its channel:
"hello" said in channel 42 is indexed as "42xhello". A recall asks only for its own channel's
words, so it reads only that channel's postings, and costs the same whether the database holds
a thousand messages or a million (with plain words it had to walk every channel's postings of
a common word and count them all for the ranking). PostgreSQL indexes the plain text instead.
"""

from __future__ import annotations

import re

# Words that match nearly every message say nothing about which one is meant.
STOP_WORDS = frozenset("""
    the and for are but not you your yours with this that these those what which who whom whose
    was were has have had does did can could would should will shall may might must from into
    about there their they them then than when where why how all any some our ours his her hers
    its out off too very just also yes okay please thanks thank hello here
""".split())
MIN_TERM_CHARS = 3
MAX_TERMS = 24  # a long message would otherwise become hundreds of OR'ed terms
# Letters and digits only (every one of them a word character to FTS5's unicode61 tokenizer
# too), so no search syntax ever reaches a query and each indexed word stays one token.
_WORD = re.compile(r"[^\W_]+")
INDEX_WORDS_FUNCTION = "channel_words"  # the SQL function the index's triggers call


def search_terms(words: str) -> list[str]:
    """The words of a message worth searching for: lower-cased, without short and stop words,
    each once, in the order written."""
    terms: dict[str, None] = {}
    for word in _WORD.findall(words.lower()):
        if len(word) >= MIN_TERM_CHARS and word not in STOP_WORDS:
            terms.setdefault(word)
    return list(terms)[:MAX_TERMS]


def _in_channel(channel_id: int, word: str) -> str:
    # A channel id is all digits and "x" is not one, so the first "x" ends it: no two channels
    # share a key ("-5" becomes "5", which can only lose a match: recall checks the channel again).
    return f"{abs(channel_id)}x{word}"


def channel_words(channel_id: int | None, content: str | None) -> str:
    """A message as SQLite's index holds it: each of its words keyed with its channel."""
    if channel_id is None or not content:
        return ""
    return " ".join(_in_channel(channel_id, word) for word in _WORD.findall(content.lower()))


def channel_match(channel_id: int, terms: list[str]) -> str:
    """An FTS5 query for messages of `channel_id` holding any of `terms` (each quoted: a string,
    never syntax)."""
    return " OR ".join(f'"{_in_channel(channel_id, term)}"' for term in terms)


def register_search_functions(sqlite_connection) -> None:
    """Every connection that writes messages needs the function the index's triggers call; the
    bot's engine registers it on each connection. A tool without it can read and delete, but an
    insert or edit fails ("no such function: channel_words") rather than go unindexed."""
    sqlite_connection.create_function(INDEX_WORDS_FUNCTION, 2, channel_words, deterministic=True)
