"""Discord permission bits and the permission-resolution algorithm.

Only the bits the fake itself needs are named; any int is accepted elsewhere.
The resolution follows Discord's documented order: @everyone role, member roles,
ADMINISTRATOR short-circuit, then channel overwrites (@everyone, roles, member).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .models import FakeChannel, FakeGuild

CREATE_INSTANT_INVITE = 1 << 0
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
MANAGE_ROLES = 1 << 28
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
SEND_MESSAGES_IN_THREADS = 1 << 38

# Every bit Discord currently defines (and some headroom): what an
# administrator or the guild owner effectively has.
ALL = (1 << 53) - 1

# Roughly what a freshly created guild grants @everyone.
DEFAULT_EVERYONE = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)

# What the bot's managed role grants unless a test asks for something else.
DEFAULT_BOT = DEFAULT_EVERYONE | MANAGE_MESSAGES


def has_all(granted: int, required: int) -> bool:
    if granted & ADMINISTRATOR:
        return True
    return granted & required == required


def guild_permissions(guild: FakeGuild, user_id: int) -> int:
    """Guild-wide permissions of ``user_id`` (0 when not a member)."""
    if user_id == guild.owner_id:
        return ALL
    member = guild.members.get(user_id)
    if member is None:
        return 0
    perms = guild.everyone_role.permissions
    for role_id in member.role_ids:
        role = guild.roles.get(role_id)
        if role is not None:
            perms |= role.permissions
    if perms & ADMINISTRATOR:
        return ALL
    return perms


def channel_permissions(guild: FakeGuild, channel: FakeChannel, user_id: int) -> int:
    """Permissions of ``user_id`` in ``channel`` after applying overwrites."""
    perms = guild_permissions(guild, user_id)
    if perms == ALL:
        return ALL
    member = guild.members.get(user_id)
    role_ids = set(member.role_ids) if member else set()
    overwrites = channel.permission_overwrites

    perms = _apply(perms, (o for o in overwrites if o["id"] == guild.id))
    role_allow = role_deny = 0
    for o in overwrites:
        if o["type"] == 0 and o["id"] in role_ids:
            role_allow |= o["allow"]
            role_deny |= o["deny"]
    perms = (perms & ~role_deny) | role_allow
    perms = _apply(perms, (o for o in overwrites if o["type"] == 1 and o["id"] == user_id))
    return perms


def _apply(perms: int, overwrites: Iterable[dict]) -> int:
    for o in overwrites:
        perms = (perms & ~o["deny"]) | o["allow"]
    return perms
