"""The real bot in a process of its own (tests/support/bot_process.py), run by a test against
the fake Discord in the test's process: start it, signal or kill it, ask it, read its answers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.fakediscord import FakeDiscord, RecordedRequest, World
from tests.support.discord_scene import MESSAGES, replying_to
from tests.support.settings import REPO_ROOT

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


async def ask(world: World, text: str, channel=None, timeout: float = 20.0) -> RecordedRequest:
    """Alice mentions the bot; returns its reply once posted."""
    fake = world.fake
    message = await fake.send_message(channel or world.general, world.alice, f"{fake.bot.mention} {text}")
    return await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=timeout)


def posted_answers(fake: FakeDiscord) -> list[str]:
    """The scripted model's answers that reached Discord, in order."""
    return [r.json["content"] for r in fake.requests_to("POST", MESSAGES)
            if r.status == 200 and r.json["content"].startswith("echo: ")]
