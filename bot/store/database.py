"""Engine set-up (SQLite pragmas, directories) and Alembic migrations run from code."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .search import register_search_functions

log = logging.getLogger(__name__)

# Inside the package (bot/migrations), so an installed wheel can migrate too, not only a checkout.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL mode and a busy timeout on every connection."""
    parsed = make_url(url)
    # A failed statement's error message would carry its parameters: what people wrote. They are
    # left out of errors (and so out of logs) unless debug logging (-v) is on.
    hide_parameters = not logging.getLogger("bot").isEnabledFor(logging.DEBUG)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, hide_parameters=hide_parameters)
    _make_parent_directory(parsed.database)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                                 hide_parameters=hide_parameters)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _make_parent_directory(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers go on while a reply is written; the busy timeout makes a
    # second writer wait instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    register_search_functions(dbapi_connection)  # the search index's triggers call it


def _switch_to_wal(cursor) -> None:
    """WAL is stored in the file, so only a new database needs the switch. While one connection
    switches a new file, another's switch fails with "database is locked" at once: SQLite does not
    call the busy handler for it. Processes starting together on a new database would then fail,
    so the switch is retried (this runs on the driver's thread) for as long as the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


# Alembic keeps the running migration in module globals (alembic.op, alembic.context), and
# run_sync's greenlets interleave on one thread: two migrations in one process would use each
# other's connections. Across processes the database's own lock (below) keeps them apart.
_alembic_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _one_alembic_at_a_time() -> asyncio.Lock:
    # One lock per event loop: an asyncio.Lock belongs to the loop it first waited on.
    return _alembic_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


class StoreError(Exception):
    """The database cannot be used. str() is a sentence an operator can act on."""


@dataclass(frozen=True)
class SchemaChange:
    """The schema's revision before and after an upgrade (None: no schema, a new database)."""
    before: str | None
    after: str | None

    def describe(self) -> str:
        if self.before == self.after:
            return f"is up to date (schema revision {self.after})"
        if self.before is None:
            return f"was new: its tables were created (schema revision {self.after})"
        return f"was upgraded from schema revision {self.before} to {self.after}"


async def upgrade(engine: AsyncEngine, revision: str = "head") -> SchemaChange:
    """Bring the schema to `revision` on this engine's database; say what it was and is. Up to
    date already (every start but the first after an update), nothing is run or scanned."""
    target = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head() if revision == "head" else revision
    async with _one_alembic_at_a_time(), migration_connection(engine) as connection:
        before = await connection.run_sync(_current_revision)
        if before == target:
            return SchemaChange(before, before)
        async with _no_new_broken_references(connection):
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
        return SchemaChange(before, await connection.run_sync(_current_revision))


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


# Any fixed number: the key of PostgreSQL's advisory lock for migrations.
MIGRATION_LOCK_KEY = 0x5B07_0001


async def _one_migration_at_a_time(connection: AsyncConnection) -> None:
    """Several bot processes (shards) may start at once on a new database. Each migrates inside
    one transaction that first takes a database-wide lock, so the first creates the schema and
    the others wait for it, then find it up to date (instead of "table already exists")."""
    if connection.dialect.name == "sqlite":
        # A write lock from the first statement on; the others wait up to the busy timeout.
        await connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with _one_alembic_at_a_time(), migration_connection(engine) as connection, \
            _no_new_broken_references(connection):
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))


@asynccontextmanager
async def migration_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in one transaction, with the migration lock, for Alembic. On SQLite, foreign
    keys are off meanwhile: a migration that changes a column rebuilds the table (a copy, then
    DROP TABLE of the old one), and with them on, that DROP would delete every row that refers
    to it through ON DELETE CASCADE (answer_parts, answer_personas). What a migration does to
    the references is checked instead (_no_new_broken_references)."""
    async with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # outside any transaction, or SQLite ignores it
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()
        try:
            async with connection.begin():
                await _one_migration_at_a_time(connection)
                yield connection
        finally:
            if sqlite:
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()


@asynccontextmanager
async def _no_new_broken_references(connection: AsyncConnection) -> AsyncIterator[None]:
    """A migration (SQLite: run with foreign keys off) that would leave rows referring to rows
    that are gone is not applied. Only what it breaks counts: rows an operator's own edits left
    dangling before do not stop the bot."""
    before = await _broken_references(connection)
    yield
    broken = await _broken_references(connection) - before
    if broken:
        tables = sorted({row[0] for row in broken})
        raise StoreError(f"The migration would leave {len(broken)} row(s) in {', '.join(tables)} referring to "
                         "rows that no longer exist; it was not applied.")


async def _broken_references(connection: AsyncConnection) -> set[tuple]:
    """SQLite's list of rows whose foreign key points at nothing (PostgreSQL never lets one be)."""
    if connection.dialect.name != "sqlite":
        return set()
    return {tuple(row) for row in (await connection.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()}
