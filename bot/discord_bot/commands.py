"""Slash commands: /persona set|show|reset|adapter, /reset, /autoreply on|off, /forget-me, /export,
/optout, /optin, /status.

Each command is guarded twice. Default permissions tell Discord to hide it
from members without the permission; but a server's admins can change who may
use a command (Server Settings > Integrations), so a runtime check refuses
anyone without the permission all the same. Server-only commands are likewise
marked for servers only and refused at runtime in DMs. /persona is the exception to the first
guard: its server scope needs Manage Server, its channel scope Manage Channels, which Discord's
default permissions (all of a set, never one of them) cannot say, so Discord shows it to every
member and only the runtime check guards it. Answers are ephemeral: only
the person who asked sees them, and errors are plain sentences.
"""

# No `from __future__ import annotations` here: discord.py reads the parameter
# annotations at runtime, and the persona's length limit comes from the settings.

import gzip
import io
import logging
import math
from typing import Awaitable, Callable

import discord
from discord import app_commands

from .. import messages
from ..export import parse_day
from ..server_settings import CHANNEL, SERVER
from ..service import Actor, ChatService, UserError
from ..telemetry import log_event
from .events import LOCKED_THREAD, lacking_to_answer
from .posting import NO_PINGS, answer_privately

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


def check_permitted(interaction: discord.Interaction, *permissions: str, server_only: bool) -> bool:
    """The runtime guard: any one of `permissions` (discord.Permissions attributes) in this
    channel; with none named, any member.

    In a DM there are no permissions: a command that is not server-only works
    there, on the user's own conversation with the bot.
    """
    if interaction.guild_id is None:
        if server_only:
            raise Refused(messages.SERVER_ONLY)
        return True
    granted = interaction.permissions
    # Discord's computed permissions give an administrator every bit, but Administrator alone
    # is what Discord documents as implying them all: count it, whatever sent the bits.
    if permissions and not granted.administrator and not any(getattr(granted, p) for p in permissions):
        raise Refused(messages.NEEDS_PERMISSION.format(
            permission=" or ".join(PERMISSION_NAMES[permission] for permission in permissions)))
    return True


class GuardedGroup(app_commands.Group):
    """Server-only subcommands for members with one permission, guarded twice.
    (Discord reads default permissions and contexts from the group, not its subcommands.)
    With permission None, Discord shows the group to every member and each subcommand checks
    its own permission at runtime (Discord's default permissions cannot say "this one or that")."""

    def __init__(self, name: str, description: str, permission: str | None):
        super().__init__(name=name, description=description, guild_only=True,
                         allowed_contexts=app_commands.AppCommandContext(guild=True),
                         default_permissions=discord.Permissions(**{permission: True}) if permission else None)
        self.permission = permission

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return check_permitted(interaction, *filter(None, [self.permission]), server_only=True)


def guarded(permission: str, *, server_only: bool = False) -> Callable:
    """Both guards for a top-level command (which works in DMs too unless server_only)."""

    def decorate(callback: Callable) -> Callable:
        callback = app_commands.check(
            lambda interaction: check_permitted(interaction, permission, server_only=server_only))(callback)
        if server_only:
            callback = app_commands.guild_only()(callback)
        return app_commands.default_permissions(**{permission: True})(callback)

    return decorate


def add_commands(tree: app_commands.CommandTree, service: ChatService) -> None:
    tree.add_command(persona_commands(service))
    tree.add_command(reset_command(service))
    tree.add_command(autoreply_commands(service))
    tree.add_command(forget_me_command(service))
    tree.add_command(export_command(service))
    for command in opt_out_commands(service):
        tree.add_command(command)
    tree.add_command(status_command(service))
    tree.error(report_command_error)


# A persona's scope: who may change it.
SCOPE_PERMISSIONS = {SERVER: "manage_guild", CHANNEL: "manage_channels"}
SCOPE_CHOICES = [app_commands.Choice(name="this server", value=SERVER),
                 app_commands.Choice(name="this channel (overrides the server's persona here)", value=CHANNEL)]


def persona_commands(service: ChatService) -> app_commands.Group:
    """The server scope needs Manage Server, the channel scope Manage Channels (in that channel),
    /persona show either one, /persona adapter Manage Server."""
    # Discord takes at most 6,000 characters in a text option, whatever max_persona_chars says.
    limit = min(service.servers.persona_limit, DISCORD_OPTION_MAX_LENGTH)
    group = GuardedGroup("persona", "The bot's persona (its instructions) in this server or channel", None)
    persona_text = app_commands.Range[str, 1, limit]

    def check_scope(interaction: discord.Interaction, scope: str) -> str:
        scope = scope if scope in SCOPE_PERMISSIONS else SERVER
        check_permitted(interaction, SCOPE_PERMISSIONS[scope], server_only=True)
        return scope

    @group.command(name="set", description=f"Give the bot a new persona in this server or channel "
                                           f"(up to {limit:,} characters)")
    @app_commands.describe(text=f"How the bot should behave, up to {limit:,} characters",
                           scope="This server (default; needs Manage Server) or this channel (needs Manage Channels)")
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def persona_set(interaction: discord.Interaction, text: persona_text, scope: str = SERVER) -> None:
        scope = check_scope(interaction, scope)
        await answer(interaction, lambda: service.servers.set_persona(
            interaction.guild_id, actor(interaction), text, scope=scope, channel_id=interaction.channel_id))

    @group.command(name="show", description="Show the persona the bot uses in this channel, and where it comes from")
    async def persona_show(interaction: discord.Interaction) -> None:
        check_permitted(interaction, *SCOPE_PERMISSIONS.values(), server_only=True)
        await answer(interaction, lambda: service.servers.show_persona(interaction.guild_id, interaction.channel_id))

    @group.command(name="reset", description="Go back to the default persona in this server, or to the server's "
                                             "in this channel")
    @app_commands.describe(scope="This server (default; needs Manage Server) or this channel (needs Manage Channels)")
    @app_commands.choices(scope=SCOPE_CHOICES)
    async def persona_reset(interaction: discord.Interaction, scope: str = SERVER) -> None:
        scope = check_scope(interaction, scope)
        await answer(interaction, lambda: service.servers.reset_persona(
            interaction.guild_id, actor(interaction), scope=scope, channel_id=interaction.channel_id))

    @group.command(name="adapter", description="Pick the fine-tuned model (LoRA adapter) the bot uses in this server")
    @app_commands.describe(name='One of the bot\'s adapters, "default" or "base" (no adapter)')
    async def persona_adapter(interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]) -> None:
        check_permitted(interaction, "manage_guild", server_only=True)
        await answer(interaction, lambda: service.servers.set_adapter(interaction.guild_id, actor(interaction), name))

    @persona_adapter.autocomplete("name")
    async def adapter_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        # discord.py runs no command checks for autocomplete, and /persona is shown to every
        # member: the operator's adapter names are listed only to those who may pick one.
        try:
            check_permitted(interaction, "manage_guild", server_only=True)
        except Refused:
            return []
        return adapter_choices(service, current)

    @group.command(name="thinking", description="Let the bot think before it answers in this server "
                                                "(its thoughts are never posted)")
    @app_commands.describe(mode="on: think first (slower, sometimes better); off: answer at once")
    @app_commands.choices(mode=[app_commands.Choice(name="on", value="on"), app_commands.Choice(name="off", value="off")])
    async def persona_thinking(interaction: discord.Interaction, mode: str) -> None:
        check_permitted(interaction, "manage_guild", server_only=True)
        await answer(interaction, lambda: service.servers.set_thinking(interaction.guild_id, actor(interaction),
                                                                      mode == "on"))

    return group


CHOICE_LIMIT = 100  # characters in an autocomplete choice's name and value


def adapter_choices(service: ChatService, current: str) -> list[app_commands.Choice[str]]:
    """What /persona adapter offers as the admin types: the operator's adapters only."""
    # Discord refuses the whole list if one choice is over 100 characters: such a folder name
    # is left out here (it can still be typed in full).
    names = [n for n in service.servers.adapter_choices()
             if current.strip().lower() in n.lower() and len(n) <= CHOICE_LIMIT]
    return [app_commands.Choice(name=n, value=n) for n in names[:25]]  # Discord shows at most 25


def reset_command(service: ChatService) -> app_commands.Command:
    @app_commands.command(name="reset", description="Make the bot forget this channel's conversation")
    @app_commands.allowed_contexts(guilds=True, dms=True)  # in a DM, anyone resets their own conversation
    @guarded("manage_messages")
    async def reset(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.reset_channel(
            interaction.guild_id, interaction.channel_id, actor(interaction)))

    return reset


def autoreply_commands(service: ChatService) -> app_commands.Group:
    group = GuardedGroup("autoreply", "Whether the bot answers every message in this channel", "manage_channels")

    def switch(enabled: bool) -> Callable[[discord.Interaction], Awaitable[None]]:
        async def callback(interaction: discord.Interaction) -> None:
            async def set_it() -> str:
                done = await service.servers.set_auto_reply(interaction.guild_id, interaction.channel_id,
                                                            actor(interaction), enabled)
                return done + (cannot_answer_here(interaction) if enabled else "")
            await answer(interaction, set_it)
        return callback

    group.command(name="on", description="Answer every message in this channel")(switch(True))
    group.command(name="off", description="Answer only mentions and replies in this channel")(switch(False))
    return group


def cannot_answer_here(interaction: discord.Interaction) -> str:
    """A command's answer needs no channel permission, but the bot's answers in the channel do:
    switching auto-reply on where the bot cannot post would otherwise be met with silence."""
    channel = interaction.channel
    lacking = lacking_to_answer(interaction.app_permissions, channel)
    if lacking is None:
        return ""
    if lacking == LOCKED_THREAD:
        return " " + messages.CANNOT_ANSWER_LOCKED
    where = messages.IN_THREADS_CHANNEL if isinstance(channel, discord.Thread) else messages.IN_THIS_CHANNEL
    return " " + messages.CANNOT_ANSWER_HERE.format(permission=lacking, where=where)


def forget_me_command(service: ChatService) -> app_commands.Command:
    """Anyone, anywhere (DMs too), about themselves only: no permission is needed."""

    @app_commands.command(name="forget-me", description="Erase everything the bot stored of what you wrote")
    @app_commands.allowed_contexts(guilds=True, dms=True)
    async def forget_me(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.privacy.forget_user(
            interaction.user.id, interaction.guild_id, interaction.channel_id))

    return forget_me


class ChatChannel(app_commands.Transformer):
    """A channel option for where people chat with the bot: Discord's picker offers text,
    announcement, voice and stage channels and threads, not categories or forums, which hold no
    messages. The channel is taken as Discord sent it (id, name), not looked up in discord.py's
    cache: an archived thread is not there, and its conversations can be exported all the same."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.channel

    @property
    def channel_types(self) -> list[discord.ChannelType]:
        kinds = discord.ChannelType
        return [kinds.text, kinds.news, kinds.voice, kinds.stage_voice,
                kinds.public_thread, kinds.private_thread, kinds.news_thread]

    async def transform(self, interaction: discord.Interaction, value):
        return value  # an AppCommandChannel or AppCommandThread: its id and name are what is used


def export_command(service: ChatService) -> app_commands.Command:
    @app_commands.command(name="export", description="Download this server's conversations with the bot "
                                                     "as a training set (JSONL, pseudonymised)")
    @app_commands.describe(channel="Only this channel (default: every channel)",
                           since="First day, YYYY-MM-DD (UTC)", until="Last day, YYYY-MM-DD (UTC)")
    @guarded("manage_guild", server_only=True)
    async def export(interaction: discord.Interaction,
                     channel: app_commands.Transform[discord.abc.Snowflake, ChatChannel] | None = None,
                     since: str | None = None, until: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            first, last = (parse_day(since) if since else None), (parse_day(until) if until else None)
        except ValueError as problem:
            raise UserError(messages.EXPORT_BAD_DATE.format(problem=problem)) from None
        made = await service.privacy.export_server(interaction.guild_id, actor(interaction),
                                           channel_id=channel.id if channel else None, since=first, until=last)
        if not made.summary.conversations:
            scope = f" in #{channel.name}" if channel else ""
            await answer_privately(interaction, messages.EXPORT_EMPTY.format(scope=scope))
            return
        await send_file_privately(interaction, made.data, f"export-{interaction.guild_id}.jsonl",
                                  made.summary.describe())

    return export


async def send_file_privately(interaction: discord.Interaction, data: bytes, filename: str, summary: str) -> None:
    """Attach the export to an ephemeral answer; gzip it past Discord's size limit for this
    interaction, and say so plainly when even that is too big."""
    limit = interaction.filesize_limit
    if len(data) > limit:
        data, filename = gzip.compress(data), filename + ".gz"
    if len(data) > limit:
        await answer_privately(interaction, messages.EXPORT_TOO_BIG.format(size=len(data), limit=limit))
        return
    text = messages.EXPORT_READY.format(summary=summary, filename=filename)
    await interaction.followup.send(text, file=discord.File(io.BytesIO(data), filename=filename),
                                    ephemeral=True, allowed_mentions=NO_PINGS)


def opt_out_commands(service: ChatService) -> list[app_commands.Command]:
    """Anyone, anywhere, about themselves only, like /forget-me."""

    @app_commands.command(name="optout", description="Keep what you write out of training-data exports")
    @app_commands.allowed_contexts(guilds=True, dms=True)
    async def optout(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.privacy.opt_out_of_export(interaction.user.id))

    @app_commands.command(name="optin", description="Allow what you write in training-data exports again")
    @app_commands.allowed_contexts(guilds=True, dms=True)
    async def optin(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.privacy.opt_in_to_export(interaction.user.id))

    return [optout, optin]


def status_command(service: ChatService) -> app_commands.Command:
    @app_commands.command(name="status", description="The bot's model, backend, queue and uptime")
    @guarded("manage_guild", server_only=True)
    async def status(interaction: discord.Interaction) -> None:
        await answer(interaction, lambda: service.status(discord_status_lines(interaction)))

    return status


def discord_status_lines(interaction: discord.Interaction) -> tuple[str, ...]:
    """What Discord adds to /status: this server's shard, the servers and the gateway latency."""
    client = interaction.client
    guild = interaction.guild
    if client.shard_count and guild is not None:
        shard = messages.STATUS_SHARD.format(shard=guild.shard_id, count=client.shard_count)
    else:
        shard = messages.STATUS_UNSHARDED
    lines = [shard, messages.STATUS_SERVERS.format(count=len(client.guilds))]
    if math.isfinite(client.latency):  # not measured until the first heartbeat is acknowledged
        lines.append(messages.STATUS_LATENCY.format(ms=client.latency * 1000))
    return tuple(lines)


async def answer(interaction: discord.Interaction, work: Callable[[], Awaitable[str]]) -> None:
    """Acknowledge at once (Discord allows 3 seconds; /reset may wait for an answer in
    progress), then show the outcome to the user alone."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    await answer_privately(interaction, await work())


async def report_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Every failed command ends with a sentence for its user, and a log line when it is a bug."""
    original = getattr(error, "original", error)
    if isinstance(original, (Refused, UserError)):
        log_command(interaction, "refused")
        text = str(original)
    else:
        log_command(interaction, "failed", logging.ERROR, exc_info=error)
        text = messages.COMMAND_FAILED
    try:
        await answer_privately(interaction, text)
    except (discord.HTTPException, discord.RateLimited):
        log.warning("could not tell the user that a command failed", exc_info=True)


def log_command(interaction: discord.Interaction, outcome: str, level: int = logging.INFO, **extra) -> None:
    """One line per command run: which, who, where, how it went, and how long since Discord sent it.
    Never its options (a persona's text, say)."""
    elapsed = discord.utils.utcnow() - interaction.created_at
    log_event(log, "command", level, command=getattr(interaction.command, "qualified_name", "?"),
              guild=interaction.guild_id, channel=interaction.channel_id, user=interaction.user.id,
              outcome=outcome, ms=round(elapsed.total_seconds() * 1000), **extra)


def actor(interaction: discord.Interaction) -> Actor:
    return Actor(id=interaction.user.id, name=interaction.user.name)
