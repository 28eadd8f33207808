"""Slash commands: /persona set|show|reset, /reset, /autoreply on|off, /forget-me.

Each command is guarded twice. Default permissions tell Discord to hide it
from members without the permission; but a server's admins can change who may
use a command (Server Settings > Integrations), so a runtime check refuses
anyone without the permission all the same. Server-only commands are likewise
marked for servers only and refused at runtime in DMs. Answers are ephemeral: only
the person who asked sees them, and errors are plain sentences.
"""

# No `from __future__ import annotations` here: discord.py reads the parameter
# annotations at runtime, and the persona's length limit comes from the settings.

import logging
from typing import Awaitable, Callable

import discord
from discord import app_commands

from .. import messages
from ..service import Actor, ChatService, UserError
from .posting import answer_privately

log = logging.getLogger(__name__)

# Discord's own cap on a slash-command text option.
DISCORD_OPTION_MAX_LENGTH = 6000

PERMISSION_NAMES = {
    "manage_guild": "Manage Server",
    "manage_messages": "Manage Messages",
    "manage_channels": "Manage Channels",
}


class Refused(app_commands.CheckFailure):
    """The user may not run this command here. str() is the sentence to show them."""


def check_permitted(interaction: discord.Interaction, permission: str, *, server_only: bool) -> bool:
    """The runtime guard: `permission` (a discord.Permissions attribute) in this channel.

    In a DM there are no permissions: a command that is not server-only works
    there, on the user's own conversation with the bot.
    """
    if interaction.guild_id is None:
        if server_only:
            raise Refused(messages.SERVER_ONLY)
        return True
    if not getattr(interaction.permissions, permission):
        raise Refused(messages.NEEDS_PERMISSION.format(permission=PERMISSION_NAMES[permission]))
    return True


class GuardedGroup(app_commands.Group):
    """Server-only subcommands for members with one permission, guarded twice.
    (Discord reads default permissions and contexts from the group, not its subcommands.)"""

    def __init__(self, name: str, description: str, permission: str):
        super().__init__(name=name, description=description, guild_only=True,
                         allowed_contexts=app_commands.AppCommandContext(guild=True),
                         default_permissions=discord.Permissions(**{permission: True}))
        self.permission = permission

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return check_permitted(interaction, self.permission, server_only=True)


def guarded(permission: str) -> Callable:
    """Both guards for a top-level command that also works in DMs."""

    def decorate(callback: Callable) -> Callable:
        callback = app_commands.check(
            lambda interaction: check_permitted(interaction, permission, server_only=False))(callback)
        return app_commands.default_permissions(**{permission: True})(callback)

    return decorate


def add_commands(tree: app_commands.CommandTree, service: ChatService) -> None:
    tree.add_command(persona_commands(service))
    tree.add_command(reset_command(service))
    tree.add_command(autoreply_commands(service))
    tree.add_command(forget_me_command(service))
    tree.error(report_command_error)


def persona_commands(service: ChatService) -> app_commands.Group:
    limit = service.settings.history.max_persona_chars
    group = GuardedGroup("persona", "The bot's persona (its instructions) in this server", "manage_guild")
    persona_text = app_commands.Range[str, 1, min(limit, DISCORD_OPTION_MAX_LENGTH)]

    @group.command(name="set", description=f"Give the bot a new persona in this server (up to {limit:,} characters)")
    @app_commands.describe(text=f"How the bot should behave, up to {limit:,} characters")
    async def persona_set(interaction: discord.Interaction, text: persona_text) -> None:
        await answer(interaction, lambda: service.set_persona(interaction.guild_id, actor(interaction), text))

    @group.command(name="show", description="Show the persona the bot uses in this server")
    async def persona_show(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.show_persona(interaction.guild_id))

    @group.command(name="reset", description="Go back to the default persona in this server")
    async def persona_reset(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.reset_persona(interaction.guild_id, actor(interaction)))

    return group


def reset_command(service: ChatService) -> app_commands.Command:
    @app_commands.command(name="reset", description="Make the bot forget this channel's conversation")
    @guarded("manage_messages")
    async def reset(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.reset_channel(
            interaction.guild_id, interaction.channel_id, actor(interaction)))

    return reset


def autoreply_commands(service: ChatService) -> app_commands.Group:
    group = GuardedGroup("autoreply", "Whether the bot answers every message in this channel", "manage_channels")

    def switch(enabled: bool) -> Callable[[discord.Interaction], Awaitable[None]]:
        async def callback(interaction: discord.Interaction) -> None:
            await answer(interaction, lambda: service.set_auto_reply(
                interaction.guild_id, interaction.channel_id, actor(interaction), enabled))
        return callback

    group.command(name="on", description="Answer every message in this channel")(switch(True))
    group.command(name="off", description="Answer only mentions and replies in this channel")(switch(False))
    return group


def forget_me_command(service: ChatService) -> app_commands.Command:
    """Anyone, anywhere (DMs too), about themselves only: no permission is needed."""

    @app_commands.command(name="forget-me", description="Erase everything the bot stored of what you wrote")
    @app_commands.allowed_contexts(guilds=True, dms=True)
    async def forget_me(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.forget_user(
            interaction.user.id, interaction.guild_id, interaction.channel_id))

    return forget_me


async def answer(interaction: discord.Interaction, work: Callable[[], Awaitable[str]]) -> None:
    """Acknowledge at once (Discord allows 3 seconds; /reset may wait for an answer in
    progress), then show the outcome to the user alone."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    await answer_privately(interaction, await work())


async def report_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Every failed command ends with a sentence for its user, and a log line when it is a bug."""
    original = getattr(error, "original", error)
    if isinstance(original, (Refused, UserError)):
        text = str(original)
    else:
        log.error("the command %s failed", getattr(interaction.command, "qualified_name", "?"), exc_info=error)
        text = messages.COMMAND_FAILED
    try:
        await answer_privately(interaction, text)
    except discord.HTTPException:
        log.warning("could not tell the user that a command failed", exc_info=True)


def actor(interaction: discord.Interaction) -> Actor:
    return Actor(id=interaction.user.id, name=interaction.user.name)
