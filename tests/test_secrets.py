"""The Discord token never shows: not in a log record (at DEBUG, every logger), not in an
error message, not in an exception's text, not in what `python -m bot run` prints."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import traceback

import pytest

from bot.discord_bot.launch import DiscordSetupError, run_on_discord
from bot.llm.worker import ModelWorker
from tests.fakediscord import FakeDiscord, build_world, point_discord_py_at
from tests.support.discord_scene import MESSAGES, replying_to
from tests.support.scripted import ScriptedBackend
from tests.support.settings import REPO_ROOT, settings_for

# Shaped like a real one (base64 id, timestamp, HMAC), so that nothing treats it specially.
TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhJkLm.s3cr3t-T0k3n-n0-0n3-sh0uld-3v3r-s33"
WRONG_TOKEN = "MTExMTExMTExMTExMTExMTExMQ.AbCdEf.wr0ng-t0k3n-als0-a-s3cr3t-v4lu3-xyz"


def everything_logged(records: list[logging.LogRecord]) -> str:
    """Every piece of every record a handler could write out."""
    formatter = logging.Formatter()
    texts = []
    for record in records:
        texts += [record.getMessage(), str(record.msg), repr(record.args), record.exc_text or ""]
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return "\n".join(texts)


async def chat_then_drop_and_resume(fake: FakeDiscord, settings) -> None:
    world = build_world(fake)
    running = asyncio.create_task(run_on_discord(settings, model=ModelWorker(ScriptedBackend())))
    try:
        await fake.wait_until_connected(timeout=5)
        message = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} hi")
        await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=5)
        await fake.drop_gateway()  # the RESUME payload carries the token as well
        await fake.wait_for_resume()
        again = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} still there?")
        await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(again), timeout=5)
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_the_token_is_in_no_log_record_nor_error(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: discord.py's, aiohttp's, ours
    # Tests that run the CLI in this process quiet discord.py's logger (as `python -m bot` does).
    caplog.set_level(logging.DEBUG, logger="discord")
    settings = settings_for(tmp_path / "bot.db")
    async with FakeDiscord(token=TOKEN) as fake:
        with point_discord_py_at(fake):
            await chat_then_drop_and_resume(fake, dataclasses.replace(settings, discord_token=TOKEN))
            with pytest.raises(DiscordSetupError) as rejected:  # the fake answers 401 to it
                await run_on_discord(dataclasses.replace(settings, discord_token=WRONG_TOKEN))

    logged = everything_logged(caplog.records)
    assert any(record.levelno == logging.DEBUG and record.name.startswith("discord") for record in caplog.records)
    assert "IDENTIFY" in logged  # the connection was logged in detail...
    assert TOKEN not in logged and WRONG_TOKEN not in logged  # ...and the tokens in none of it
    # The error, with every exception chained to it (even those hidden by `from None`).
    error_text = "".join(traceback.format_exception(rejected.value, chain=True))
    context = rejected.value.__context__
    while context is not None:
        error_text += "".join(traceback.format_exception(context)) + repr(context.args)
        context = context.__context__
    assert WRONG_TOKEN not in error_text


def test_run_with_a_token_and_no_network_fails_with_one_line_without_it(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "DISCORD_"))}
    environment.update(BOT_CONFIG=str(REPO_ROOT / "config.toml"), DISCORD_TOKEN=TOKEN)
    result = subprocess.run([sys.executable, "-c", UNREACHABLE_RUN], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert TOKEN not in result.stderr and TOKEN not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Could not reach Discord ("), result.stderr
    assert result.stdout == ""


# `python -m bot run`, with discord.py pointed at a closed local port so that the test is the
# same on a machine with network and one without.
UNREACHABLE_RUN = """
import sys, discord, yarl
discord.http.Route.BASE = "http://127.0.0.1:9/api/v10"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("ws://127.0.0.1:9/")
sys.argv = ["bot", "run"]
import runpy
runpy.run_module("bot", run_name="__main__")
"""
