"""Scaling out: two bot processes, each running one Discord shard, sharing one database.

Discord sends a server's events to one shard only ((guild_id >> 22) % shard_count), so each
process must answer only its own servers' messages, and the two must write to the one database
without losing, doubling or reordering any channel's turns.
"""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack

import pytest

from bot.config import ConfigError, DiscordSettings
from bot.discord_bot.client import on_shards, shard_options, share_of_the_bot
from bot.store import Store
from tests.fakediscord import FakeDiscord, build_world
from tests.support.bot_subprocess import START_TIMEOUT_S, BotProcess, ask, posted_answers
from tests.support.waiting import until

SHARD_COUNT = 2
QUESTIONS_PER_CHANNEL = 3


def shard_of(guild_id: int) -> int:
    return (guild_id >> 22) % SHARD_COUNT


def add_guild_on_shard(fake: FakeDiscord, shard_id: int, name: str):
    """A guild whose id puts it on `shard_id`. Ids are time-based (the shard is the millisecond's
    parity for two shards), so wait for the next millisecond until one fits."""
    while True:
        guild = fake.add_guild(name)
        if shard_of(guild.id) == shard_id:
            return guild
        time.sleep(0.001)


@pytest.fixture
def shared_database_url(request, tmp_path) -> str:
    """PostgreSQL, what several processes should share; a SQLite file where it cannot start."""
    try:
        return request.getfixturevalue("fresh_postgres_url")
    except pytest.skip.Exception:
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


async def ask_in_turn(world, channel, label: str) -> list[str]:
    """Questions to one channel, each after the last one's answer, as a person would."""
    for number in range(QUESTIONS_PER_CHANNEL):
        await ask(world, f"{label} question {number}", channel=channel)
    return [f"{label} question {number}" for number in range(QUESTIONS_PER_CHANNEL)]


async def test_two_shard_processes_answer_their_own_servers_into_one_database(tmp_path, shared_database_url):
    async with FakeDiscord() as fake, AsyncExitStack() as processes:
        world = build_world(fake)
        first_shard = shard_of(world.guild.id)
        other_guild = add_guild_on_shard(fake, 1 - first_shard, "Other Guild")
        other_channel = fake.add_text_channel(other_guild, "general")
        fake.add_member(other_guild, world.alice)
        bots = []
        for shard_id in range(SHARD_COUNT):
            bot = BotProcess(fake, tmp_path / "unused.db", tmp_path / f"shard{shard_id}.log", 0.0,
                             database_url=shared_database_url,
                             extra_arguments=("--shard-id", str(shard_id), "--shard-count", str(SHARD_COUNT)))
            processes.push_async_callback(bot.kill)
            await bot.start()
            bots.append(bot)

        asked = await asyncio.gather(ask_in_turn(world, world.general, "first"),
                                     ask_in_turn(world, other_channel, "other"))

        assert sessions_by_shard(fake) == {0, 1}
        for session in fake.gateway.sessions.values():
            assert guilds_with_messages(session) <= {g.id for g in (world.guild, other_guild)
                                                     if shard_of(g.id) == session.shard_id}
        # A process stops cleanly only once every message it took in has its answer posted: a
        # second, wrongly routed answer would have reached Discord before both have exited.
        for bot in bots:
            bot.signal(signal.SIGTERM)
        for bot in bots:
            assert await bot.exit_code(START_TIMEOUT_S) == 0, bot.log()
        assert len(posted_answers(fake)) == SHARD_COUNT * QUESTIONS_PER_CHANNEL  # each answered once
        store = await Store.open(shared_database_url, migrate=False)
        try:
            for channel, questions in zip((world.general, other_channel), asked):
                turns = await store.recent_turns(channel.id, 100)
                assert [turn.role for turn in turns] == ["user", "assistant"] * QUESTIONS_PER_CHANNEL
                users = [turn.content for turn in turns if turn.role == "user"]
                assert all(question in stored for question, stored in zip(questions, users, strict=True))
        finally:
            await store.close()


def sessions_by_shard(fake: FakeDiscord) -> set[int]:
    return {session.shard_id for session in fake.gateway.sessions.values() if session.shard_count == SHARD_COUNT}


def guilds_with_messages(session) -> set[int]:
    return {int(frame["d"]["guild_id"]) for frame in session.log
            if frame["t"] == "MESSAGE_CREATE" and frame["d"].get("guild_id")}


def test_sharding_settings_are_checked_before_anything_starts():
    assert shard_options(DiscordSettings()) == {}
    assert shard_options(DiscordSettings(shard_count=4, shard_ids="2, 0")) == {"shard_count": 4, "shard_ids": [0, 2]}
    assert shard_options(DiscordSettings(shard_count=4)) == {"shard_count": 4, "shard_ids": None}
    with pytest.raises(ConfigError, match="from 0 to 3"):
        shard_options(DiscordSettings(shard_count=4, shard_ids="4"))
    with pytest.raises(ConfigError, match="needs shard_count"):
        shard_options(DiscordSettings(shard_ids="0"))


def test_a_process_running_some_shards_keeps_to_their_share_of_the_request_budgets():
    """Discord's 50 requests a second are the bot's, whatever the processes: two processes of two
    shards each at the full budgets would send twice what one sends."""
    assert share_of_the_bot(DiscordSettings()) == 1
    assert share_of_the_bot(DiscordSettings(shard_count=4)) == 1  # all four in this process
    assert share_of_the_bot(DiscordSettings(shard_count=4, shard_ids="0,1")) == 0.5
    assert share_of_the_bot(DiscordSettings(shard_count=4, shard_ids="3")) == 0.25


def test_a_process_checks_for_servers_that_left_only_on_its_own_shards():
    """The other process keeps the other shards' servers: it alone may find them gone (and one it
    has just joined, which this process cannot see, is never this process's to delete)."""
    first, second = 12_346 << 22, 12_347 << 22  # Discord's rule, (id >> 22) % 2: shard 0, shard 1
    assert [on_shards(guild, {0}, 2) for guild in (first, second)] == [True, False]
    assert [on_shards(guild, {1}, 2) for guild in (first, second)] == [False, True]
    assert on_shards(second, {0, 1}, 2) and on_shards(second, None, None)  # every shard, or unsharded


async def test_shards_whose_session_begins_during_a_server_check_are_checked_right_after_it(scripted_service):
    """A gateway restart re-identifies several shards at once: before, a READY that came while
    another shard's check ran was dropped, and servers that removed the bot meanwhile stayed."""
    from bot.discord_bot.client import chat_bot_for

    bot = chat_bot_for(scripted_service, DiscordSettings(shard_count=4), {"shard_count": 4, "shard_ids": None})
    checked: list = []
    first_may_end = asyncio.Event()

    async def check(shards):
        checked.append(shards)
        if len(checked) == 1:
            await first_may_end.wait()

    bot._forget_servers_left_while_offline = check
    bot._start_server_check({0})
    await until(lambda: checked)
    bot._start_server_check({1})
    bot._start_server_check({2})
    first_may_end.set()
    await bot._server_check
    assert checked == [{0}, {1, 2}]  # (the bot never connected: nothing to close)
