"""Render the fake's state as Discord API JSON objects.

Shapes follow Discord's documented object structures (User, Guild Member,
Role, Channel, Guild, Message, Attachment, Application). IDs and permission
bitsets are strings, as on the wire. Optional keys that discord.py reads with
``data[...]`` (not ``.get``) must always be present; those are commented.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

from .ids import snowflake_time_iso
from .models import DM, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, FakeWebhook

GUILD_MEMBERS_LIMITED, GATEWAY_MESSAGE_CONTENT_LIMITED, APPLICATION_COMMAND_BADGE = 1 << 15, 1 << 19, 1 << 23
DEFAULT_APPLICATION_FLAGS = GUILD_MEMBERS_LIMITED | GATEWAY_MESSAGE_CONTENT_LIMITED | APPLICATION_COMMAND_BADGE
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


def user(u: FakeUser) -> dict:
    return {
        "id": str(u.id),
        "username": u.username,
        "discriminator": u.discriminator,  # required by discord.py
        "global_name": u.global_name,
        "avatar": u.avatar,  # required by discord.py
        "bot": u.bot,
        "system": u.system,
        "banner": None,
        "accent_color": None,
        "public_flags": 0,
        "avatar_decoration_data": None,
        "collectibles": None,
        "primary_guild": None,
    }


def webhook_author(w: FakeWebhook) -> dict:
    """A webhook message's ``author``: Discord documents only the webhook's id, username and
    avatar there (no ``bot`` flag); discord.py also requires ``discriminator``."""
    return {"id": str(w.id), "username": w.name, "avatar": w.avatar, "discriminator": "0000"}


def current_user(u: FakeUser) -> dict:
    """``GET /users/@me``: the user object plus private fields."""
    return {**user(u), "verified": True, "mfa_enabled": False, "locale": "en-US", "flags": 0, "email": None}


def member(m: FakeMember, *, with_user: bool = True, permissions: Optional[int] = None) -> dict:
    """Guild member. ``with_user=False`` gives the partial form used inside
    MESSAGE_CREATE (``member``) and interaction ``resolved.members``;
    ``permissions`` is only present in interaction payloads."""
    data = {
        "nick": m.nick,
        "avatar": None,
        "banner": None,
        "roles": [str(r) for r in m.role_ids],  # required by discord.py
        "joined_at": m.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,  # required by discord.py
        "pending": False,
        "communication_disabled_until": None,
        "avatar_decoration_data": None,
    }
    if with_user:
        data["user"] = user(m.user)
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def role(r: FakeRole) -> dict:
    data = {
        "id": str(r.id),
        "name": r.name,
        "color": r.color,
        "colors": {"primary_color": r.color, "secondary_color": None, "tertiary_color": None},
        "hoist": r.hoist,
        "icon": None,
        "unicode_emoji": None,
        "position": r.position,
        "permissions": str(r.permissions),
        "managed": r.managed,
        "mentionable": r.mentionable,
        "flags": 0,
    }
    if r.tags is not None:
        data["tags"] = r.tags
    return data


def channel(c: FakeChannel, *, permissions: Optional[int] = None) -> dict:
    """Channel object; ``permissions`` is added in interaction payloads."""
    if c.is_thread:
        data = thread(c)
    elif c.type == DM:
        data = {
            "id": str(c.id),
            "type": DM,
            "last_message_id": _opt_id(c.last_message_id),
            "recipients": [user(u) for u in c.recipients],
            "flags": 0,
        }
    else:
        data = {
            "id": str(c.id),
            "type": c.type,
            "guild_id": str(c.guild_id),
            "name": c.name,
            "position": c.position,  # required by discord.py
            "permission_overwrites": [_overwrite(o) for o in c.permission_overwrites],
            "topic": c.topic,
            "nsfw": c.nsfw,
            "last_message_id": _opt_id(c.last_message_id),
            "rate_limit_per_user": 0,
            "parent_id": _opt_id(c.parent_id),
            "last_pin_timestamp": None,
            "default_auto_archive_duration": 1440,
            "flags": 0,
        }
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def thread(c: FakeChannel) -> dict:
    """A thread: a channel object with a parent, an owner and ``thread_metadata``, and no
    overwrites (its parent's apply)."""
    return {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "parent_id": str(c.parent_id),
        "owner_id": str(c.owner_id),
        "name": c.name,
        "last_message_id": _opt_id(c.last_message_id),
        "rate_limit_per_user": 0,
        "message_count": 0,  # required by discord.py
        "member_count": 1,  # required by discord.py
        "total_message_sent": 0,
        "flags": 0,
        "thread_metadata": {  # required by discord.py
            "archived": c.archived,
            "auto_archive_duration": 1440,
            "archive_timestamp": snowflake_time_iso(c.id),
            "locked": c.locked,
            "create_timestamp": snowflake_time_iso(c.id),
        },
    }


def thread_delete(c: FakeChannel) -> dict:
    """THREAD_DELETE carries only these fields of the thread."""
    return {"id": str(c.id), "guild_id": str(c.guild_id), "parent_id": str(c.parent_id), "type": c.type}


def guild(g: FakeGuild) -> dict:
    """The Guild object as returned by ``GET /guilds/{id}``."""
    first_text = next(iter(g.text_channels), None)
    return {
        "id": str(g.id),
        "name": g.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "owner_id": str(g.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "widget_enabled": False,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [role(r) for r in g.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "application_id": None,
        "system_channel_id": _opt_id(first_text.id if first_text else None),
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "max_members": 500000,
        "vanity_url_code": None,
        "description": None,
        "banner": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": g.preferred_locale,
        "nsfw_level": 0,
        "incidents_data": None,
    }


def guild_create(g: FakeGuild, *, bot_id: int, include_all_members: bool) -> dict:
    """GUILD_CREATE: the guild plus the gateway-only extra fields.

    Without the GUILD_MEMBERS intent Discord only sends the bot's own member;
    ``member_count`` is always the real total, which is how discord.py decides
    whether the member cache is complete ("chunked").
    """
    members: Iterable[FakeMember] = g.members.values()
    if not include_all_members:
        members = [m for m in members if m.id == bot_id]
    return {
        **guild(g),
        "joined_at": g.joined_at,
        "large": False,
        "unavailable": False,
        "member_count": len(g.members),
        "voice_states": [],
        "members": [member(m) for m in members],
        "channels": [channel(c) for c in g.channels.values() if not c.is_thread],
        "threads": [channel(c) for c in g.threads if not c.archived],  # the active ones only
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def application(app_id: int, *, name: str, bot: FakeUser, owner: FakeUser, flags: int) -> dict:
    """``GET /oauth2/applications/@me``."""
    return {
        "id": str(app_id),
        "name": name,
        "icon": None,  # required by discord.py
        "description": "",  # required
        "summary": "",
        "type": None,
        "bot_public": True,  # required
        "bot_require_code_grant": False,  # required
        "owner": user(owner),  # required
        "team": None,
        "verify_key": "0" * 64,  # required
        "flags": flags,
        "bot": user(bot),
        "redirect_uris": [],
        "tags": [],
        # A non-null URL makes discord.py warn that it will get no interactions.
        "interactions_endpoint_url": None,
        "approximate_guild_count": 0,
        "hook": True,
        "integration_types_config": {"0": {}},
    }


def attachment(att_id: int, filename: str, data: bytes, content_type: Optional[str], url: str) -> dict:
    return {
        "id": str(att_id),
        "filename": filename,
        "size": len(data),
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
        "flags": 0,
    }


def mention_user(u: FakeUser, m: Optional[FakeMember]) -> dict:
    """Entry of a message's ``mentions`` array: user plus partial member."""
    data = user(u)
    if m is not None:
        data["member"] = member(m, with_user=False)
    return data


def snapshot(message: dict) -> dict:
    """A forward's ``message_snapshots`` entry: the fields of the forwarded message that Discord
    copies (no author, no ids)."""
    copied = ("type", "content", "embeds", "attachments", "timestamp", "edited_timestamp", "flags",
              "mentions", "mention_roles", "components")
    return {"message": {key: message[key] for key in copied if key in message}}


def strip_reference(message: dict) -> dict:
    """A message as embedded in another's ``referenced_message``: Discord does
    not nest a second level of ``referenced_message``."""
    return {k: v for k, v in message.items() if k != "referenced_message"}


def ids(values: Iterable[int]) -> List[str]:
    return [str(v) for v in values]


def _overwrite(o: dict) -> dict:
    return {"id": str(o["id"]), "type": o["type"], "allow": str(o["allow"]), "deny": str(o["deny"])}


def _opt_id(value: Optional[int]) -> Optional[str]:
    return None if value is None else str(value)
