"""Recall beyond the window (issue 15): a channel's older messages that match the new one are
found by full-text search and shown to the model with it, and nothing else's are."""

from datetime import datetime, timezone

import pytest
from sqlalchemy import DateTime, bindparam, text

from bot.core.prompt import RECALL_HEADER
from bot.llm.worker import ModelWorker
from bot.service import Actor, ChatService
from bot.store import Store
from bot.store.database import create_engine, downgrade, upgrade
from bot.store.search import search_terms
from tests.support.conversation import said
from tests.support.scripted import ScriptedBackend
from tests.support.settings import settings_for

ADMIN = Actor(id=1, name="Admin")
FACT = "My cat's name is Tiberius."
QUESTION = "Do you remember my cat's name?"


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend(reply="Noted.")  # an answer that repeats no fact: only the person's words hold it


async def service_with(store, settings, scripted):
    return ChatService(store, ModelWorker(scripted, timeout_s=5), settings)


async def bury(store, turns: int, channel: int = 10) -> None:
    """`turns` turns of small talk after the fact: far more than the prompt's window holds."""
    for i in range(turns // 2):
        await store.add_turn(channel_id=channel, guild_id=20, role="user", content=f"filler number {i} about rain",
                             author_id=31, author_name="Bob")
        await store.add_turn(channel_id=channel, guild_id=20, role="assistant", content=f"more rain {i}")


def given_to_model(scripted: ScriptedBackend) -> str:
    return "\n".join(message["content"] for message in scripted.prompts[-1])


# Through the ChatService: what the model is given -------------------------------------------

async def test_a_fact_300_turns_back_reaches_the_prompt_marked_as_recalled(scripted_service, scripted, store):
    await scripted_service.reply(said(FACT, message_id=500))
    await bury(store, 300)
    await scripted_service.reply(said(QUESTION))
    *earlier, newest = scripted.prompts[-1]
    assert not any("Tiberius" in message["content"] for message in earlier)  # the window moved on long ago
    block, question = newest["content"].split("\n\n")
    assert block.startswith(RECALL_HEADER + "\n[")
    assert block.endswith("] Ann: " + FACT)
    assert question == "Ann: " + QUESTION
    assert len(scripted.prompts[-1]) <= 1 + 40  # the persona and the window as before: only the newest grew


async def test_a_deleted_forgotten_or_reset_fact_is_never_recalled(scripted_service, scripted, store):
    await scripted_service.reply(said(FACT, message_id=500))
    await bury(store, 100)
    await store.forget_message(500)
    await scripted_service.reply(said(QUESTION))
    assert "Tiberius" not in given_to_model(scripted)

    await scripted_service.reply(said(FACT, message_id=501))
    await bury(store, 100)
    await scripted_service.privacy.forget_user(30, guild_id=20, channel_id=10)  # /forget-me
    await scripted_service.reply(said(QUESTION, author="Bob", author_id=31))
    assert "Tiberius" not in given_to_model(scripted)

    await scripted_service.reply(said(FACT, author="Bob", author_id=31))
    await bury(store, 100)
    await scripted_service.reset_channel(20, 10, ADMIN)
    await scripted_service.reply(said(QUESTION, author="Bob", author_id=31))
    assert "Tiberius" not in given_to_model(scripted)


async def test_other_channels_servers_and_dms_are_never_searched(scripted_service, scripted):
    await scripted_service.reply(said(FACT, channel=1))
    await scripted_service.reply(said(FACT, channel=2, guild=None))  # a DM
    await scripted_service.reply(said(QUESTION, channel=3, guild=21))
    assert "Tiberius" not in given_to_model(scripted)
    assert RECALL_HEADER not in given_to_model(scripted)


async def test_recall_messages_0_turns_recall_off(tmp_path, store, scripted):
    settings = settings_for(tmp_path / "bot.db").with_overrides("history", recall_messages=0)
    service = await service_with(store, settings, scripted)
    await service.reply(said(FACT))
    await bury(store, 100)
    await service.reply(said(QUESTION))
    assert "Tiberius" not in given_to_model(scripted)


async def test_recall_stays_within_its_token_budget_and_never_repeats_the_window(tmp_path, store, scripted):
    settings = settings_for(tmp_path / "bot.db").with_overrides("history", recall_messages=5, recall_tokens=40)
    service = await service_with(store, settings, scripted)
    for i in range(5):
        await service.reply(said(f"Fact {i}: the cat's name is Tiberius the {i}th, " + "very " * 10 + "fluffy."))
    await bury(store, 100)
    await service.reply(said(f"Fact 5: the cat's name is {'still '}Tiberius."))  # in the window
    await service.reply(said(QUESTION))
    block = scripted.prompts[-1][-1]["content"].split("\n\n")[0]
    recalled = block.splitlines()[1:]
    assert 1 <= len(recalled) < 5  # ScriptedBackend counts a token a word: each fact is about 20
    assert not any("Fact 5" in line for line in recalled)


async def test_recalled_text_cannot_ping(scripted_service, scripted, store):
    await scripted_service.reply(said("Tell @everyone my cat's name is Tiberius <@&123>"))
    await bury(store, 100)
    await scripted_service.reply(said(QUESTION))
    block = scripted.prompts[-1][-1]["content"].split("\n\n")[0]
    assert "Tiberius" in block and "@everyone" not in block and "<@&123>" not in block


# The store, on SQLite and PostgreSQL -------------------------------------------------------

async def test_store_recall_finds_the_best_matches_of_one_channel_before_a_row(any_store):
    store = any_store
    fact = await store.add_turn(channel_id=1, role="user", content="The wifi password is hunter2, says Ann")
    await store.add_turn(channel_id=1, role="user", content="Wifi is slow today")
    await store.add_turn(channel_id=2, role="user", content="The wifi password in channel two is swordfish")
    newest = await store.add_turn(channel_id=1, role="user", content="the wifi password again: hunter2")
    best = await store.recall(1, "what was the WiFi password?", before_id=newest, limit=3)
    assert [turn.id for turn in best][:1] == [fact]
    assert {turn.content for turn in best} == {"The wifi password is hunter2, says Ann", "Wifi is slow today"}
    assert await store.recall(1, "wifi password", before_id=fact, limit=3) == []
    assert len(await store.recall(1, "wifi", before_id=None, limit=10)) == 3
    assert await store.recall(1, "wifi", before_id=None, limit=0) == []


@pytest.mark.parametrize("words", ['"wifi', "wifi*", "NEAR(wifi password)", "wifi AND OR NOT", "-wifi",
                                   "content:wifi", "'wifi' | !password & (x", "^wifi", "a b c", "", "😀 ?!"])
async def test_store_recall_takes_any_text_without_search_syntax_errors(any_store, words):
    await any_store.add_turn(channel_id=1, role="user", content="wifi password")
    found = await any_store.recall(1, words, before_id=None, limit=3)
    assert found == [] or [turn.content for turn in found] == ["wifi password"]


async def test_store_recall_follows_every_edit_and_delete(any_store):
    store = any_store
    await store.add_turn(channel_id=1, guild_id=9, role="user", content="zebra one", message_id=11, author_id=5)
    await store.add_turn(channel_id=1, guild_id=9, role="user", content="zebra two", message_id=12, author_id=6)
    turn = await store.add_turn(channel_id=1, guild_id=9, role="user", content="zebra three", author_id=6)
    await store.add_turn(channel_id=2, guild_id=8, role="user", content="zebra four", message_id=14, author_id=6)

    async def zebras():
        found = [*await store.recall(1, "zebra", None, 10), *await store.recall(2, "zebra", None, 10)]
        return sorted(turn.content for turn in found)

    assert await store.edit_turn(11, "okapi one")
    assert await zebras() == ["zebra four", "zebra three", "zebra two"]
    assert [t.content for t in await store.recall(1, "okapi", None, 10)] == ["okapi one"]
    await store.forget_message(12)
    await store.forget_turn(turn)
    assert await zebras() == ["zebra four"]
    await store.forget_author(5)
    assert await store.recall(1, "okapi", None, 10) == []
    await store.delete_guild_data(8)
    assert await zebras() == []
    await store.add_turn(channel_id=1, role="user", content="zebra five")
    await store.clear_channel(1)
    assert await zebras() == []
    if store.engine.dialect.name == "sqlite":  # FTS5's own check that the index matches the table
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")


async def test_the_search_migrations_index_existing_rows_and_downgrade(database_url):
    engine = create_engine(database_url)
    await upgrade(engine, "0004")
    async with engine.begin() as connection:
        insert = text("INSERT INTO messages (channel_id, role, content, created_at) VALUES (1, 'user', :content, :now)")
        now = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
        await connection.execute(insert.bindparams(bindparam("now", type_=DateTime(timezone=True))),
                                 [{"content": "the treasure is under the old oak", "now": now},
                                  {"content": "nothing to see here", "now": now}])
    await upgrade(engine)
    store = Store(engine)
    assert [t.content for t in await store.recall(1, "where is the treasure?", None, 3)] == [
        "the treasure is under the old oak"]
    await downgrade(engine, "0007")  # 0005's index of plain words again, every row in it
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plain = "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH 'content : treasure'"
            assert (await connection.execute(text(plain))).scalar() == 1
        else:
            indexes = "SELECT indexname FROM pg_indexes WHERE indexname IN ('ix_messages_content_fts', 'ix_messages_channel_words')"
            assert (await connection.execute(text(indexes))).scalars().all() == ["ix_messages_content_fts"]
    await downgrade(engine, "0004")
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            leftovers = "SELECT name FROM sqlite_master WHERE name LIKE 'messages_fts%'"
        else:
            leftovers = "SELECT indexname FROM pg_indexes WHERE indexname IN ('ix_messages_content_fts', 'ix_messages_channel_words')"
        assert (await connection.execute(text(leftovers))).all() == []
    await upgrade(engine)
    assert len(await Store(engine).recall(1, "treasure oak", None, 3)) == 1
    await engine.dispose()


async def test_words_that_look_like_another_channels_keys_stay_in_their_channel(any_store):
    """SQLite keys each indexed word with its channel ("11xzebra"); words written to look like
    such keys never reach another channel, or the same channel under another word."""
    await any_store.add_turn(channel_id=1, role="user", content="1xzebra and 11xzebra")
    await any_store.add_turn(channel_id=11, role="user", content="zebra crossing")
    assert [t.content for t in await any_store.recall(11, "zebra", None, 5)] == ["zebra crossing"]
    assert await any_store.recall(1, "zebra", None, 5) == []
    assert [t.content for t in await any_store.recall(1, "11xzebra", None, 5)] == ["1xzebra and 11xzebra"]


async def test_a_tool_without_the_bots_function_can_delete_but_not_add_or_edit_unindexed(tmp_path):
    """The index's triggers call channel_words(), which the bot registers on its connections. The
    sqlite3 shell can still delete (and the row leaves the index), but an insert or edit fails
    loudly rather than store words recall could never find."""
    import sqlite3

    path = tmp_path / "bot.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    await store.add_turn(channel_id=1, role="user", content="the treasure is under the old oak")
    with sqlite3.connect(path) as tool:
        with pytest.raises(sqlite3.OperationalError, match="channel_words"):
            tool.execute("INSERT INTO messages (channel_id, role, content, created_at) "
                         "VALUES (1, 'user', 'more treasure', '2026-11-30 10:00:00')")
        with pytest.raises(sqlite3.OperationalError, match="channel_words"):
            tool.execute("UPDATE messages SET content = 'the treasure moved'")
        tool.execute("DELETE FROM messages WHERE content LIKE '%treasure%'")
    assert await store.recall(1, "treasure", None, 3) == []
    async with store.engine.begin() as connection:
        await connection.exec_driver_sql("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
    await store.close()


def test_search_terms_are_plain_words_without_stop_words_each_once():
    assert search_terms("What's the NAME of my cat? The cat's name!") == ["name", "cat"]
    assert search_terms('"x" OR y* NEAR(a,b) col:zz') == ["near", "col"]
    assert search_terms("Café crème") == ["café", "crème"]


# The real model ----------------------------------------------------------------------------

async def test_the_real_model_answers_from_a_recalled_fact(tmp_path, store, embedded_engine):
    """Told a fact, then ten exchanges later (the window is 4 turns) asked about it."""
    settings = settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=40)
    settings = settings.with_overrides("history", max_turns=4)

    async def asked_after_small_talk(service, channel):
        assert (await service.reply(said("My favourite fruit is mango.", channel=channel))).ok
        for i in range(10):
            await store.add_turn(channel_id=channel, guild_id=20, role="user", content=f"Say the number {i}.",
                                 author_id=31, author_name="Bob")
            await store.add_turn(channel_id=channel, guild_id=20, role="assistant", content=f"{i}.")
        return await service.reply(said("What is my favourite fruit?", channel=channel))

    answer = await asked_after_small_talk(ChatService(store, embedded_engine, settings), channel=10)
    assert answer.ok and "mango" in answer.text.lower()
    # The control: without recall the fact is out of the window, and the model does not know it.
    no_recall = settings.with_overrides("history", recall_messages=0)
    answer = await asked_after_small_talk(ChatService(store, embedded_engine, no_recall), channel=11)
    assert answer.ok and "mango" not in answer.text.lower()


async def test_postgresql_recall_reads_its_channels_part_of_the_index(fresh_postgres_url):
    """The recall query's expression is the index's (migration 0008), so PostgreSQL can search
    the index, keyed by channel, rather than read every message (with only the search to go
    on, and sequential scans off, the plan shows whether the index fits the query)."""
    from bot.store.repository import _POSTGRESQL_CHANNEL_WORDS, _POSTGRESQL_QUERY

    store = await Store.open(fresh_postgres_url)
    await store.add_turn(channel_id=1, role="user", content="the treasure is under the old oak")
    async with store.engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: else it would scan
        search = f"EXPLAIN SELECT id FROM messages WHERE {_POSTGRESQL_CHANNEL_WORDS} @@ {_POSTGRESQL_QUERY}"
        plan = (await connection.execute(text(search), {"query": "treasure", "channel_id": 1})).scalars()
        assert "ix_messages_channel_words" in "\n".join(plan)
    await store.close()
