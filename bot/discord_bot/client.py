"""The Discord client: connects, registers the slash commands, and hands events to DiscordEvents.

It opens nothing heavy itself: it is given a ready ChatService (database and
model already loaded), the same one the terminal chat uses.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from ..config import DiscordSettings
from ..service import ChatService
from .commands import add_commands
from .events import DiscordEvents

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
        super().__init__(intents=intents or required_intents(),
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.service = service
        self.events = DiscordEvents(service, settings)
        self.tree = app_commands.CommandTree(self)
        add_commands(self.tree, service)

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
        except discord.HTTPException as error:
            # Chatting works without the commands; the operator can fix this and restart.
            log.error("could not register the slash commands for %s: %s", where, error)
            return
        log.info("registered %d slash commands for %s", len(synced), where)

    async def close_gracefully(self, grace_s: float) -> None:
        """Stop taking new work, let the answers being written stop and be posted (with a note
        that they were cut short), then disconnect. The database is closed by the caller."""
        self.service.stop_answering()
        await self.events.wait_until_answered(grace_s)
        await self.close()

    def invite_link(self) -> str:
        return discord.utils.oauth_url(self.application_id, permissions=INVITE_PERMISSIONS, scopes=INVITE_SCOPES)

    # discord.py calls these by name ----------------------------------------------------

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s, in %d server(s). Invite link: %s",
                 self.user, len(self.guilds), self.invite_link())

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
