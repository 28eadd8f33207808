"""The real bot as a separate process, talking to a fake Discord run by the test process.

    python -m tests.support.bot_process --api URL --gateway URL --db SQLALCHEMY_URL
        [--shard-id N --shard-count M] [--answers-begun FILE]

It runs `run_on_discord` itself (token check, database, ChatBot, signal handling) with a
scripted model inside the real ModelWorker, so a test can SIGKILL or SIGTERM it like an
operator or a crash would. Only discord.py's two addresses are pointed at the fake
(see tests/fakediscord/install.py). Answers are posted whole (no streaming edits), so the
fake's record of a posted reply is the stored answer, word for word. With --answers-begun, a
line is added to FILE as each answer's first word is written, so that a test can act while an
answer is being written (tests/support/bot_subprocess.py runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

import discord.gateway
import discord.http
import yarl

from bot.config import load_settings
from bot.discord_bot.launch import run_on_discord
from bot.llm.worker import ModelWorker
from tests.support.scripted import ScriptedBackend
from tests.support.settings import REPO_ROOT


class AnnouncingBackend(ScriptedBackend):
    """The scripted model, adding a line to `begun` as each answer's first word is written."""

    def __init__(self, begun: Path, **options):
        super().__init__(**options)
        self.begun = begun

    def generate_stream(self, prompt, params, should_stop, emit, *rest, **options) -> None:
        announced = False

        def emit_and_announce(text: str) -> None:
            nonlocal announced
            emit(text)  # on its way to the bot before the test can see the line
            if not announced:
                announced = True
                with self.begun.open("a") as file:
                    file.write("begun\n")
        super().generate_stream(prompt, params, should_stop, emit_and_announce, *rest, **options)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.bot_process")
    parser.add_argument("--api", required=True, help="the fake's REST base, e.g. http://127.0.0.1:PORT/api/v10")
    parser.add_argument("--gateway", required=True, help="the fake's Gateway URL")
    parser.add_argument("--db", required=True, help="SQLAlchemy URL of the database")
    parser.add_argument("--token", default="fake-bot-token")
    parser.add_argument("--shard-id", type=int, help="run only this Discord shard (with --shard-count)")
    parser.add_argument("--shard-count", type=int, default=0, help="Discord shards in all (0 = unsharded)")
    parser.add_argument("--word-delay", type=float, default=0.01, help="seconds between streamed words")
    parser.add_argument("--answers-begun", type=Path, help="add a line to this file as each answer begins")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    discord.http.Route.BASE = arguments.api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(arguments.gateway)
    settings = load_settings(REPO_ROOT / "config.toml", environ={
        "BOT_DATABASE_URL": arguments.db, "BOT_DISCORD_STREAM_EDIT_INTERVAL": "0",
        "BOT_LIMITS_USER_MESSAGES_PER_MINUTE": "0", "BOT_DISCORD_SHARD_COUNT": str(arguments.shard_count),
        "BOT_DISCORD_SHARD_IDS": "" if arguments.shard_id is None else str(arguments.shard_id)})
    settings = dataclasses.replace(settings, discord_token=arguments.token)
    scripted = (AnnouncingBackend(arguments.answers_begun, word_delay_s=arguments.word_delay) if arguments.answers_begun
                else ScriptedBackend(word_delay_s=arguments.word_delay))
    model = ModelWorker(scripted, timeout_s=30)
    return asyncio.run(run_on_discord(settings, model=model))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
