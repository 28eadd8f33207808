"""Reading a channel's window costs the same at 10^3 and 10^6 stored messages.

Fills two real SQLite files through the bot's own migrations (rows spread over
many channels, as in a busy bot), then times Store.recent_turns for the same
window size in each. Prints the per-read times and their ratio (goal: < 1.5x).

    python -m bench window
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

from bot.store import Store
from bot.store.search import register_search_functions

CHANNELS = 20  # so that even the small table holds a full window for every channel
WINDOW = 40
READS = 400


def fill(path: Path, rows: int) -> None:
    """Bulk insert with plain sqlite3: the point is the read path, not the insert path."""
    now = datetime.now(timezone.utc).isoformat()
    with sqlite3.connect(path) as db:
        register_search_functions(db)  # the search index's triggers call it
        db.executemany(
            "INSERT INTO messages (guild_id, channel_id, author_id, author_name, role, content, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((1, i % CHANNELS, i % 97, "someone", "user" if i % 2 else "assistant",
              f"message {i} with a typical amount of chat text in it", now) for i in range(rows)))


def query_plan(path: Path) -> str:
    """SQLite's plan for the window query: an index search, no sort, is what keeps it flat."""
    with sqlite3.connect(path) as db:
        rows = db.execute("EXPLAIN QUERY PLAN SELECT * FROM messages WHERE channel_id = 1 "
                          "ORDER BY id DESC LIMIT 40").fetchall()
    return "; ".join(row[-1] for row in rows)


async def time_reads(path: Path) -> float:
    """Median seconds for one window read, over channels spread across the table."""
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    timings = []
    for i in range(READS):
        started = time.perf_counter()
        turns = await store.recent_turns(i % CHANNELS, WINDOW)
        timings.append(time.perf_counter() - started)
        assert len(turns) == WINDOW
    await store.close()
    return statistics.median(timings)


async def filled_databases(folder: Path, fill_rows) -> AsyncIterator[tuple[int, Path]]:
    """SQLite files holding 10^3 and 10^6 messages (`fill_rows(path, rows)`), with the real schema."""
    for rows in (10**3, 10**6):
        path = folder / f"bench-{rows}.db"
        await (await Store.open(f"sqlite+aiosqlite:///{path}")).close()  # schema via the migrations
        started = time.perf_counter()
        fill_rows(path, rows)
        print(f"filled {rows:,} rows in {time.perf_counter() - started:.1f} s")
        yield rows, path


async def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        async for rows, path in filled_databases(Path(folder), fill):
            results[rows] = await time_reads(path)
            plan = query_plan(path)
    small, large = sorted(results)
    print(f"\nWindow read ({WINDOW} turns, median of {READS} reads, {CHANNELS} channels)")
    print(f"{'stored messages':>16} | {'per read':>10}")
    for rows, seconds in results.items():
        print(f"{rows:>16,} | {seconds * 1000:>8.3f} ms")
    print(f"ratio {large:,} / {small:,}: {results[large] / results[small]:.2f}x (goal < 1.5x)")
    print(f"query plan: {plan}")
