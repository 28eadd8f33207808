"""Recall on PostgreSQL at 10^3 and 10^6 stored messages: `python -m bench recall` on a
throwaway PostgreSQL server (started as the test suite starts it; Debian's postgresql package).

The same messages and questions as the SQLite bench (bench/recall_bench.py), loaded with COPY
into databases made by the bot's migrations, so the GIN index is built as in the bot.

    python -m bench recall-postgresql
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import asyncpg

from bench.recall_bench import CHANNEL_MESSAGES, COLUMNS, messages, report, time_recalls
from bot.store import Store
from tests.support.postgres import PostgresUnavailable, create_database, start_server


async def main() -> None:
    try:
        server, root = start_server()
    except PostgresUnavailable as error:
        raise SystemExit(f"PostgreSQL cannot be started here: {error}") from None
    results = {}
    try:
        for rows in (10**3, 10**6):
            url = server.url(f"recall_{rows}")
            await create_database(server, f"recall_{rows}")
            await (await Store.open(url)).close()  # the schema, by the migrations
            started = time.perf_counter()
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                await connection.copy_records_to_table("messages", columns=COLUMNS,
                                                       records=messages(rows, datetime.now(timezone.utc)))
                await connection.execute("ANALYZE messages")
            finally:
                await connection.close()
            print(f"filled {rows:,} rows in {time.perf_counter() - started:.1f} s")
            results[rows] = await time_recalls(url, rows // CHANNEL_MESSAGES)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    report("PostgreSQL", results)
