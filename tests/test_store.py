"""The database: real SQLite files, real Alembic migrations."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from bot.store import Store, StoreError
from bot.store.database import create_engine, downgrade, upgrade
from bot.store.models import Base


def url(path):
    return f"sqlite+aiosqlite:///{path}"


async def schema_differences(engine):
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))


async def table_names(engine):
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_upgrade_downgrade_upgrade_and_models_match_migrations(tmp_path):
    engine = create_engine(url(tmp_path / "m.db"))
    await upgrade(engine)
    assert await schema_differences(engine) == []
    assert {"messages", "guild_settings", "channel_settings", "audit_log"} <= await table_names(engine)
    await downgrade(engine, "base")
    assert await table_names(engine) <= {"alembic_version"}
    await upgrade(engine)
    assert await schema_differences(engine) == []
    await engine.dispose()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store):
    async with store.engine.connect() as connection:
        assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar() >= 1000


async def test_window_is_the_newest_turns_of_one_channel_oldest_first(store):
    for i in range(10):
        await store.add_turn(channel_id=1, guild_id=9, role="user", content=f"c1-{i}", author_name="Ann")
        await store.add_turn(channel_id=2, guild_id=9, role="user", content=f"c2-{i}", author_name="Bob")
    window = await store.recent_turns(1, 4)
    assert [t.content for t in window] == ["c1-6", "c1-7", "c1-8", "c1-9"]
    assert await store.count_turns(2) == 10


async def test_edits_deletes_and_reset_change_only_their_targets(store):
    await store.add_turn(channel_id=1, role="user", content="first", message_id=111)
    await store.add_turn(channel_id=1, role="user", content="second", message_id=222)
    await store.add_turn(channel_id=2, role="user", content="other channel", message_id=333)
    assert await store.edit_turn(111, "first, edited")
    assert await store.delete_turn(222)
    assert not await store.delete_turn(999)
    assert [t.content for t in await store.recent_turns(1, 10)] == ["first, edited"]
    assert await store.clear_channel(1) == 1
    assert [t.content for t in await store.recent_turns(2, 10)] == ["other channel"]


async def test_settings_survive_reopening_the_file(tmp_path):
    path = tmp_path / "persist.db"
    store = await Store.open(url(path))
    await store.set_persona(5, "Talk like a pirate.", actor_id=77)
    await store.set_auto_reply(6, 5, True, actor_id=77)
    await store.close()
    store = await Store.open(url(path))
    assert await store.persona(5) == "Talk like a pirate."
    assert await store.auto_reply(6) is True
    assert await store.auto_reply(7) is False
    await store.close()


async def test_a_file_that_is_not_a_database_gets_a_clear_error_and_is_left_alone(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 200)
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        await Store.open(url(path))
    assert "is not a valid SQLite database" in str(caught.value)
    assert "Move the file aside" in str(caught.value)
    assert path.read_bytes() == before


async def test_database_directory_is_created(tmp_path):
    store = await Store.open(url(tmp_path / "deep" / "er" / "bot.db"))
    await store.close()
    with sqlite3.connect(tmp_path / "deep" / "er" / "bot.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
