"""A SQLite database file read directly, without the bot's code: for a database another process
wrote (or was killed while writing)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def integrity(database: Path) -> str:
    """SQLite's own integrity check: "ok" when intact."""
    with sqlite3.connect(database) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def stored_turns(database: Path) -> list[tuple[int, str, str]]:
    """Every stored turn, in the order written, as (channel_id, role, content)."""
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT channel_id, role, content FROM messages ORDER BY id").fetchall()
