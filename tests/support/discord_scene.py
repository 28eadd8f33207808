"""The real discord.py client and our ChatBot against the local fake Discord: a scene to act in.

running_bot() builds a fake Discord with a small world (a server, members, a channel), a
database and our bot connected to it; the Scene it yields lets a test speak as a user, run
slash commands, and read what the bot posted and stored.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from bot.discord_bot.client import ChatBot, required_intents
from bot.llm.worker import ModelWorker
from bot.service import ChatService
from bot.store import Store
from tests.fakediscord import FakeChannel, FakeDiscord, FakeUser, RecordedRequest, World, build_world, make_client
from tests.fakediscord import running_client
from tests.support.scripted import ScriptedBackend
from tests.support.settings import settings_for

MESSAGES = "/channels/{id}/messages"
TYPING = "/channels/{id}/typing"
EPHEMERAL = 1 << 6


@dataclass
class Scene:
    fake: FakeDiscord
    world: World
    store: Store
    service: ChatService
    model: ScriptedBackend | None
    bot: ChatBot

    @property
    def general(self) -> FakeChannel:
        return self.world.general

    async def say(self, text: str, *, channel: FakeChannel | None = None, author: FakeUser | None = None,
                  **options) -> dict:
        """A user posts (nothing more). Returns the message as Discord stored it."""
        return await self.fake.send_message(channel or self.general, author or self.world.alice, text, **options)

    async def ask(self, text: str, *, timeout: float = 5.0, **options) -> RecordedRequest:
        """A user mentions the bot; returns the bot's reply (the first part) once posted."""
        message = await self.say(f"{self.fake.bot.mention} {text}", **options)
        return await self.reply_to(message, timeout)

    async def reply_to(self, message: dict, timeout: float = 5.0) -> RecordedRequest:
        return await self.fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=timeout)

    async def command(self, user: FakeUser, name: str, *, channel: FakeChannel | None = None, **options) -> dict:
        """`user` runs a slash command; returns the answer they see, once complete."""
        interaction = await self.fake.send_interaction(channel or self.general, user, name, **options)
        callback = await self.fake.wait_for_interaction_response(interaction, timeout=5)
        if callback["type"] == 5:  # deferred: the answer follows on the interaction's webhook
            await self.fake.wait_for_request("POST", f"/webhooks/{{app}}/{interaction.token}", timeout=5)
        return self.fake.original_response(interaction)

    def posted(self, channel: FakeChannel | None = None) -> list[RecordedRequest]:
        """Messages the bot posted successfully in a channel, in order."""
        path = f"/channels/{(channel or self.general).id}/messages"
        return [r for r in self.fake.requests_to("POST", MESSAGES) if r.path == path and r.status == 200]

    async def turns(self, channel: FakeChannel | None = None) -> list[tuple[str, str]]:
        turns = await self.store.recent_turns((channel or self.general).id, 100)
        return [(turn.role, turn.content) for turn in turns]


def pings_no_one(request: RecordedRequest) -> bool:
    """Allowed mentions that parse nothing and name no one, the replied-to author included."""
    allowed = request.json["allowed_mentions"]
    return (allowed["parse"] == [] and not allowed.get("replied_user")
            and not allowed.get("users") and not allowed.get("roles"))


def replying_to(message: dict) -> Callable[[RecordedRequest], bool]:
    def check(request: RecordedRequest) -> bool:
        reference = (request.json or {}).get("message_reference") or {}
        return request.status == 200 and str(reference.get("message_id")) == message["id"]
    return check


@asynccontextmanager
async def running_bot(tmp_path: Path, *, worker: ModelWorker | None = None, reply=None,
                      heartbeat_interval_ms: int = 41_250, generation: dict | None = None,
                      in_dev_guild: bool = False, **discord_settings) -> AsyncIterator[Scene]:
    """A fake Discord with a small world, and our bot connected to it. Without `worker`, the
    model is a ScriptedBackend (echoing by default) inside a real ModelWorker."""
    # Answers post once, finished, unless a test is about streaming: `ask` then returns the whole answer.
    discord_settings.setdefault("stream_edit_interval", 0)
    scripted = None if worker else ScriptedBackend(reply) if reply else ScriptedBackend()
    model = worker or ModelWorker(scripted, timeout_s=10)
    try:
        async with FakeDiscord(heartbeat_interval_ms=heartbeat_interval_ms) as fake:
            world = build_world(fake)
            if in_dev_guild:
                discord_settings["dev_guild_id"] = world.guild.id
            settings = settings_for(tmp_path / "bot.db", **(generation or {}))
            settings = settings.with_overrides("discord", **discord_settings)
            store = await Store.open(settings.database.url)
            try:
                service = ChatService(store, model, settings)
                bot = make_client(ChatBot, intents=required_intents(), service=service, settings=settings.discord)
                async with running_client(fake, bot):
                    yield Scene(fake, world, store, service, scripted, bot)
            finally:
                await store.close()
    finally:
        if scripted is not None:
            model.close()
