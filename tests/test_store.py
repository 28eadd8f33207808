"""The database: real SQLite files and a real PostgreSQL server, the same Alembic migrations."""

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from bot.store import Store, StoreError
from bot.store.repository import Erased
from bot.store.database import MIGRATIONS_DIR, create_engine, downgrade, upgrade
from bot.store.models import Base, compared_with_models
from tests.support.store_queries import count_turns, open_store_after


def url(path):
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def store(any_store):
    """Each storage test runs on both backends the bot supports (tests/conftest.py)."""
    return any_store


async def schema_differences(engine):
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"include_object": compared_with_models}),
                                         Base.metadata))


async def table_names(engine):
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def test_upgrade_downgrade_upgrade_and_models_match_migrations(database_url):
    engine = create_engine(database_url)
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    created = await upgrade(engine)
    assert (created.before, created.after) == (None, head)
    assert await schema_differences(engine) == []
    assert {"messages", "guild_settings", "channel_settings", "audit_log"} <= await table_names(engine)
    assert (await upgrade(engine)).describe() == f"is up to date (schema revision {head})"
    await downgrade(engine, "0006")
    assert (await upgrade(engine)).describe() == f"was upgraded from schema revision 0006 to {head}"
    await downgrade(engine, "base")
    assert await table_names(engine) <= {"alembic_version"}
    assert (await upgrade(engine)).describe() == f"was new: its tables were created (schema revision {head})"
    assert await schema_differences(engine) == []
    await engine.dispose()


async def row_counts(engine, *tables):
    async with engine.connect() as connection:
        return {table: (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar() for table in tables}


async def test_a_migration_that_rebuilds_the_messages_table_keeps_the_rows_that_refer_to_it(database_url):
    """On SQLite, changing a column rebuilds the table (copy, DROP, rename): with foreign keys on,
    the DROP deleted every answer's posted parts through ON DELETE CASCADE. Undoing
    0004 (the cut_short column) and doing it again is such a rebuild, twice."""
    store = await Store.open(database_url)
    question = await store.add_turn(channel_id=1, guild_id=2, role="user", content="my cat is Tiberius",
                                    author_id=3, author_name="Ann", message_id=100)
    answer = await store.add_turn(channel_id=1, guild_id=2, role="assistant", content="A fine name.",
                                  reply_to=question, persona="Be kind.", cut_short="timeout")
    await store.record_answer_parts(answer, [200, 201])
    await store.close()
    engine = create_engine(database_url)
    tables = ("messages", "answer_parts")  # (answers' personas came later than 0003: undone with it)
    before = await row_counts(engine, *tables)
    assert before == {"messages": 2, "answer_parts": 2}
    await downgrade(engine, "0003")
    await upgrade(engine)
    assert await row_counts(engine, *tables) == before
    await engine.dispose()
    store = await Store.open(database_url)
    try:
        assert await store.forget_message(201) == 1  # a posted part still finds its answer
        assert await count_turns(store, 1) == 1
    finally:
        await store.close()


async def test_processes_starting_at_once_on_a_new_database_migrate_it_once(database_url):
    """Shards start together: real processes, released at one barrier, open a new database. The
    first migrates, the others wait for it and find the schema done."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters, as shards are
    starting = context.Barrier(4)
    shards = [context.Process(target=open_store_after, args=(starting, database_url)) for _ in range(4)]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join()
    assert [shard.exitcode for shard in shards] == [0, 0, 0, 0]
    store = await Store.open(database_url, migrate=False)
    try:
        assert await schema_differences(store.engine) == []
        await store.add_turn(channel_id=1, role="user", content="hello")
        assert await count_turns(store, 1) == 1
    finally:
        await store.close()


async def test_migrations_in_one_process_at_once_take_turns(tmp_path):
    """Alembic keeps the running migration in module globals, so two at once in one process
    (two stores opened together) must take turns rather than use each other's connections."""
    import asyncio

    stores = await asyncio.gather(*(Store.open(url(tmp_path / f"{name}.db")) for name in "abcdef"))
    try:
        for store in stores:
            assert await schema_differences(store.engine) == []
    finally:
        for store in stores:
            await store.close()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = await Store.open(url(tmp_path / "wal.db"))
    async with store.engine.connect() as connection:
        assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar() >= 1000
    await store.close()


async def test_window_is_the_newest_turns_of_one_channel_oldest_first(store):
    for i in range(10):
        await store.add_turn(channel_id=1, guild_id=9, role="user", content=f"c1-{i}", author_name="Ann")
        await store.add_turn(channel_id=2, guild_id=9, role="user", content=f"c2-{i}", author_name="Bob")
    window = await store.recent_turns(1, 4)
    assert [t.content for t in window] == ["c1-6", "c1-7", "c1-8", "c1-9"]
    assert await count_turns(store, 2) == 10


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


async def test_deleting_a_channels_data_leaves_other_channels_and_the_server_alone(store):
    for channel in (1, 2):
        question = await store.add_turn(channel_id=channel, guild_id=5, role="user", content="hi")
        answer = await store.add_turn(channel_id=channel, guild_id=5, role="assistant", content="hello",
                                      reply_to=question, persona=f"persona {channel}")
        await store.record_answer_parts(answer, [100 + channel])
        await store.set_auto_reply(channel, 5, False, actor_id=77)
        await store.set_channel_persona(channel, 5, f"persona {channel}", actor_id=77)
    await store.set_persona(5, "the server's", actor_id=77)

    assert await store.delete_channel_data(1) == Erased(2, frozenset({1}))
    assert await store.recent_turns(1, 10) == [] and not await store.is_answer_part(101)
    assert await store.channel_auto_reply(1) is None and await store.channel_persona(1) is None
    assert len(await store.recent_turns(2, 10)) == 2 and await store.is_answer_part(102)
    assert await store.channel_auto_reply(2) is False and await store.channel_persona(2) == "persona 2"
    assert await store.persona(5) == "the server's"
    async with store.engine.connect() as connection:  # no answer was written under it any more
        assert (await connection.execute(text("SELECT text FROM personas"))).scalars().all() == ["persona 2"]


async def test_settings_survive_reopening_the_database(database_url):
    store = await Store.open(database_url)
    await store.set_persona(5, "Talk like a pirate.", actor_id=77)
    await store.set_auto_reply(6, 5, True, actor_id=77)
    await store.close()
    store = await Store.open(database_url)
    assert await store.persona(5) == "Talk like a pirate."
    assert await store.channel_auto_reply(6) is True
    assert await store.channel_auto_reply(7) is None  # never set: off (a thread would follow its channel)
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


async def test_discord_sized_ids_and_times_keep_their_value(store):
    """Discord snowflakes need 64 bits (PostgreSQL INTEGER is 32); times come back timezone-aware
    and row ids count up (the BigInteger row id on PostgreSQL, the rowid alias on SQLite)."""
    snowflake = 2**63 - 1
    before = datetime.now(timezone.utc)
    first = await store.add_turn(channel_id=snowflake, guild_id=snowflake - 1, author_id=snowflake - 2,
                                 message_id=snowflake - 3, role="user", content="big ids")
    second = await store.add_turn(channel_id=snowflake, role="assistant", content="answer")
    assert second > first
    [turn, _] = await store.recent_turns(snowflake, 10)
    assert (turn.id, turn.author_id, turn.message_id) == (first, snowflake - 2, snowflake - 3)
    assert turn.created_at.tzinfo is not None
    assert abs(turn.created_at - before) < timedelta(minutes=1)
    await store.set_persona(snowflake, "big", actor_id=snowflake)
    assert await store.persona(snowflake) == "big"


async def test_an_unreachable_database_server_gets_a_clear_error_without_the_password():
    with pytest.raises(StoreError) as caught:
        await Store.open("postgresql+asyncpg://bot:s3cret@127.0.0.1:1/bot")  # nothing listens on port 1
    assert "could not be opened" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_deleting_a_channel_deletes_the_threads_noted_in_it(store):
    """Its threads, archived or not, go with it; another channel's thread stays."""
    for thread, parent in ((11, 1), (12, 1), (21, 2)):
        await store.remember_thread(thread, parent, 5)
        await store.add_turn(channel_id=thread, guild_id=5, role="user", content=f"in thread {thread}")
        await store.set_auto_reply(thread, 5, True, actor_id=77)
    await store.remember_thread(11, 1, 5)  # noted twice: still one thread
    await store.add_turn(channel_id=1, guild_id=5, role="user", content="in the channel")

    assert await store.delete_channel_data(1) == Erased(3, frozenset({1, 11, 12}))
    assert [await store.recent_turns(c, 10) for c in (1, 11, 12)] == [[], [], []]
    assert await store.channel_auto_reply(11) is None and await store.channel_auto_reply(21) is True
    assert [t.content for t in await store.recent_turns(21, 10)] == ["in thread 21"]
    assert await store.delete_channel_data(1) == Erased(0, frozenset({1}))  # the threads' notes went too
    assert await store.delete_guild_data(5) == 1
    async with store.engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM thread_parents"))).scalar() == 0


async def test_a_thread_noted_twice_at_once_is_one_note_on_both_backends(any_store):
    """A thread's first message and a command in it may note it together: no unique-key error."""
    import asyncio

    await asyncio.gather(*(any_store.remember_thread(thread, 1, 5) for thread in (11, 12) for _ in range(4)))
    await any_store.add_turn(channel_id=11, guild_id=5, role="user", content="in the thread")
    assert await any_store.delete_channel_data(1) == Erased(1, frozenset({1, 11, 12}))


async def test_the_exchange_a_thread_was_started_from_is_found_by_the_threads_id(store):
    """A thread started from a message has that message's id; a forum post's thread has its own
    first message's id, which is the thread's own history, not where it started from."""
    question = await store.add_turn(channel_id=1, guild_id=9, role="user", content="my cat is Tiberius",
                                    author_name="Ann", message_id=100)
    answer = await store.add_turn(channel_id=1, guild_id=9, role="assistant", content="A fine name.",
                                  reply_to=question)
    await store.record_answer_parts(answer, [200, 201])
    exchange = [("user", "my cat is Tiberius"), ("assistant", "A fine name.")]
    for thread_id in (100, 200, 201):  # started from the question, or from either part of the answer
        assert [(t.role, t.content) for t in await store.exchange_started_from(thread_id)] == exchange
    await store.add_turn(channel_id=300, guild_id=9, role="user", content="forum post", message_id=300)
    assert await store.exchange_started_from(300) == []
    assert await store.exchange_started_from(999) == []


async def test_a_persona_deleted_elsewhere_while_an_answer_refers_to_it_is_added_anew(fresh_postgres_url, monkeypatch):
    """PostgreSQL (SQLite has one writer at a time): a channel's or server's deletion elsewhere
    removes the personas no answer refers to, between an answer finding its persona's row and
    referring to it. Before, that answer failed to store after the user had watched it written."""
    store = await Store.open(fresh_postgres_url)
    cleaner = create_engine(fresh_postgres_url)
    try:
        await store.add_turn(channel_id=1, guild_id=2, role="assistant", content="old", persona="Be kind.")
        async with cleaner.begin() as connection:  # its answer gone, its persona left for a cleanup
            await connection.execute(text("DELETE FROM answer_personas"))
        found_then_deleted = []
        find = store._persona_id

        async def find_then_a_cleanup_commits(session, persona):
            found = await find(session, persona)
            if not found_then_deleted:
                found_then_deleted.append(found)
                async with cleaner.begin() as connection:
                    await connection.execute(text(
                        "DELETE FROM personas WHERE id NOT IN (SELECT persona_id FROM answer_personas)"))
            return found

        monkeypatch.setattr(store, "_persona_id", find_then_a_cleanup_commits)
        answer = await store.add_turn(channel_id=1, guild_id=2, role="assistant", content="new", persona="Be kind.")
        async with cleaner.connect() as connection:
            kept = (await connection.execute(text(
                "SELECT p.text FROM answer_personas a JOIN personas p ON p.id = a.persona_id WHERE a.turn_id = :id"),
                {"id": answer})).scalars().all()
        assert found_then_deleted and kept == ["Be kind."]
    finally:
        await store.close()
        await cleaner.dispose()


async def test_rows_an_operator_left_dangling_do_not_stop_the_start_or_a_migration(tmp_path):
    """The sqlite3 shell has foreign keys off: deleting messages there leaves their answer parts
    pointing at nothing. Only what a migration itself breaks stops it."""
    path = tmp_path / "bot.db"
    store = await Store.open(url(path))
    answer = await store.add_turn(channel_id=1, role="assistant", content="hi")
    await store.record_answer_parts(answer, [200])
    await store.close()
    with sqlite3.connect(path) as shell:
        shell.execute("DELETE FROM messages")
    store = await Store.open(url(path))  # up to date: nothing scanned, nothing refused
    await store.close()
    engine = create_engine(url(path))
    await downgrade(engine, "0003")
    assert (await upgrade(engine)).after == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    await engine.dispose()
