"""REST endpoints for users, channels, messages, guilds and app commands.

Handlers validate the way Discord does where a bot could get it wrong
(unknown IDs, missing access/permissions, empty or over-long messages,
replying to a missing message, editing someone else's message) and answer
with Discord's JSON error codes, so error paths in the bot can be tested too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from aiohttp import web

from . import messages, payloads
from . import permissions as perms
from .http_util import (
    CANNOT_EDIT_OTHERS_MESSAGE,
    EMPTY_MESSAGE,
    MISSING_ACCESS,
    MISSING_PERMISSIONS,
    THREAD_LOCKED,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    ApiError,
    form_error,
    json_response,
    no_content,
    not_found,
)
from .command_limits import command_problems
from .ids import now_iso
from .models import FakeChannel, FakeGuild
from .recorder import RECORDED_KEY, RecordedRequest
from .state import LookupFailed

if TYPE_CHECKING:
    from .server import FakeDiscord

MAX_CONTENT_LENGTH = 2000


def recorded(request: web.Request) -> RecordedRequest:
    """The parsed request, attached by the recording middleware."""
    return request[RECORDED_KEY]


def snowflake_param(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise form_error(name, "NUMBER_TYPE_COERCE", "Value is not snowflake.") from None


class RestRoutes:
    def __init__(self, fake: "FakeDiscord") -> None:
        self.fake = fake
        self.state = fake.state

    def routes(self) -> List[Tuple[str, str, object]]:
        """(method, path below /api/v10, handler); literal paths first."""
        return [
            ("GET", "/users/@me", self.get_current_user),
            ("POST", "/users/@me/channels", self.create_dm),
            ("GET", "/users/@me/guilds", self.get_current_user_guilds),
            ("DELETE", "/users/@me/guilds/{guild_id}", self.leave_guild),
            ("GET", "/users/{user_id}", self.get_user),
            ("GET", "/oauth2/applications/@me", self.get_application),
            ("GET", "/gateway", self.get_gateway),
            ("GET", "/gateway/bot", self.get_gateway_bot),
            ("GET", "/channels/{channel_id}", self.get_channel),
            ("POST", "/channels/{channel_id}/typing", self.trigger_typing),
            ("GET", "/channels/{channel_id}/messages", self.get_messages),
            ("POST", "/channels/{channel_id}/messages", self.create_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message),
            ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.add_reaction),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.remove_reaction),
            ("GET", "/guilds/{guild_id}", self.get_guild),
            ("GET", "/guilds/{guild_id}/channels", self.get_guild_channels),
            ("GET", "/guilds/{guild_id}/roles", self.get_roles),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member),
            ("GET", "/applications/{app_id}/commands", self.get_commands),
            ("PUT", "/applications/{app_id}/commands", self.put_commands),
            ("POST", "/applications/{app_id}/commands", self.upsert_command),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self.get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self.put_commands),
            ("POST", "/applications/{app_id}/guilds/{guild_id}/commands", self.upsert_command),
        ]

    # ------------------------------------------------------- users & login
    async def get_current_user(self, request: web.Request) -> web.Response:
        return json_response(payloads.current_user(self.state.bot))

    async def get_user(self, request: web.Request) -> web.Response:
        try:
            return json_response(payloads.user(self.state.get_user(snowflake_param(request, "user_id"))))
        except LookupFailed:
            raise not_found(UNKNOWN_USER, "User") from None

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(
            payloads.application(
                self.state.application_id,
                name=self.state.bot.username,
                bot=self.state.bot,
                owner=self.state.app_owner,
                flags=self.fake.application_flags,
            )
        )

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.fake.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        limits = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response({"url": self.fake.gateway_url, "shards": 1, "session_start_limit": limits})

    async def create_dm(self, request: web.Request) -> web.Response:
        body = recorded(request).json or {}
        try:
            user = self.state.get_user(int(body.get("recipient_id", 0)))
        except (LookupFailed, ValueError):
            raise not_found(UNKNOWN_USER, "User") from None
        return json_response(payloads.channel(self.state.get_or_create_dm(user)))

    async def get_current_user_guilds(self, request: web.Request) -> web.Response:
        """The bot's guilds as partial guilds, by id; ``before``/``after`` and ``limit`` (1-200,
        default 200) as Discord documents."""
        query = request.query
        limit = min(max(int(query.get("limit", 200)), 1), 200)
        found = sorted(self.state.bot_guilds(), key=lambda g: g.id)
        if "after" in query:
            found = [g for g in found if g.id > int(query["after"])][:limit]
        if "before" in query:
            found = [g for g in found if g.id < int(query["before"])][-limit:]
        listed = [{"id": str(g.id), "name": g.name, "icon": None, "banner": None, "owner": False,
                   "permissions": str(perms.guild_permissions(g, self.state.bot.id)), "features": []}
                  for g in found[:limit]]
        return json_response(listed)

    async def leave_guild(self, request: web.Request) -> web.Response:
        guild = self._bot_guild(snowflake_param(request, "guild_id"))
        self.fake._bot_left_guild(guild)
        return no_content()

    # ------------------------------------------------------------ channels
    async def get_channel(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        return json_response(payloads.channel(channel))

    async def trigger_typing(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        self._require(channel, _send_permission(channel))
        return no_content()

    async def get_messages(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        self._require(channel, perms.READ_MESSAGE_HISTORY)
        history = [m for m in self.state.channel_history(channel.id) if not _is_ephemeral(m)]
        query = request.query
        limit = min(int(query.get("limit", 50)), 100)
        if "before" in query:
            history = [m for m in history if int(m["id"]) < int(query["before"])]
        if "after" in query:
            history = [m for m in history if int(m["id"]) > int(query["after"])][:limit]
        # Discord returns newest first.
        return json_response(list(reversed(history))[:limit])

    async def create_message(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        self._require(channel, _send_permission(channel))
        if channel.locked and not self._can(channel, perms.MANAGE_THREADS):
            raise ApiError(403, THREAD_LOCKED, "Thread is locked")
        rec = recorded(request)
        body = rec.json or {}
        duplicate = self._same_nonce(channel, body)
        if duplicate is not None:
            return json_response(duplicate)
        attachments = self.fake._attachments_from_upload(channel, body, rec.files)
        _validate_new_message(body, attachments)
        message = messages.build_message(
            self.state,
            channel=channel,
            author=self.state.bot,
            content=body.get("content") or "",
            allowed_mentions=body.get("allowed_mentions"),
            reference_id=self._reply_target(channel, body.get("message_reference")),
            attachments=attachments,
            embeds=body.get("embeds") or [],
            components=body.get("components") or [],
            flags=int(body.get("flags") or 0),
            tts=bool(body.get("tts")),
            nonce=body.get("nonce"),
        )
        self.state.store_message(message)
        self.fake._publish_message("MESSAGE_CREATE", message)
        return json_response(message)

    async def get_message(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        self._require(channel, perms.READ_MESSAGE_HISTORY)
        return json_response(self._message(channel, request))

    async def edit_message(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        message = self._message(channel, request)
        if int(message["author"]["id"]) != self.state.bot.id:
            raise ApiError(403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user")
        rec = recorded(request)
        changes = dict(rec.json or {})
        if "attachments" in changes:
            changes["attachments"] = self.fake._attachments_after_edit(channel, message, changes, rec.files)
        if "content" in changes and len(changes["content"] or "") > MAX_CONTENT_LENGTH:
            raise _too_long()
        messages.apply_edit(message, changes, edited_at=now_iso())
        self.fake._publish_message("MESSAGE_UPDATE", message)
        return json_response(message)

    async def delete_message(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        message = self._message(channel, request)
        if int(message["author"]["id"]) != self.state.bot.id:
            self._require(channel, perms.MANAGE_MESSAGES)
        self.fake._delete_stored_message(message)
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        self._require(channel, perms.ADD_REACTIONS | perms.READ_MESSAGE_HISTORY)
        message = self._message(channel, request)
        _set_own_reaction(message, request.match_info["emoji"], present=True)
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        channel, _ = self._visible_channel(request)
        message = self._message(channel, request)
        _set_own_reaction(message, request.match_info["emoji"], present=False)
        return no_content()

    # -------------------------------------------------------------- guilds
    async def get_guild(self, request: web.Request) -> web.Response:
        return json_response(payloads.guild(self._bot_guild(snowflake_param(request, "guild_id"))))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self._bot_guild(snowflake_param(request, "guild_id"))
        # Discord leaves threads out of this list.
        return json_response([payloads.channel(c) for c in guild.channels.values() if not c.is_thread])

    async def get_roles(self, request: web.Request) -> web.Response:
        guild = self._bot_guild(snowflake_param(request, "guild_id"))
        return json_response([payloads.role(r) for r in guild.roles.values()])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self._bot_guild(snowflake_param(request, "guild_id"))
        try:
            member = self.state.get_member(guild, snowflake_param(request, "user_id"))
        except LookupFailed:
            raise not_found(UNKNOWN_MEMBER, "Member") from None
        return json_response(payloads.member(member))

    # ---------------------------------------------------- application commands
    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self._command_scope(request))

    async def put_commands(self, request: web.Request) -> web.Response:
        """Bulk overwrite, as ``CommandTree.sync()`` does: IDs survive for
        commands that keep their name and type, like on Discord."""
        scope = self._command_scope(request)
        guild_id = request.match_info.get("guild_id")
        bodies = recorded(request).json or []
        for index, body in enumerate(bodies):
            _refuse_breaches(body, str(index))
        new = [self._command_object(body, scope, guild_id) for body in bodies]
        scope[:] = new
        return json_response(new)

    async def upsert_command(self, request: web.Request) -> web.Response:
        scope = self._command_scope(request)
        body = recorded(request).json or {}
        _refuse_breaches(body, "name")
        command = self._command_object(body, scope, request.match_info.get("guild_id"))
        existed = [c for c in scope if c["id"] == command["id"]]
        scope[:] = [c for c in scope if c["id"] != command["id"]] + [command]
        return json_response(command, 200 if existed else 201)

    def _command_scope(self, request: web.Request) -> List[dict]:
        if snowflake_param(request, "app_id") != self.state.application_id:
            raise ApiError(403, MISSING_ACCESS, "Missing Access")
        guild_id = request.match_info.get("guild_id")
        if guild_id is not None:
            self._bot_guild(int(guild_id))
            return self.state.commands_for(int(guild_id))
        return self.state.commands_for(None)

    def _command_object(self, body: dict, scope: List[dict], guild_id: Optional[str]) -> dict:
        type_ = body.get("type", 1)
        previous = next((c for c in scope if c["name"] == body["name"] and c["type"] == type_), None)
        command = {
            "id": previous["id"] if previous else str(self.state.new_id()),
            "application_id": str(self.state.application_id),
            "version": str(self.state.new_id()),
            "type": type_,
            "name": body["name"],
            "name_localizations": body.get("name_localizations"),
            "description": body.get("description", ""),
            "description_localizations": body.get("description_localizations"),
            "options": body.get("options") or [],
            # discord.py sends an int; Discord always answers with a string.
            "default_member_permissions": _optional_str(body.get("default_member_permissions")),
            "dm_permission": body.get("dm_permission", True),
            "nsfw": body.get("nsfw", False),
            "contexts": body.get("contexts"),
            # Absent: the app's own installation contexts (a server install here).
            "integration_types": body.get("integration_types"),
        }
        if guild_id is not None:
            command["guild_id"] = str(guild_id)
        return command

    # ------------------------------------------------------------- helpers
    def _bot_guild(self, guild_id: int) -> FakeGuild:
        guild = self.state.guilds.get(guild_id)
        if guild is None:
            raise not_found(UNKNOWN_GUILD, "Guild")
        if not guild.bot_is_member:
            raise ApiError(403, MISSING_ACCESS, "Missing Access")
        return guild

    def _visible_channel(self, request: web.Request) -> Tuple[FakeChannel, Optional[FakeGuild]]:
        """The channel, if it exists and the bot can see it (else 404/403)."""
        try:
            channel, guild = self.state.find_channel(snowflake_param(request, "channel_id"))
        except LookupFailed:
            raise not_found(UNKNOWN_CHANNEL, "Channel") from None
        if guild is not None and (not guild.bot_is_member or not self._can(channel, perms.VIEW_CHANNEL)):
            raise ApiError(403, MISSING_ACCESS, "Missing Access")
        return channel, guild

    def _can(self, channel: FakeChannel, required: int) -> bool:
        return perms.has_all(self.state.permissions_in(channel, self.state.bot.id), required)

    def _require(self, channel: FakeChannel, required: int) -> None:
        if not self._can(channel, required):
            raise ApiError(403, MISSING_PERMISSIONS, "Missing Permissions")

    def _message(self, channel: FakeChannel, request: web.Request) -> dict:
        try:
            message = self.state.get_message(channel.id, snowflake_param(request, "message_id"))
        except LookupFailed:
            raise not_found(UNKNOWN_MESSAGE, "Message") from None
        if _is_ephemeral(message):
            raise not_found(UNKNOWN_MESSAGE, "Message")  # ephemeral ones are not in the channel
        return message

    def _same_nonce(self, channel: FakeChannel, body: dict) -> Optional[dict]:
        """With ``enforce_nonce`` Discord answers a re-sent message (same
        nonce, e.g. a retry after a lost response) with the original."""
        nonce = body.get("nonce")
        if not body.get("enforce_nonce") or nonce is None:
            return None
        bot_id = str(self.state.bot.id)
        return next(
            (
                m
                for m in self.state.channel_history(channel.id)
                if m.get("nonce") == nonce and m["author"]["id"] == bot_id
            ),
            None,
        )

    def _reply_target(self, channel: FakeChannel, reference: Optional[dict]) -> Optional[int]:
        """ID of the message being replied to, validated like Discord does."""
        if not reference or not reference.get("message_id"):
            return None
        # Create Message: "if it is a reply, also READ_MESSAGE_HISTORY".
        self._require(channel, perms.READ_MESSAGE_HISTORY)
        target = int(reference["message_id"])
        if target in self.state.messages and int(self.state.messages[target]["channel_id"]) == channel.id:
            return target
        if reference.get("fail_if_not_exists", True):
            raise form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return None


def _send_permission(channel: FakeChannel) -> int:
    """In a thread Discord checks Send Messages in Threads, not Send Messages."""
    return perms.SEND_MESSAGES_IN_THREADS if channel.is_thread else perms.SEND_MESSAGES


def _optional_str(value: object) -> Optional[str]:
    return None if value is None else str(value)


def _validate_new_message(body: dict, attachments: List[dict]) -> None:
    if len(body.get("content") or "") > MAX_CONTENT_LENGTH:
        raise _too_long()
    has_payload = any(body.get(k) for k in ("content", "embeds", "sticker_ids", "components", "poll"))
    if not has_payload and not attachments:
        raise ApiError(400, EMPTY_MESSAGE, "Cannot send an empty message")


def _too_long() -> ApiError:
    return form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_LENGTH} or fewer in length.")


def _is_ephemeral(message: dict) -> bool:
    return bool(int(message.get("flags") or 0) & messages.EPHEMERAL)


def _set_own_reaction(message: dict, emoji: str, *, present: bool) -> None:
    reactions: List[Dict] = message.setdefault("reactions", [])
    entry = next((r for r in reactions if r["emoji"]["name"] == emoji), None)
    if present and entry is None:
        reactions.append({"emoji": {"id": None, "name": emoji}, "count": 1, "me": True, "burst_count": 0})
    elif not present and entry is not None:
        reactions.remove(entry)


def _refuse_breaches(body: dict, field: str) -> None:
    """Discord refuses a registration (the whole bulk overwrite) if one command breaks a limit."""
    problems = command_problems(body)
    if problems:
        raise form_error(field, "BASE_TYPE_BAD_LENGTH", "; ".join(problems))
