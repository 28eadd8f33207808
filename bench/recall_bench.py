"""Recall (full-text search of a channel's older messages) at 10^3 and 10^6 stored messages.

Fills two real SQLite files through the bot's own migrations, so the FTS5 index is kept by its
triggers as in the bot, then times Store.recall for the same questions in each. Messages are
made of words drawn with a Zipf-like skew (a few words in most messages, most words rare);
each question mixes common and rare words. A recall searches one channel, so every channel
holds the same 1,000 messages in both files, interleaved as in a busy bot: 1 channel in the
small file, 1,000 in the large one. What grows is the rest of the database, which a recall
must not pay for. Prints the median time per recall and the ratio (goal: 10^6 under 20 ms,
within 2x of 10^3).

    python -m bench recall
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from bench.window_read import filled_databases
from bot.store import Store
from bot.store.search import register_search_functions

CHANNEL_MESSAGES = 1_000
VOCABULARY = 20_000
WORDS_PER_MESSAGE = 12
RECALLS = 300
LIMIT = 3
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fu", "gi", "he", "ju", "wo"]


def vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    ranked = sorted(words)  # a set's order changes from run to run (string hashing): sort, then shuffle
    rng.shuffle(ranked)
    return ranked


def zipf_cumulative_weights() -> list[float]:
    """Cumulative, so that each draw is a binary search rather than a pass over the vocabulary."""
    return list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))


COLUMNS = ("guild_id", "channel_id", "author_id", "author_name", "role", "content", "created_at")


def messages(rows: int, now: object) -> Iterator[tuple]:
    """`rows` messages (values for COLUMNS), channels interleaved, the same for every run."""
    rng, channels = random.Random(rows), rows // CHANNEL_MESSAGES
    words, cumulative = vocabulary(random.Random(0)), zipf_cumulative_weights()
    for i in range(rows):
        content = " ".join(rng.choices(words, cum_weights=cumulative, k=WORDS_PER_MESSAGE))
        yield 1, i % channels, i % 97, "someone", "user" if i % 2 else "assistant", content, now


def fill(path: Path, rows: int) -> None:
    """Bulk insert in one transaction with plain sqlite3 (executemany): the triggers index each row."""
    with sqlite3.connect(path) as db:
        register_search_functions(db)  # the search index's triggers call it
        db.executemany(f"INSERT INTO messages ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       messages(rows, datetime.now(timezone.utc).isoformat()))


def questions() -> list[str]:
    """Two common words, two of middling frequency and two rare ones, as a question might hold."""
    rng, words = random.Random(1), vocabulary(random.Random(0))
    return [" ".join([*rng.sample(words[:50], 2), *rng.sample(words[50:2000], 2), *rng.sample(words[2000:], 2)])
            for _ in range(RECALLS)]


async def time_recalls(url: str, channels: int) -> tuple[float, float]:
    """Median seconds per recall on the database at `url`, and the share of recalls that found something."""
    store = await Store.open(url)
    timings, found = [], 0
    for i, question in enumerate(questions()):
        started = time.perf_counter()
        turns = await store.recall(i % channels, question, before_id=None, limit=LIMIT)
        timings.append(time.perf_counter() - started)
        found += bool(turns)
    await store.close()
    return statistics.median(timings), found / RECALLS


async def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        async for rows, path in filled_databases(Path(folder), fill):
            results[rows] = await time_recalls(f"sqlite+aiosqlite:///{path}", rows // CHANNEL_MESSAGES)
    report("SQLite", results)


def report(database: str, results: dict[int, tuple[float, float]]) -> None:
    small, large = sorted(results)
    print(f"\nRecall on {database} ({LIMIT} best of a channel of {CHANNEL_MESSAGES:,} messages, median of "
          f"{RECALLS} recalls, questions of 6 words)")
    print(f"{'stored messages':>16} | {'per recall':>10} | found something")
    for rows, (seconds, found) in results.items():
        print(f"{rows:>16,} | {seconds * 1000:>7.2f} ms | {found:.0%}")
    print(f"ratio {large:,} / {small:,}: {results[large][0] / results[small][0]:.2f}x "
          "(goal: under 20 ms, within 2x)")
