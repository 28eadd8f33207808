"""The fake's world: users, guilds, roles, channels, members, DMs, messages,
attachments and registered application commands.

Pure bookkeeping with no networking or asyncio; ``FakeDiscord`` wraps it and
turns changes into Gateway events.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

from . import permissions as perms
from .ids import SnowflakeGenerator, now_iso
from .models import DM, GUILD_TEXT, PUBLIC_THREAD, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, FakeWebhook

UserLike = Union[FakeUser, FakeMember]


def as_user(value: UserLike) -> FakeUser:
    return value.user if isinstance(value, FakeMember) else value


class LookupFailed(LookupError):
    """Raised for unknown IDs; REST handlers turn it into Discord's 404 codes."""


class FakeState:
    def __init__(self, *, bot_name: str) -> None:
        self.snowflakes = SnowflakeGenerator()
        self.users: Dict[int, FakeUser] = {}
        self.guilds: Dict[int, FakeGuild] = {}
        self.dm_channels: Dict[int, FakeChannel] = {}  # by channel id
        self.messages: Dict[int, dict] = {}  # message id -> REST-shaped message
        self.attachment_files: Dict[int, bytes] = {}  # attachment id -> content
        self.webhooks: Dict[int, FakeWebhook] = {}
        self.global_commands: List[dict] = []
        self.guild_commands: Dict[int, List[dict]] = {}
        # IDs for commands invoked without ever being synced: stable per name.
        self.unsynced_command_ids: Dict[str, int] = {}

        self.bot = self.create_user(bot_name, bot=True)
        # Bots created in the developer portal share the application's ID.
        self.application_id = self.bot.id
        self.app_owner = self.create_user(f"{bot_name}-owner")

    def new_id(self) -> int:
        return self.snowflakes.next()

    # ----------------------------------------------------------------- users
    def create_user(self, name: str, *, bot: bool = False, global_name: Optional[str] = None) -> FakeUser:
        u = FakeUser(id=self.new_id(), username=name, global_name=global_name, bot=bot)
        self.users[u.id] = u
        return u

    def get_user(self, user_id: int) -> FakeUser:
        try:
            return self.users[user_id]
        except KeyError:
            raise LookupFailed(f"unknown user {user_id}") from None

    # ---------------------------------------------------------------- guilds
    def create_guild(
        self,
        name: str,
        *,
        owner: Optional[FakeUser],
        everyone_permissions: int,
        bot_permissions: int,
    ) -> FakeGuild:
        owner = owner or self.create_user(f"{name}-owner")
        g = FakeGuild(id=self.new_id(), name=name, owner_id=owner.id, joined_at=now_iso())
        self.guilds[g.id] = g
        g.roles[g.id] = FakeRole(id=g.id, guild_id=g.id, name="@everyone", permissions=everyone_permissions)
        self.create_member(g, owner)
        # Inviting a bot creates a managed role carrying its requested permissions.
        bot_role = self.create_role(
            g, self.bot.username, bot_permissions, managed=True, tags={"bot_id": str(self.bot.id)}
        )
        self.create_member(g, self.bot, roles=[bot_role])
        return g

    def get_guild(self, guild_id: int) -> FakeGuild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise LookupFailed(f"unknown guild {guild_id}") from None

    def bot_guilds(self) -> List[FakeGuild]:
        return [g for g in self.guilds.values() if g.bot_is_member]

    def create_role(
        self,
        guild: FakeGuild,
        name: str,
        permissions: int = 0,
        *,
        color: int = 0,
        managed: bool = False,
        mentionable: bool = False,
        tags: Optional[dict] = None,
    ) -> FakeRole:
        r = FakeRole(
            id=self.new_id(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),  # newest on top, @everyone stays at 0
            color=color,
            managed=managed,
            mentionable=mentionable,
            tags=tags,
        )
        guild.roles[r.id] = r
        return r

    def create_text_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        topic: Optional[str] = None,
        nsfw: bool = False,
        overwrites: Iterable[dict] = (),
    ) -> FakeChannel:
        c = FakeChannel(
            id=self.new_id(),
            type=GUILD_TEXT,
            name=name,
            guild_id=guild.id,
            position=len(guild.channels),
            topic=topic,
            nsfw=nsfw,
            permission_overwrites=[dict(o) for o in overwrites],
        )
        guild.channels[c.id] = c
        return c

    def create_thread(self, parent: FakeChannel, name: str, *, owner: FakeUser,
                      from_message: Optional[int] = None) -> FakeChannel:
        """A public thread in ``parent``. Kept among the guild's channels, so messages and REST
        routes find it like any channel; Discord lists it apart (GUILD_CREATE ``threads``). One
        started from a message has that message's id, as on Discord."""
        guild = self.get_guild(parent.guild_id)
        thread = FakeChannel(id=from_message or self.new_id(), type=PUBLIC_THREAD, name=name, guild_id=guild.id,
                             parent_id=parent.id, owner_id=owner.id)
        guild.channels[thread.id] = thread
        return thread

    def remove_channel(self, channel: FakeChannel) -> None:
        """Delete a guild channel with its threads and every message in them (Discord deletes them
        too, without a MESSAGE_DELETE for each)."""
        guild = self.get_guild(channel.guild_id)
        gone = {channel.id} | {c.id for c in guild.threads if c.parent_id == channel.id}
        for channel_id in gone:
            del guild.channels[channel_id]
        for message_id in [m for m, message in self.messages.items() if int(message["channel_id"]) in gone]:
            del self.messages[message_id]

    def create_webhook(self, channel: FakeChannel, name: str) -> FakeWebhook:
        webhook = FakeWebhook(id=self.new_id(), channel_id=channel.id, name=name)
        self.webhooks[webhook.id] = webhook
        return webhook

    def create_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        permissions: Optional[int] = None,
        roles: Iterable[FakeRole] = (),
        nick: Optional[str] = None,
    ) -> FakeMember:
        role_ids = [r.id for r in roles]
        if permissions is not None:
            # Permissions live on roles in Discord, so grant them through a
            # personal role; discord.py then computes the same guild_permissions.
            role_ids.append(self.create_role(guild, f"perms:{user.username}", permissions).id)
        m = FakeMember(user=user, guild_id=guild.id, role_ids=role_ids, nick=nick, joined_at=now_iso())
        guild.members[user.id] = m
        return m

    def get_member(self, guild: FakeGuild, user_id: int) -> FakeMember:
        try:
            return guild.members[user_id]
        except KeyError:
            raise LookupFailed(f"user {user_id} is not a member of guild {guild.id}") from None

    # -------------------------------------------------------------- channels
    def get_or_create_dm(self, user: FakeUser) -> FakeChannel:
        for c in self.dm_channels.values():
            if c.recipients and c.recipients[0].id == user.id:
                return c
        c = FakeChannel(id=self.new_id(), type=DM, recipients=[user])
        self.dm_channels[c.id] = c
        return c

    def find_channel(self, channel_id: int) -> Tuple[FakeChannel, Optional[FakeGuild]]:
        if channel_id in self.dm_channels:
            return self.dm_channels[channel_id], None
        for g in self.guilds.values():
            if channel_id in g.channels:
                return g.channels[channel_id], g
        raise LookupFailed(f"unknown channel {channel_id}")

    def guild_of(self, channel: FakeChannel) -> Optional[FakeGuild]:
        return None if channel.guild_id is None else self.guilds[channel.guild_id]

    def permissions_in(self, channel: FakeChannel, user_id: int) -> int:
        """Effective permissions of a user in a channel (DMs: everything)."""
        guild = self.guild_of(channel)
        if guild is None:
            return perms.ALL
        # A thread has no overwrites of its own: its channel's apply in it.
        source = guild.channels[channel.parent_id] if channel.is_thread else channel
        return perms.channel_permissions(guild, source, user_id)

    # -------------------------------------------------------------- messages
    def store_message(self, message: dict) -> dict:
        self.messages[int(message["id"])] = message
        channel, _ = self.find_channel(int(message["channel_id"]))
        channel.last_message_id = max(channel.last_message_id or 0, int(message["id"]))
        return message

    def get_message(self, channel_id: int, message_id: int) -> dict:
        message = self.messages.get(message_id)
        if message is None or int(message["channel_id"]) != channel_id:
            raise LookupFailed(f"unknown message {message_id}")
        return message

    def channel_history(self, channel_id: int) -> List[dict]:
        """Messages of a channel, oldest first."""
        found = [m for m in self.messages.values() if int(m["channel_id"]) == channel_id]
        return sorted(found, key=lambda m: int(m["id"]))

    # -------------------------------------------------------------- commands
    def commands_for(self, guild_id: Optional[int]) -> List[dict]:
        if guild_id is None:
            return self.global_commands
        return self.guild_commands.setdefault(guild_id, [])

    def find_command(self, name: str, guild_id: Optional[int], type_: int = 1) -> Optional[dict]:
        """Guild commands shadow global ones, as in Discord's client."""
        scopes = ([guild_id] if guild_id is not None else []) + [None]
        for scope in scopes:
            for cmd in self.commands_for(scope):
                if cmd["name"] == name and cmd.get("type", 1) == type_:
                    return cmd
        return None
