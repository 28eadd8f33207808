"""`python -m bot run`: find the token, check it, load the model, connect and chat until stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import aiohttp
import discord

from .. import messages
from ..app import open_app
from ..config import Settings
from ..llm.port import ChatModel
from .client import ChatBot, chat_bot_for, shard_options

DOTENV_PATH = Path(".env")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long a clean shutdown waits for cut-short answers to be posted before disconnecting anyway.
SHUTDOWN_GRACE_S = 10.0

log = logging.getLogger(__name__)


class DiscordSetupError(Exception):
    """The bot cannot connect until the operator fixes something. str() is one line saying what."""


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines of a .env file; blank lines, # comments, `export ` and quotes allowed."""
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():  # -sig: Notepad's byte order mark
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def discord_token(settings: Settings, dotenv: Path = DOTENV_PATH) -> str:
    """DISCORD_TOKEN from the environment, else from .env. Never logged."""
    in_dotenv = read_dotenv(dotenv)
    token = settings.discord_token or in_dotenv.get("DISCORD_TOKEN", "").strip()
    if not token:
        near = sorted(key for key in in_dotenv if "TOKEN" in key.upper() and key != "DISCORD_TOKEN")
        hint = messages.DISCORD_TOKEN_NAMED_OTHERWISE.format(names=", ".join(near)) if near else ""
        raise DiscordSetupError(messages.DISCORD_TOKEN_MISSING + hint)
    return cleaned_token(token)


def cleaned_token(token: str) -> str:
    """The token as Discord gave it: pasting often brings quotes (curly ones from a document) or
    the "Bot " that goes before it in requests (which discord.py adds itself). What cannot be
    part of a token (spaces, line breaks, quotes, letters beyond ASCII) is refused with a
    sentence saying so, rather than a rejection that sends the operator to reset a good token."""
    token = token.strip().strip(QUOTES).strip()
    if token[:4].lower() == "bot ":
        token = token[4:].strip()
    if not token:
        raise DiscordSetupError(messages.DISCORD_TOKEN_MISSING)
    odd = next((c for c in token if not (c.isascii() and c.isprintable()) or c.isspace() or c in QUOTES), None)
    if odd is not None:
        raise DiscordSetupError(messages.DISCORD_TOKEN_MALFORMED.format(character=_named(odd)))
    return token


QUOTES = "'\"\u2018\u2019\u201c\u201d"


def _named(character: str) -> str:
    names = {" ": "a space", "\n": "a line break", "\r": "a line break", "\t": "a tab"}
    return names.get(character, f"the character {character!r}")


@contextmanager
def explained_setup_errors() -> Iterator[None]:
    """What only the operator can fix, as one line saying how, instead of a traceback."""
    try:
        yield
    except discord.LoginFailure:
        raise DiscordSetupError(messages.DISCORD_TOKEN_REJECTED) from None
    except discord.PrivilegedIntentsRequired:
        raise DiscordSetupError(messages.DISCORD_INTENT_MISSING) from None
    except aiohttp.ClientConnectionError as error:
        # Only the first connection gets here: once connected, discord.py reconnects by itself.
        raise DiscordSetupError(messages.DISCORD_UNREACHABLE.format(reason=error)) from None


async def check_token(token: str) -> None:
    """Log in once without connecting: a wrong token fails here in a second, before the model
    spends a minute loading."""
    # It never connects, so intents do not matter; with none at all discord.py warns on stderr
    # that the guilds intent is off, a stray line before the one that says what went wrong.
    probe = discord.Client(intents=discord.Intents(guilds=True))
    try:
        with explained_setup_errors():
            await probe.login(token)
        warn_if_message_content_looks_off(probe.application_flags)
    finally:
        await probe.close()


def warn_if_message_content_looks_off(flags: discord.ApplicationFlags) -> None:
    """The application's flags (read at login) show the portal's Message Content switch: say so
    before the model loads, rather than only once connected, minutes later. A warning, not an
    error: Discord alone decides, at connection (close code 4014, then the error)."""
    if not (flags.gateway_message_content or flags.gateway_message_content_limited):
        log.warning("%s", messages.DISCORD_INTENT_LOOKS_OFF)


async def run_on_discord(settings: Settings, model: ChatModel | None = None) -> int:
    """Chat on Discord until stopped (Ctrl-C). Reconnects on its own after network trouble."""
    token = discord_token(settings)
    sharding = shard_options(settings.discord)
    # A text-only bot: discord.py's warnings that voice libraries are missing are only noise.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    await check_token(token)
    app = await open_app(settings, model, serve_metrics=True)
    try:
        with explained_setup_errors():
            async with chat_bot_for(app.service, settings.discord, sharding) as bot:
                await serve_until_stopped(bot, token)
    finally:
        await app.close()
    return 0


async def serve_until_stopped(bot: ChatBot, token: str) -> None:
    """Run the bot until it ends by itself or SIGTERM / SIGINT (Ctrl-C) asks it to stop; then
    shut down cleanly: answers being written are cut short and posted with a note saying so,
    messages not yet started are told the bot is restarting, and only then does it disconnect."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, stop_requested.set)
    running = asyncio.create_task(bot.start(token))
    waiting_for_signal = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({running, waiting_for_signal}, return_when=asyncio.FIRST_COMPLETED)
        if stop_requested.is_set():
            log.info("asked to stop: finishing the answers being written, then disconnecting")
            await bot.close_gracefully(SHUTDOWN_GRACE_S)
        await running  # returns once closed; raises what ended it otherwise
    finally:
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)
        for task in (running, waiting_for_signal):
            if not task.done():  # stopped from outside (cancelled): take both down with it
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
