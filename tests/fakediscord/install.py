"""Point the real, unmodified discord.py at a ``FakeDiscord``.

discord.py builds every REST URL (bot routes, webhooks and interaction
callbacks alike) from the class attribute ``discord.http.Route.BASE``, and
connects to ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (a
``yarl.URL``) for fresh sessions. Resumes use READY's ``resume_gateway_url``,
which the fake points back at itself. So two class attributes are all it takes;
both are restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import discord.gateway
import discord.http
import yarl

if TYPE_CHECKING:
    from .server import FakeDiscord


class DiscordPyChanged(RuntimeError):
    """The attributes we patch are gone or changed type in this discord.py."""


def check_discord_py_hooks() -> None:
    base = getattr(discord.http.Route, "BASE", None)
    if not isinstance(base, str):
        raise DiscordPyChanged(f"discord.http.Route.BASE should be a str, got {base!r}")
    gateway = getattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", None)
    if not isinstance(gateway, yarl.URL):
        raise DiscordPyChanged(f"DiscordWebSocket.DEFAULT_GATEWAY should be a yarl.URL, got {gateway!r}")


@contextmanager
def point_discord_py_at(fake: "FakeDiscord") -> Iterator["FakeDiscord"]:
    """``with point_discord_py_at(fake): ...`` -- nestable, always restores."""
    check_discord_py_hooks()
    route, websocket = discord.http.Route, discord.gateway.DiscordWebSocket
    saved = (route.BASE, websocket.DEFAULT_GATEWAY)
    route.BASE = fake.api_base
    websocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield fake
    finally:
        route.BASE, websocket.DEFAULT_GATEWAY = saved
