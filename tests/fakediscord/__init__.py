"""A protocol-level fake Discord for end-to-end tests of discord.py bots.

The real, unmodified discord.py client talks to it over HTTP and a WebSocket
on 127.0.0.1: login, Gateway (HELLO / IDENTIFY / READY / GUILD_CREATE,
heartbeats, RESUME with event replay), messages (replies, forwards, webhooks'),
typing, DMs, public threads, channel deletion, slash-command interactions and
their responses, app-command sync, rate limits and errors.

Typical use::

    from tests.fakediscord import FakeDiscord, make_client, running_client

    async def test_echo():
        async with FakeDiscord() as fake:
            guild = fake.add_guild("Test Guild")
            general = fake.add_text_channel(guild, "general")
            alice = fake.add_user("alice")
            fake.add_member(guild, alice)

            client = make_client()          # fast-connect discord.Client

            @client.event
            async def on_message(message):
                if message.author != client.user:
                    await message.channel.send(message.content)

            async with running_client(fake, client):   # login + wait for ready
                await fake.send_message(general, alice, "hi")
                sent = await fake.wait_for_request("POST", "/channels/{id}/messages")
                assert sent.json["content"] == "hi"

Pointing discord.py elsewhere is done by ``point_discord_py_at(fake)`` (or
``fake.install()``), which swaps ``discord.http.Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY`` and restores them afterwards;
``running_client`` does it for you.

Design notes:

* World state lives in plain dataclasses (``models.py``); Discord JSON is
  rendered from it on demand (``payloads.py``), so payloads stay consistent.
* Test actions (``send_message``, ``send_interaction``, ...) update the state
  *and* dispatch the Gateway event Discord would send; REST calls by the bot
  do the same (a sent message comes back as MESSAGE_CREATE, like on Discord).
* Every REST request is recorded (``fake.requests``, ``requests_to``,
  ``wait_for_request``); ``fail_next`` injects 429s / 5xx.
* Intents are honoured: no MESSAGE_CONTENT intent means blank content for
  guild messages that do not mention the bot, as on Discord.
"""

from . import permissions
from .harness import World, build_world, default_intents, make_client, running_client
from .install import DiscordPyChanged, check_discord_py_hooks, point_discord_py_at
from .interactions import CommandNotPermitted
from .models import FakeChannel, FakeGuild, FakeInteraction, FakeMember, FakeRole, FakeUser, FakeWebhook
from .recorder import RecordedFile, RecordedRequest
from .server import FakeDiscord

__all__ = [
    "FakeDiscord",
    "point_discord_py_at",
    "check_discord_py_hooks",
    "DiscordPyChanged",
    "make_client",
    "running_client",
    "default_intents",
    "World",
    "build_world",
    "CommandNotPermitted",
    "FakeUser",
    "FakeGuild",
    "FakeChannel",
    "FakeMember",
    "FakeRole",
    "FakeInteraction",
    "FakeWebhook",
    "RecordedRequest",
    "RecordedFile",
    "permissions",
]
