"""Crash and restart: the real bot in its own process, killed hard or asked to stop, against
the fake Discord running in the test process.

SIGKILL mid-burst must leave a database that passes SQLite's integrity check, in which every
answer that reached Discord is stored, and which the restarted bot goes on using (a question
stored without its answer must not trip up the next prompt). SIGTERM must shut down cleanly:
the answer being written is posted cut short with a note (or whole), a message still waiting
is told the bot is restarting, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from bot import messages
from tests.conftest import REPO_ROOT
from tests.fakediscord import FakeDiscord, RecordedRequest, World, build_world
from tests.test_discord_e2e import MESSAGES, replying_to

START_TIMEOUT_S = 60.0  # a cold Python start with SQLAlchemy and discord.py imports, on a busy machine


class BotProcess:
    """`python -m tests.support.bot_process` pointed at `fake`, logging to a file."""

    def __init__(self, fake: FakeDiscord, database: Path, log_path: Path, word_delay_s: float, *,
                 database_url: str | None = None, extra_arguments: tuple[str, ...] = ()):
        self.fake, self.database, self.log_path, self.word_delay_s = fake, database, log_path, word_delay_s
        self.database_url = database_url or f"sqlite+aiosqlite:///{database}"
        self.extra_arguments = extra_arguments  # e.g. --shard-id 0 --shard-count 2
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        identified = self.fake.identify_count
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.bot_process", "--api", self.fake.api_base,
                "--gateway", self.fake.gateway_url, "--db", self.database_url,
                "--token", self.fake.token, "--word-delay", str(self.word_delay_s), *self.extra_arguments,
                cwd=REPO_ROOT, stdout=log, stderr=log)
        await self.fake.wait_for_identify(identified + 1, timeout=START_TIMEOUT_S)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def exit_code(self, timeout: float) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def bot_process(tmp_path: Path, word_delay_s: float = 0.01) -> AsyncIterator[tuple[World, BotProcess]]:
    async with FakeDiscord() as fake:
        world = build_world(fake)
        bot = BotProcess(fake, tmp_path / "bot.db", tmp_path / "bot.log", word_delay_s)
        try:
            await bot.start()
            yield world, bot
        finally:
            await bot.kill()


async def ask(world: World, text: str, channel=None, timeout: float = 20.0) -> RecordedRequest:
    fake = world.fake
    message = await fake.send_message(channel or world.general, world.alice, f"{fake.bot.mention} {text}")
    return await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=timeout)


def posted_answers(fake: FakeDiscord) -> list[str]:
    return [r.json["content"] for r in fake.requests_to("POST", MESSAGES)
            if r.status == 200 and r.json["content"].startswith("echo: ")]


def integrity(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def stored_turns(database: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT channel_id, role, content FROM messages ORDER BY id").fetchall()


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
        while len(posted_answers(fake)) < 12:  # some answered, most still to come
            await asyncio.sleep(0.01)
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
    async with bot_process(tmp_path, word_delay_s=0.02) as (world, bot):
        fake = world.fake
        await ask(world, "warming up", timeout=START_TIMEOUT_S)
        being_written = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} {long_question}")
        waiting = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} and then this")
        await fake.wait_for_request("POST", f"/channels/{world.general.id}/typing", count=2)
        await asyncio.sleep(0.5)  # the answer is being written (a finished one is fine too)
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
    assert not os.path.exists(f"{database}-wal") or os.path.getsize(f"{database}-wal") == 0  # closed cleanly
