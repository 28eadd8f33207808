"""Crash and restart: the real bot in its own process, killed hard or asked to stop, against
the fake Discord running in the test process.

SIGKILL mid-burst must leave a database that passes SQLite's integrity check, in which every
answer that reached Discord is stored, and which the restarted bot goes on using (a question
stored without its answer must not trip up the next prompt). SIGTERM must shut down cleanly:
the answer being written is posted cut short with a note (or whole), a message still waiting
is told the bot is restarting, and the process exits 0.
"""

from __future__ import annotations

import os
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from bot import messages
from tests.fakediscord import FakeDiscord, World, build_world
from tests.support.bot_subprocess import START_TIMEOUT_S, BotProcess, ask, posted_answers
from tests.support.discord_scene import MESSAGES, replying_to
from tests.support.sqlite_file import integrity, stored_turns
from tests.support.waiting import until


@asynccontextmanager
async def bot_process(tmp_path: Path, word_delay_s: float = 0.01,
                      extra_arguments: tuple[str, ...] = ()) -> AsyncIterator[tuple[World, BotProcess]]:
    async with FakeDiscord() as fake:
        world = build_world(fake)
        bot = BotProcess(fake, tmp_path / "bot.db", tmp_path / "bot.log", word_delay_s,
                         extra_arguments=extra_arguments)
        try:
            await bot.start()
            yield world, bot
        finally:
            await bot.kill()


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


async def test_a_hard_kill_mid_burst_loses_no_posted_answer_and_the_bot_carries_on(tmp_path):
    async with bot_process(tmp_path) as (world, bot):
        fake = world.fake
        await ask(world, "warming up", timeout=START_TIMEOUT_S)
        rooms = [fake.add_text_channel(world.guild, f"room-{n}") for n in range(5)]
        # New channels reach the bot as CHANNEL_CREATE events: asking in the last one makes
        # sure it knows them all before the burst.
        await ask(world, "ready?", channel=rooms[-1])
        for round_number in range(8):
            for index, room in enumerate(rooms):
                await fake.send_message(room, world.alice, f"{fake.bot.mention} room {index} question {round_number}")
        await until(lambda: len(posted_answers(fake)) >= 12)  # some answered, most still to come
        bot.signal(signal.SIGKILL)
        assert await bot.exit_code(10) == -signal.SIGKILL

        database = bot.database
        assert integrity(database) == "ok"
        stored = stored_turns(database)
        stored_answers = {content for _, role, content in stored if role == "assistant"}
        posted = posted_answers(fake)
        assert 12 <= len(posted) < 2 + 5 * 8  # killed mid-way
        assert [answer for answer in posted if answer not in stored_answers] == []
        assert len(stored_answers) == len([c for _, r, c in stored if r == "assistant"])  # none stored twice

        await bot.start()  # the same database, a fresh process
        last_turn_by_channel = {channel: role for channel, role, _ in stored}
        unanswered = [room for room in rooms if last_turn_by_channel.get(room.id) == "user"]
        room = (unanswered or rooms)[0]
        reply = await ask(world, "after the restart", channel=room, timeout=START_TIMEOUT_S)
        assert reply.json["content"] == "echo: Alice: after the restart"
        assert integrity(database) == "ok"


async def test_sigterm_cuts_the_answer_short_tells_the_waiting_and_exits_cleanly(tmp_path):
    long_question = " ".join(f"word{n}" for n in range(300))  # echoed word by word: about 6 s
    begun = tmp_path / "answers-begun"  # a line as each answer's first word is written
    async with bot_process(tmp_path, word_delay_s=0.02, extra_arguments=("--answers-begun", str(begun))) as (
            world, bot):
        fake = world.fake
        await ask(world, "warming up", timeout=START_TIMEOUT_S)
        being_written = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} {long_question}")
        waiting = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} and then this")
        await fake.wait_for_request("POST", f"/channels/{world.general.id}/typing", count=2)
        # The answer is being written: its first word is out (the warm-up's answer was the first line).
        await until(lambda: lines_in(begun) == 2)
        bot.signal(signal.SIGTERM)

        cut = await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(being_written), timeout=10)
        told = await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(waiting), timeout=10)
        assert await bot.exit_code(15) == 0, bot.log()

    text = cut.json["content"]
    whole = f"echo: Alice: {long_question}"
    assert text == whole or (text.endswith(f"\n-# {messages.CUT_SHORT_RESTART}") and len(text) < len(whole))
    assert told.json["content"] == messages.RESTARTING
    assert "asked to stop" in bot.log()
    database = tmp_path / "bot.db"
    assert integrity(database) == "ok"
    answers = [content for _, role, content in stored_turns(database) if role == "assistant"]
    assert text.startswith(answers[-1])  # what was posted is what is remembered
    # told to send it again, so not kept: it would be in the history twice once they do
    assert not any("and then this" in content for _, _, content in stored_turns(database))
    assert not os.path.exists(f"{database}-wal") or os.path.getsize(f"{database}-wal") == 0  # closed cleanly
