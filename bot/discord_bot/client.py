"""The Discord client: connects, registers the slash commands, and hands events to DiscordEvents.

It opens nothing heavy itself: it is given a ready ChatService (database and
model already loaded), the same one the terminal chat uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from discord import app_commands

from ..config import ConfigError, DiscordSettings
from ..server_settings import NOT_IN_VIEW
from ..service import ChatService
from .commands import add_commands, log_command
from .events import DiscordEvents
from .posting import LONGEST_RATE_LIMIT_WAIT_S, POSTING_ERRORS, describe

log = logging.getLogger(__name__)

# What the invite link asks for; the README lists the same.
INVITE_PERMISSIONS = discord.Permissions(view_channel=True, send_messages=True,
                                         send_messages_in_threads=True, read_message_history=True)
INVITE_SCOPES = ("bot", "applications.commands")


def required_intents() -> discord.Intents:
    """Servers, their messages and DMs, and message content (a privileged intent: it must be
    switched on in the developer portal). Not the members intent: authors and mentions
    arrive with each message."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    return intents


class ChatBot(discord.Client):
    def __init__(self, service: ChatService, settings: DiscordSettings, *,
                 intents: discord.Intents | None = None, **options: Any):
        # A rate limit longer than a minute fails that request (logged) rather than holding its
        # channel's answers for as long as Discord says, which can be hours.
        options.setdefault("max_ratelimit_timeout", LONGEST_RATE_LIMIT_WAIT_S)
        super().__init__(intents=intents or required_intents(),
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.service = service
        share = share_of_the_bot(settings)
        self.events = DiscordEvents(service, settings, previews_per_second=settings.stream_edits_per_second * share,
                                    requests_per_second=REQUESTS_PER_SECOND * share)
        # Installed to servers only: were an operator to allow user installs, the admin commands
        # would otherwise be offered in servers the bot is not in, where it can do nothing.
        self.tree = app_commands.CommandTree(
            self, allowed_installs=app_commands.AppInstallationType(guild=True, user=False))
        add_commands(self.tree, service)
        # A thread takes its channel's persona and auto-reply: the settings ask which channel that is.
        service.servers.parent_of = self.thread_parent
        self._server_check: asyncio.Task | None = None  # after each READY (see on_ready)
        self._shards_to_check_next: list[set[int] | None] = []  # READYs that came during a check

    async def setup_hook(self) -> None:
        await self.sync_commands()

    async def sync_commands(self) -> None:
        """Register the slash commands with Discord: in the development server only when one
        is configured (they show up at once), else globally (Discord may take a while)."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        where = f"server {guild.id}" if guild else "all servers"
        try:
            synced = await self.tree.sync(guild=guild)
        except (discord.HTTPException, discord.RateLimited) as error:
            # Chatting works without the commands; the operator can fix this and restart.
            check = ("check that [discord] dev_guild_id is that server's id and that the bot was invited "
                     "there; " if guild else "")
            log.error("could not register the slash commands for %s: %s (%schatting works without them)",
                      where, error, check)
            return
        log.info("registered %d slash commands for %s", len(synced), where)

    async def close_gracefully(self, grace_s: float) -> None:
        """Stop taking new work, let the answers being written stop and be posted (with a note
        that they were cut short), then disconnect. The database is closed by the caller."""
        self.service.stop_answering()
        await self.events.wait_until_answered(grace_s)
        await self.close()

    async def close(self) -> None:
        # Ended here, not left to be cancelled later: a database read cut off after the database
        # closed would never finish.
        if self._server_check is not None and not self._server_check.done():
            self._server_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server_check
        await super().close()

    def my_shards(self) -> set[int] | None:
        """The shards this process runs; None: it is not sharded, every server is its own."""
        return None

    def _start_server_check(self, shards: set[int] | None) -> None:
        """After a new session: forget the servers, on `shards` (None: all), that removed the bot
        while it was not listening. One check at a time: shards whose session began during one
        (a gateway restart re-identifies several) are checked together right after it."""
        if self._server_check is not None and not self._server_check.done():
            self._shards_to_check_next.append(shards)
            return
        self._server_check = asyncio.create_task(self._check_servers_left_while_offline(shards))

    async def _check_servers_left_while_offline(self, shards: set[int] | None) -> None:
        while True:
            try:
                await self._forget_servers_left_while_offline(shards)
            except Exception:  # a task nobody awaits: its failure would otherwise go unseen
                log.exception("the check for servers that removed the bot while it was offline failed")
            if not self._shards_to_check_next:
                return
            waiting, self._shards_to_check_next = self._shards_to_check_next, []
            shards = None if None in waiting else set().union(*waiting)

    async def _forget_servers_left_while_offline(self, shards: set[int] | None) -> None:
        """Discord's list of the bot's servers: one that removed the bot while it was offline is not
        in it, and no event will say so any more. Only servers on `shards` are candidates (another
        process keeps the others), and only those stored before the list is read (one the bot
        joins meanwhile is in neither)."""
        candidates = {guild_id for guild_id in await self.service.stored_servers()
                      if on_shards(guild_id, shards, self.shard_count)}
        if not candidates:
            return
        try:
            member_of = {guild.id async for guild in self.fetch_guilds(limit=None)}
        except POSTING_ERRORS as error:
            log.info("could not list the bot's servers (to forget those that removed it while it was "
                     "offline): %s", describe(error))
            return
        connected_to = [guild.id for guild in self.guilds if on_shards(guild.id, shards, self.shard_count)]
        await self.events.servers_listed(candidates, member_of, connected_to)

    def invite_link(self) -> str:
        return discord.utils.oauth_url(self.application_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES)

    def thread_parent(self, guild_id: int | None, channel_id: int) -> int | None:
        """The channel a thread belongs to, from discord.py's cache (None: not a thread;
        NOT_IN_VIEW: a channel discord.py does not have, such as an archived thread). A few
        dictionary lookups: this runs for most messages."""
        guild = self.get_guild(guild_id) if guild_id is not None else None
        if guild is None:
            return None
        thread = guild.get_thread(channel_id)
        if thread is not None:
            return thread.parent_id
        return None if guild.get_channel(channel_id) is not None else NOT_IN_VIEW

    async def _channel_deleted(self, channel_id: int, guild_id: int) -> None:
        """Discord sends no MESSAGE_DELETE for a deleted channel's messages: its history and its
        settings are forgotten here, or they would stay (and be exported) for good."""
        count = await self.service.forget_channel(channel_id)
        log.info("channel %s of server %s was deleted: forgot its settings and %d stored message(s), "
                 "its threads' included", channel_id, guild_id, count)

    # discord.py calls these by name ----------------------------------------------------

    async def on_ready(self) -> None:
        if self.guilds:
            log.info("connected to Discord as %s, in %d server(s). Invite link: %s",
                     self.user, len(self.guilds), self.invite_link())
        else:
            log.info("connected to Discord as %s, in no server yet: open this link to add it to one: %s",
                     self.user, self.invite_link())
        # Each READY starts a new session: what happened before it (while offline, or between
        # sessions) is not sent. A resumed session gets the events it missed, and no READY.
        self._start_server_check(self.my_shards())

    async def on_app_command_completion(self, interaction: discord.Interaction, _command: Any) -> None:
        log_command(interaction, "ok")  # failures are logged where they are reported (commands.py)

    async def on_message(self, message: discord.Message) -> None:
        await self.events.message(message, self.user.id)

    async def on_raw_message_edit(self, event: discord.RawMessageUpdateEvent) -> None:
        await self.events.message_edited(event, self.user.id)

    async def on_raw_message_delete(self, event: discord.RawMessageDeleteEvent) -> None:
        await self.events.messages_deleted(event.channel_id, {event.message_id})

    async def on_raw_bulk_message_delete(self, event: discord.RawBulkMessageDeleteEvent) -> None:
        await self.events.messages_deleted(event.channel_id, event.message_ids)

    async def on_guild_remove(self, guild: discord.Guild) -> None:
        await self.events.guild_removed(guild)

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self._channel_deleted(channel.id, channel.guild.id)

    async def on_raw_thread_delete(self, event: discord.RawThreadDeleteEvent) -> None:
        # discord.py sends this for the threads it knows of a deleted channel, too.
        await self._channel_deleted(event.thread_id, event.guild_id)


def on_shards(guild_id: int, shards: set[int] | None, shard_count: int | None) -> bool:
    """Whether a server is on one of `shards` (None: every server is), by Discord's rule."""
    return shards is None or not shard_count or (guild_id >> 22) % shard_count in shards


class ShardedChatBot(ChatBot, discord.AutoShardedClient):
    """The same bot over some of Discord's shards, so that several processes share the servers.

    Ordering survives the split: Discord puts a server (so each of its channels) on shard
    (guild_id >> 22) % shard_count and DMs on shard 0, so every channel's events reach one
    process, which keeps them in order as the unsharded bot does. The processes share only the
    database, and each writes only its own channels' rows."""

    def my_shards(self) -> set[int] | None:
        return set(self.shard_ids) if self.shard_ids is not None else set(range(self.shard_count or 1))

    async def on_shard_ready(self, shard_id: int) -> None:
        # Once every shard is up (on_ready, which checks them all), a shard's own new session is
        # told only here: discord.py dispatches no second on_ready.
        if self.is_ready():
            self._start_server_check({shard_id})


def shard_options(settings: DiscordSettings) -> dict[str, Any]:
    """discord.py's shard_count / shard_ids from [discord]; {} when unsharded. Checked before
    the model loads, so a typo costs a second, not a minute."""
    if settings.shard_count == 0:
        if settings.shard_ids.strip():
            raise ConfigError("[discord] shard_ids needs shard_count (the number of shards in all)")
        return {}
    return {"shard_count": settings.shard_count,
            "shard_ids": parse_shard_ids(settings.shard_ids, settings.shard_count)}


def chat_bot_for(service: ChatService, settings: DiscordSettings, sharding: dict[str, Any]) -> ChatBot:
    """An unsharded ChatBot, or a ShardedChatBot over the shards in `sharding` (shard_options)."""
    return ShardedChatBot(service, settings, **sharding) if sharding else ChatBot(service, settings)


# Answers' requests a second, all channels together: under Discord's 50 for the whole bot, with
# room for slash commands' answers (which go apart, on each interaction's own webhook).
REQUESTS_PER_SECOND = 45.0


def share_of_the_bot(settings: DiscordSettings) -> float:
    """The share of the bot's request budget this process may use: Discord's limit is its token's,
    so a process running some of the shards takes their share ([discord] shard_ids)."""
    shards = parse_shard_ids(settings.shard_ids, settings.shard_count) if settings.shard_count else None
    return 1.0 if shards is None else len(shards) / settings.shard_count


def parse_shard_ids(text: str, shard_count: int) -> list[int] | None:
    """Read "0,2" as [0, 2]; empty is None (discord.py then runs every shard in this process)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        return None
    if not all(part.isdigit() and int(part) < shard_count for part in parts):
        raise ConfigError(f"[discord] shard_ids must be shard numbers from 0 to {shard_count - 1}, "
                          f"comma-separated (got {text!r})")
    return sorted({int(part) for part in parts})
