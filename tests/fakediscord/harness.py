"""Run a real discord.py client against a ``FakeDiscord`` quickly.

Two discord.py defaults make tests slow: ``guild_ready_timeout`` (2s wait for
more GUILD_CREATEs before on_ready) and ``before_identify_hook`` (5s sleep
before every non-initial IDENTIFY). ``make_client`` disables both.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Type, TypeVar

import discord

from . import permissions as perms
from .install import point_discord_py_at
from .models import FakeChannel, FakeGuild, FakeUser
from .server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


def default_intents() -> discord.Intents:
    """Guilds, members, guild + DM messages and message content."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.members = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    return intents


async def _identify_immediately(shard_id: Optional[int], *, initial: bool = False) -> None:
    return None


def make_client(
    cls: Type[ClientT] = discord.Client,  # type: ignore[assignment]
    *,
    intents: Optional[discord.Intents] = None,
    **options: Any,
) -> ClientT:
    """Build a client (or Bot subclass) tuned for fast test connects."""
    options.setdefault("guild_ready_timeout", 0.01)
    client = cls(intents=intents or default_intents(), **options)
    client.before_identify_hook = _identify_immediately  # type: ignore[method-assign]
    return client


@contextlib.asynccontextmanager
async def running_client(fake: FakeDiscord, client: ClientT, *, ready_timeout: float = 5.0) -> AsyncIterator[ClientT]:
    """Log ``client`` in against ``fake``, wait for on_ready, close on exit.

    If the client dies while connecting, its exception is raised instead of a
    bare timeout.
    """
    with point_discord_py_at(fake):
        await client.login(fake.token)
        runner = asyncio.create_task(client.connect(reconnect=True), name="fake-discord-client")
        ready = asyncio.create_task(client.wait_until_ready())
        try:
            done, _ = await asyncio.wait({runner, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # re-raise the connect error
                raise RuntimeError("client.connect() returned before becoming ready")
            if ready not in done:
                raise TimeoutError(f"client not ready after {ready_timeout}s")
            yield client
        finally:
            ready.cancel()
            await client.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(runner, timeout=2.0)


@dataclass
class World:
    """A small ready-made server: one guild, one channel, two members."""

    fake: FakeDiscord
    guild: FakeGuild
    general: FakeChannel
    alice: FakeUser  # ordinary member (@everyone permissions only)
    mod: FakeUser  # member with MANAGE_GUILD and MANAGE_MESSAGES


def build_world(fake: FakeDiscord) -> World:
    guild = fake.add_guild("Test Guild")
    general = fake.add_text_channel(guild, "general", topic="General chat")
    alice = fake.add_user("alice", global_name="Alice")
    mod = fake.add_user("mod")
    fake.add_member(guild, alice)
    fake.add_member(guild, mod, permissions=perms.MANAGE_GUILD | perms.MANAGE_MESSAGES)
    return World(fake, guild, general, alice, mod)
