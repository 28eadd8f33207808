"""The fake's own state objects.

These are deliberately plain mutable dataclasses, not Discord payloads: the
fake keeps its truth here and renders Discord-shaped JSON from them on demand
(see ``payloads.py``), so a payload is always consistent with current state.
Objects compare by identity; use ``.id`` when you need the snowflake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

# Discord channel types we model.
GUILD_TEXT = 0
DM = 1
GUILD_CATEGORY = 4
PUBLIC_THREAD = 11


@dataclass(eq=False)
class FakeUser:
    id: int
    username: str
    global_name: Optional[str] = None
    bot: bool = False
    system: bool = False  # Discord's own account (official notices)
    discriminator: str = "0"  # Discord's post-2023 "pomelo" usernames have "0"
    avatar: Optional[str] = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    color: int = 0
    hoist: bool = False
    mentionable: bool = False
    managed: bool = False
    tags: Optional[dict] = None  # e.g. {"bot_id": "..."} for a bot's managed role

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild_id: int
    role_ids: List[int] = field(default_factory=list)  # never includes @everyone
    nick: Optional[str] = None
    joined_at: str = ""

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def mention(self) -> str:
        return self.user.mention


@dataclass(eq=False)
class FakeChannel:
    id: int
    type: int
    name: Optional[str] = None
    guild_id: Optional[int] = None
    position: int = 0
    topic: Optional[str] = None
    nsfw: bool = False
    parent_id: Optional[int] = None  # a thread's channel (or a channel's category)
    owner_id: Optional[int] = None  # threads: who started it
    archived: bool = False  # threads: archived (no longer in the server's active threads)
    locked: bool = False  # threads: only members with Manage Threads may post (or unarchive it)
    # [{"id": int, "type": 0 (role) | 1 (member), "allow": int, "deny": int}]
    permission_overwrites: List[dict] = field(default_factory=list)
    recipients: List[FakeUser] = field(default_factory=list)  # DMs only
    last_message_id: Optional[int] = None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    joined_at: str
    preferred_locale: str = "en-US"
    roles: Dict[int, FakeRole] = field(default_factory=dict)
    channels: Dict[int, FakeChannel] = field(default_factory=dict)
    members: Dict[int, FakeMember] = field(default_factory=dict)
    # False after remove_bot_from_guild(): the guild still exists, the bot just
    # is not in it (it disappears from READY and its REST routes answer 403).
    bot_is_member: bool = True

    @property
    def everyone_role(self) -> FakeRole:
        # Discord gives @everyone the guild's own ID.
        return self.roles[self.id]

    @property
    def text_channels(self) -> List[FakeChannel]:
        return [c for c in self.channels.values() if c.type == GUILD_TEXT]

    @property
    def threads(self) -> List[FakeChannel]:
        """Threads are kept with the channels (messages find them alike), but Discord lists them apart."""
        return [c for c in self.channels.values() if c.is_thread]


@dataclass(eq=False)
class FakeWebhook:
    """A channel's incoming webhook (a feed, a bridge): it posts as itself, not as a user."""

    id: int
    channel_id: int
    name: str
    avatar: Optional[str] = None


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake sent, plus what the bot answered to it."""

    id: int
    token: str
    payload: dict
    # Callback bodies (POST /interactions/.../callback), in arrival order.
    callbacks: List[dict] = field(default_factory=list)
    original_message_id: Optional[int] = None
    followup_message_ids: List[int] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)
