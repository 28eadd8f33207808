"""Build Message objects the way Discord would, for both directions.

* ``build_message``: a new message, from a user (injected by a test) or from
  the bot (a REST call or an interaction response).
* ``gateway_form``: the MESSAGE_CREATE/UPDATE variant of a stored message,
  which additionally carries ``guild_id`` and partial ``member`` objects.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Set, Union

from . import payloads
from .ids import snowflake_time_iso
from .models import FakeChannel, FakeUser, FakeWebhook
from .state import FakeState, LookupFailed

DEFAULT = 0
REPLY = 19
CHAT_INPUT_COMMAND = 20

# message_reference types
REFERENCE_REPLY = 0
REFERENCE_FORWARD = 1

EPHEMERAL = 1 << 6
LOADING = 1 << 7

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def build_message(
    state: FakeState,
    *,
    channel: FakeChannel,
    author: Union[FakeUser, FakeWebhook],
    content: str = "",
    mentions: Optional[Iterable[FakeUser]] = None,
    allowed_mentions: Optional[dict] = None,
    reference_id: Optional[int] = None,
    ping_reply: bool = True,
    with_referenced_message: bool = True,
    forward_of: Optional[dict] = None,
    attachments: Iterable[dict] = (),
    embeds: Iterable[dict] = (),
    components: Iterable[dict] = (),
    flags: int = 0,
    tts: bool = False,
    nonce: Optional[str] = None,
    message_type: Optional[int] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Create (but do not store) a message payload in REST shape.

    ``mentions=None`` means "parse them out of ``content``", filtered by
    ``allowed_mentions`` exactly like Discord filters what a message pings.
    Raises ``LookupFailed`` if ``reference_id`` names no message in ``channel``.
    ``with_referenced_message=False`` leaves ``referenced_message`` out of a
    reply, as Discord does when "the backend did not attempt to fetch" it.
    ``forward_of`` (a stored message, from any channel) makes a forward: a
    reference of type 1, no content, the message copied in ``message_snapshots``.
    A ``FakeWebhook`` author makes a webhook's message (``webhook_id`` set).
    """
    message_id = state.new_id()
    referenced = state.get_message(channel.id, reference_id) if reference_id else None

    if mentions is None:
        user_ids = _parsed_user_mentions(state, content, allowed_mentions)
        if referenced is not None and _pings_reply(allowed_mentions, ping_reply):
            user_ids.append(int(referenced["author"]["id"]))
        mentioned = [state.users[i] for i in dict.fromkeys(user_ids)]
    else:
        mentioned = list(mentions)

    message = {
        "id": str(message_id),
        "channel_id": str(channel.id),
        "author": payloads.webhook_author(author) if isinstance(author, FakeWebhook) else payloads.user(author),
        "content": content or "",
        "timestamp": snowflake_time_iso(message_id),
        "edited_timestamp": None,
        "tts": tts,
        "mention_everyone": _mentions_everyone(content, allowed_mentions),
        "mentions": [payloads.user(u) for u in mentioned],
        "mention_roles": _parsed_role_mentions(content, allowed_mentions),
        "attachments": list(attachments),
        "embeds": list(embeds),
        "components": list(components),
        "pinned": False,
        "type": message_type if message_type is not None else (REPLY if referenced else DEFAULT),
        "flags": flags,
    }
    if nonce is not None:
        message["nonce"] = nonce
    if referenced is not None:
        message["message_reference"] = {
            "type": REFERENCE_REPLY,
            "message_id": referenced["id"],
            "channel_id": str(channel.id),
            **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
        }
        if with_referenced_message:
            message["referenced_message"] = payloads.strip_reference(referenced)
    if forward_of is not None:
        message.update(_forward(state, forward_of))
    if isinstance(author, FakeWebhook):
        message["webhook_id"] = str(author.id)
    if extra:
        message.update(extra)
    return message


def _forward(state: FakeState, source: dict) -> dict:
    """The fields that make a message a forward of ``source``."""
    _, guild = state.find_channel(int(source["channel_id"]))
    reference = {"type": REFERENCE_FORWARD, "message_id": source["id"], "channel_id": source["channel_id"]}
    if guild is not None:
        reference["guild_id"] = str(guild.id)
    return {"content": "", "message_reference": reference, "message_snapshots": [payloads.snapshot(source)]}


def gateway_form(state: FakeState, message: dict) -> dict:
    """Message as sent in MESSAGE_CREATE / MESSAGE_UPDATE."""
    channel, guild = state.find_channel(int(message["channel_id"]))
    data = dict(message)
    if guild is None:
        return data
    data["guild_id"] = str(guild.id)
    author_member = guild.members.get(int(message["author"]["id"]))
    # Webhook messages (interaction responses included) carry no member.
    if author_member is not None and "webhook_id" not in message:
        data["member"] = payloads.member(author_member, with_user=False)
    data["mentions"] = [
        payloads.mention_user(state.users[int(u["id"])], guild.members.get(int(u["id"])))
        if int(u["id"]) in state.users
        else u
        for u in message["mentions"]
    ]
    return data


def redact_content(message: dict) -> dict:
    """What a bot without the MESSAGE_CONTENT intent receives."""
    data = dict(message)
    data.update(content="", embeds=[], attachments=[], components=[])
    data.pop("poll", None)
    return data


def mentions_user(message: dict, user_id: int) -> bool:
    return any(int(u["id"]) == user_id for u in message.get("mentions", []))


def apply_edit(message: dict, changes: dict, *, edited_at: str) -> dict:
    """Apply a PATCH body / test edit to a stored message, in place."""
    for key in ("content", "embeds", "components", "attachments", "flags"):
        if key in changes and changes[key] is not None:
            message[key] = changes[key]
    if "content" in changes:
        message["edited_timestamp"] = edited_at
    return message


def _parsed_user_mentions(state: FakeState, content: str, allowed: Optional[dict]) -> List[int]:
    found = [int(m) for m in _USER_MENTION.findall(content or "") if int(m) in state.users]
    if allowed is None:
        return found
    explicit: Set[int] = {int(u) for u in allowed.get("users", [])}
    parse_all = "users" in allowed.get("parse", [])
    return [u for u in found if parse_all or u in explicit]


def _parsed_role_mentions(content: str, allowed: Optional[dict]) -> List[str]:
    found = _ROLE_MENTION.findall(content or "")
    if allowed is None:
        return found
    explicit = {str(r) for r in allowed.get("roles", [])}
    parse_all = "roles" in allowed.get("parse", [])
    return [r for r in found if parse_all or r in explicit]


def _mentions_everyone(content: str, allowed: Optional[dict]) -> bool:
    if "@everyone" not in (content or "") and "@here" not in (content or ""):
        return False
    return allowed is None or "everyone" in allowed.get("parse", [])


def _pings_reply(allowed: Optional[dict], default: bool) -> bool:
    if allowed is None:
        return default
    return bool(allowed.get("replied_user", False))


__all__ = [
    "build_message",
    "gateway_form",
    "redact_content",
    "mentions_user",
    "apply_edit",
    "LookupFailed",
    "DEFAULT",
    "REPLY",
    "CHAT_INPUT_COMMAND",
    "REFERENCE_REPLY",
    "REFERENCE_FORWARD",
    "EPHEMERAL",
    "LOADING",
]
