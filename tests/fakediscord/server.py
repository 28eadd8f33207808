"""``FakeDiscord``: one aiohttp server on 127.0.0.1 speaking both Discord's REST
API (under ``/api/v10``) and its Gateway (WebSocket at ``/gateway``).

It owns the world state (``state.py``), turns test actions into Gateway events
(like Discord does when a user posts, edits, invokes a command...), answers the
bot's REST calls (``rest.py``, ``webhooks.py``), records every request
(``recorder.py``) and can inject faults. See ``__init__.py`` for a tour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
from contextlib import AbstractContextManager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from aiohttp import web

from . import messages, payloads
from . import permissions as perms
from .gateway import RECONNECT, Gateway
from .http_util import ApiError, error_response, json_response
from .ids import new_token, now_iso
from .interactions import Options, build_command_interaction
from .models import FakeChannel, FakeGuild, FakeInteraction, FakeMember, FakeRole, FakeUser, FakeWebhook
from .recorder import RECORDED_KEY, FaultInjector, FaultRule, RecordedRequest, RequestLog, parse_body
from .rest import RestRoutes
from .state import FakeState, UserLike, as_user
from .webhooks import WebhookRoutes

log = logging.getLogger(__name__)

API_PREFIX = r"/api/v{version:\d+}"
GATEWAY_PATH = "/gateway"
ATTACHMENT_PATH = "/attachments/{channel_id}/{attachment_id}/{filename}"
_API_PREFIX_RE = re.compile(r"^/api/v\d+")
# Routes authenticated by the token in their URL, not by the bot token.
_TOKENLESS_PREFIXES = ("/webhooks/", "/interactions/", "/attachments/")

# An attachment to inject: (filename, data) or (filename, data, content_type).
AttachmentSpec = Union[Sequence[Any], Dict[str, Any]]


class FakeDiscord:
    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "FakeBot",
        heartbeat_interval_ms: int = 41_250,
        application_flags: int = payloads.DEFAULT_APPLICATION_FLAGS,
        host: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.host = host
        self.application_flags = application_flags
        self.state = FakeState(bot_name=bot_name)
        self.log = RequestLog()
        self.faults = FaultInjector()
        self.interactions: Dict[int, FakeInteraction] = {}
        self.gateway = Gateway(
            self.state,
            token=token,
            gateway_url=lambda: self.gateway_url,
            heartbeat_interval_ms=heartbeat_interval_ms,
            application_flags=application_flags,
        )
        self._runner: Optional[web.AppRunner] = None
        self._port: Optional[int] = None

    # ================================================================ lifecycle
    async def start(self) -> "FakeDiscord":
        """Bind a free port on ``host`` and start serving."""
        self._runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeDiscord":
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeDiscord is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def api_base(self) -> str:
        """Value for ``discord.http.Route.BASE``."""
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Value for ``DiscordWebSocket.DEFAULT_GATEWAY`` and ``resume_gateway_url``."""
        return f"ws://{self.host}:{self._port}{GATEWAY_PATH}"

    def install(self) -> AbstractContextManager:
        """Context manager pointing discord.py at this fake (restored on exit)."""
        # Imported here so the server itself never needs discord.py.
        from .install import point_discord_py_at

        return point_discord_py_at(self)

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_guard])
        app.router.add_get(GATEWAY_PATH, self.gateway.handle)
        app.router.add_get(ATTACHMENT_PATH, self._serve_attachment)
        for method, path, handler in RestRoutes(self).routes() + WebhookRoutes(self).routes():
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown_route)
        return app

    # ==================================================================== state
    @property
    def bot(self) -> FakeUser:
        return self.state.bot

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def users(self) -> Dict[int, FakeUser]:
        return self.state.users

    @property
    def guilds(self) -> Dict[int, FakeGuild]:
        return self.state.guilds

    @property
    def messages(self) -> Dict[int, dict]:
        """Every message, by ID, in REST shape (the bot's and injected ones)."""
        return self.state.messages

    def channel_messages(self, channel: FakeChannel) -> List[dict]:
        """Messages in ``channel``, oldest first (ephemeral ones included)."""
        return self.state.channel_history(channel.id)

    def registered_commands(self, guild: Optional[FakeGuild] = None) -> List[dict]:
        """Application commands the bot synced, globally or for ``guild``."""
        return list(self.state.commands_for(guild.id if guild else None))

    # ----------------------------------------------------------- world building
    # These are synchronous so tests can build a world before the bot connects;
    # when a bot is connected they also emit the matching Gateway event.

    def add_user(self, name: str, *, bot: bool = False, global_name: Optional[str] = None) -> FakeUser:
        return self.state.create_user(name, bot=bot, global_name=global_name)

    def add_guild(
        self,
        name: str,
        *,
        owner: Optional[FakeUser] = None,
        everyone_permissions: int = perms.DEFAULT_EVERYONE,
        bot_permissions: int = perms.DEFAULT_BOT,
    ) -> FakeGuild:
        """A guild the bot is in (owner and bot are members; the bot gets a
        managed role with ``bot_permissions``). Emits GUILD_CREATE when live."""
        guild = self.state.create_guild(
            name, owner=owner, everyone_permissions=everyone_permissions, bot_permissions=bot_permissions
        )
        self._publish_guild_create(guild)
        return guild

    def add_role(self, guild: FakeGuild, name: str, permissions: int = 0, **options: Any) -> FakeRole:
        role = self.state.create_role(guild, name, permissions, **options)
        self._publish("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": payloads.role(role)})
        return role

    def add_text_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        topic: Optional[str] = None,
        nsfw: bool = False,
        overwrites: Iterable[dict] = (),
    ) -> FakeChannel:
        """``overwrites``: ``{"id", "type" (0 role, 1 member), "allow", "deny"}`` dicts."""
        channel = self.state.create_text_channel(guild, name, topic=topic, nsfw=nsfw, overwrites=overwrites)
        self._publish("CHANNEL_CREATE", payloads.channel(channel))
        return channel

    def add_thread(self, channel: FakeChannel, name: str, *, owner: UserLike,
                   from_message: Optional[int] = None) -> FakeChannel:
        """``owner`` starts a public thread in ``channel`` (from one of its messages, whose id the
        thread then has): THREAD_CREATE with ``newly_created``."""
        thread = self.state.create_thread(channel, name, owner=as_user(owner), from_message=from_message)
        self._publish("THREAD_CREATE", {**payloads.channel(thread), "newly_created": True})
        return thread

    async def archive_thread(self, thread: FakeChannel) -> None:
        """The thread is archived (by hand or after its inactivity duration): THREAD_UPDATE. It
        leaves the server's active threads, and so discord.py's cache and GUILD_CREATE."""
        thread.archived = True
        await self._flush(self._publish("THREAD_UPDATE", payloads.channel(thread)))

    async def lock_thread(self, thread: FakeChannel, locked: bool = True) -> None:
        """A moderator locks the thread (or unlocks it): THREAD_UPDATE. Only members with Manage
        Threads may post in a locked thread; Discord refuses the others with 160005."""
        thread.locked = locked
        await self._flush(self._publish("THREAD_UPDATE", payloads.channel(thread)))

    async def delete_channel(self, channel: FakeChannel) -> None:
        """Delete a guild channel or thread, with its messages. Discord sends THREAD_DELETE (a few
        fields) for a thread, else CHANNEL_DELETE (the channel object), and nothing for the
        messages, nor for the threads of a deleted channel."""
        if channel.is_thread:
            event, data = "THREAD_DELETE", payloads.thread_delete(channel)
        else:
            event, data = "CHANNEL_DELETE", payloads.channel(channel)
        self.state.remove_channel(channel)
        await self._flush(self._publish(event, data))

    def add_webhook(self, channel: FakeChannel, name: str) -> FakeWebhook:
        """An incoming webhook in ``channel`` (a feed, a bridge), as a member with Manage Webhooks
        makes one: WEBHOOKS_UPDATE, which only the GUILD_WEBHOOKS intent receives."""
        webhook = self.state.create_webhook(channel, name)
        self._publish("WEBHOOKS_UPDATE", {"guild_id": str(channel.guild_id), "channel_id": str(channel.id)})
        return webhook

    def set_channel_overwrite(
        self,
        channel: FakeChannel,
        target: Union[FakeRole, FakeUser, FakeMember, FakeGuild],
        *,
        allow: int = 0,
        deny: int = 0,
    ) -> None:
        """Replace the overwrite for a role, member or (guild =) @everyone."""
        kind = 0 if isinstance(target, (FakeRole, FakeGuild)) else 1
        overwrites = [o for o in channel.permission_overwrites if o["id"] != target.id]
        overwrites.append({"id": target.id, "type": kind, "allow": allow, "deny": deny})
        channel.permission_overwrites = overwrites
        self._publish("CHANNEL_UPDATE", payloads.channel(channel))

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *,
        permissions: Optional[int] = None,
        roles: Iterable[FakeRole] = (),
        nick: Optional[str] = None,
    ) -> FakeMember:
        """``permissions`` are granted through a personal role, on top of @everyone."""
        roles = list(roles)
        member = self.state.create_member(guild, user, permissions=permissions, roles=roles, nick=nick)
        personal_roles = [guild.roles[r] for r in member.role_ids if r not in {role.id for role in roles}]
        for role in personal_roles:
            self._publish("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": payloads.role(role)})
        self._publish("GUILD_MEMBER_ADD", {**payloads.member(member), "guild_id": str(guild.id)})
        return member

    def member(self, guild: FakeGuild, user: UserLike) -> FakeMember:
        return self.state.get_member(guild, as_user(user).id)

    def dm_channel(self, user: UserLike) -> FakeChannel:
        """The DM channel between ``user`` and the bot (created on first use)."""
        return self.state.get_or_create_dm(as_user(user))

    # ============================================================ user actions
    async def send_message(
        self,
        channel: FakeChannel,
        author: UserLike,
        content: str = "",
        *,
        mentions: Optional[Iterable[UserLike]] = None,
        referenced_message_id: Optional[int] = None,
        ping_reply: bool = True,
        with_referenced_message: bool = True,
        attachments: Iterable[AttachmentSpec] = (),
        embeds: Iterable[dict] = (),
    ) -> dict:
        """``author`` posts in ``channel``: stores the message and dispatches
        MESSAGE_CREATE. ``mentions=None`` derives them from ``<@id>`` in
        ``content``; replies (``referenced_message_id``) ping the replied-to
        author unless ``ping_reply=False``, and carry the replied-to message
        unless ``with_referenced_message=False`` (Discord may leave it out).
        Returns the message (REST shape)."""
        user = as_user(author)
        self._check_can_post(channel, user)
        return await self._post(
            channel,
            author=user,
            content=content,
            mentions=None if mentions is None else [as_user(m) for m in mentions],
            reference_id=referenced_message_id,
            ping_reply=ping_reply,
            with_referenced_message=with_referenced_message,
            attachments=[self._attachment_from_spec(channel, spec) for spec in attachments],
            embeds=embeds,
        )

    async def forward_message(self, channel: FakeChannel, author: UserLike, message: dict) -> dict:
        """``author`` forwards ``message`` (from any channel) to ``channel``: a message with no
        content of its own, the forwarded one copied in its ``message_snapshots``."""
        user = as_user(author)
        self._check_can_post(channel, user)
        return await self._post(channel, author=user, forward_of=message)

    async def send_webhook_message(self, webhook: FakeWebhook, content: str) -> dict:
        """``webhook`` is executed: its message, with ``webhook_id``, in its channel."""
        channel, _ = self.state.find_channel(webhook.channel_id)
        return await self._post(channel, author=webhook, content=content)

    async def _post(self, channel: FakeChannel, **fields: Any) -> dict:
        message = messages.build_message(self.state, channel=channel, **fields)
        self.state.store_message(message)
        await self._flush(self._publish_message("MESSAGE_CREATE", message))
        return message

    async def edit_message(
        self,
        channel: FakeChannel,
        message_id: int,
        *,
        content: Optional[str] = None,
        embeds: Optional[List[dict]] = None,
    ) -> dict:
        """Edit a stored message (as its author would); dispatches MESSAGE_UPDATE."""
        message = self.state.get_message(channel.id, message_id)
        changes = {k: v for k, v in {"content": content, "embeds": embeds}.items() if v is not None}
        messages.apply_edit(message, changes, edited_at=now_iso())
        await self._flush(self._publish_message("MESSAGE_UPDATE", message))
        return message

    async def delete_message(self, channel: FakeChannel, message_id: int) -> None:
        """Delete a stored message; dispatches MESSAGE_DELETE."""
        await self._flush(self._delete_stored_message(self.state.get_message(channel.id, message_id)))

    async def bulk_delete_messages(self, channel: FakeChannel, message_ids: List[int]) -> None:
        """Delete several stored messages at once, as a moderator's bulk delete does; dispatches
        one MESSAGE_DELETE_BULK with every id (Discord's event for it)."""
        for message_id in message_ids:
            self.state.messages.pop(message_id, None)
        _, guild = self.state.find_channel(channel.id)
        data = {"ids": [str(message_id) for message_id in message_ids], "channel_id": str(channel.id)}
        if guild is not None:
            data["guild_id"] = str(guild.id)
        await self._flush(self._publish("MESSAGE_DELETE_BULK", data))

    async def send_interaction(
        self,
        channel: FakeChannel,
        user: UserLike,
        command: str,
        *,
        options: Options = None,
        locale: str = "en-US",
        permissions: Optional[int] = None,
        app_permissions: Optional[int] = None,
        enforce_default_permissions: bool = True,
        focused: Optional[str] = None,
    ) -> FakeInteraction:
        """``user`` runs slash command ``command`` (``"name"``, ``"name sub"`` or
        ``"name group sub"``) in ``channel``; dispatches INTERACTION_CREATE.

        ``options``: ``{name: value}`` (str/int/float/bool, or FakeUser/
        FakeMember/FakeChannel/FakeRole, which are put into ``resolved``) or a
        list of raw option objects. ``permissions`` overrides the member's
        computed channel permissions. Raises ``CommandNotPermitted`` when a
        synced command's ``default_member_permissions`` exclude the member.
        ``focused`` names the option being typed: an autocomplete interaction, answered by a
        callback of type 8 with its ``choices``.
        """
        interaction_id, token = self.state.new_id(), new_token("aW50ZXJhY3Rpb24")
        payload = build_command_interaction(
            self.state,
            interaction_id=interaction_id,
            token=token,
            channel=channel,
            user=as_user(user),
            command=command,
            options=options,
            locale=locale,
            permissions=permissions,
            app_permissions=app_permissions,
            enforce_default_permissions=enforce_default_permissions,
            focused=focused,
        )
        interaction = FakeInteraction(id=interaction_id, token=token, payload=payload)
        self.interactions[interaction_id] = interaction
        await self._flush(self._publish("INTERACTION_CREATE", payload))
        return interaction

    async def wait_for_interaction_response(self, interaction: FakeInteraction, *, timeout: float = 2.0) -> dict:
        """The bot's callback body (``{"type": 4, "data": {...}}``) once it answered."""
        await self.wait_for_request(
            "POST",
            f"/interactions/{interaction.id}/{{token}}/callback",
            predicate=lambda r: r.status is not None and r.status < 300,
            timeout=timeout,
        )
        return interaction.callbacks[0]

    def original_response(self, interaction: FakeInteraction) -> Optional[dict]:
        """The message created by the interaction response, if any."""
        message_id = interaction.original_message_id
        return self.state.messages.get(message_id) if message_id else None

    async def remove_bot_from_guild(self, guild: FakeGuild) -> None:
        """The bot is kicked: dispatches GUILD_DELETE (without ``unavailable``)."""
        await self._flush(self._bot_left_guild(guild))

    async def add_bot_to_guild(self, guild: FakeGuild) -> None:
        """The bot (re)joins an existing guild: dispatches GUILD_CREATE."""
        guild.bot_is_member = True
        await self._flush(self._publish_guild_create(guild))

    async def dispatch(self, event: str, data: dict) -> None:
        """Escape hatch: send any raw DISPATCH event."""
        await self._flush(self._publish(event, data))

    # ========================================================== gateway control
    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's socket(s). 4000 ("unknown error") makes discord.py
        reconnect and RESUME; 4004/4010-4014 make it give up."""
        await self.gateway.drop(code)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client must reconnect and resume."""
        await self.gateway.send_op(RECONNECT, None)

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; with ``resumable=False`` a new IDENTIFY follows."""
        await self.gateway.invalidate_sessions(resumable)

    @contextlib.contextmanager
    def hold_gateway(self) -> Iterator[None]:
        """While inside, new Gateway connections hang before HELLO, so the bot
        stays offline after ``drop_gateway()`` and everything dispatched in the
        meantime must come back through RESUME's replay."""
        self.gateway.accepting.clear()
        try:
            yield
        finally:
            self.gateway.accepting.set()

    @property
    def replayed_count(self) -> int:
        """Events re-sent to the bot during RESUMEs, in total."""
        return self.gateway.replayed_count

    @property
    def identify_count(self) -> int:
        return self.gateway.identify_count

    @property
    def resume_count(self) -> int:
        return self.gateway.resume_count

    @property
    def gateway_received(self) -> List[dict]:
        """Every payload the bot sent over the Gateway (heartbeats included)."""
        return self.gateway.received

    async def wait_until_connected(self, *, timeout: float = 2.0) -> None:
        """Until a session is live: READY + GUILD_CREATEs (or RESUMED) written."""
        await self.gateway.wait_connected(timeout)

    wait_for_ready = wait_until_connected

    async def wait_for_resume(self, count: int = 1, *, timeout: float = 2.0) -> None:
        """Until ``count`` RESUMEs in total have completed."""
        await self.gateway.wait_for_counts(resumes=count, timeout=timeout)

    async def wait_for_identify(self, count: int = 1, *, timeout: float = 2.0) -> None:
        await self.gateway.wait_for_counts(identifies=count, timeout=timeout)

    # ================================================================ requests
    @property
    def requests(self) -> List[RecordedRequest]:
        return self.log.requests

    def requests_to(self, method: str, pattern: str) -> List[RecordedRequest]:
        """Recorded requests; ``pattern`` like ``/channels/{id}/messages``, method may be ``*``."""
        return self.log.matching(method, pattern)

    async def wait_for_request(
        self,
        method: str,
        pattern: str,
        *,
        count: int = 1,
        predicate: Optional[Callable[[RecordedRequest], bool]] = None,
        timeout: float = 2.0,
    ) -> RecordedRequest:
        """Until ``count`` answered requests match; returns the ``count``-th."""
        return await self.log.wait_for(method, pattern, count=count, predicate=predicate, timeout=timeout)

    def clear_requests(self) -> None:
        self.log.requests.clear()

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int = 429,
        *,
        retry_after: float = 0.05,
        count: int = 1,
        is_global: bool = False,
        body: Optional[dict] = None,
        via: bool = True,
    ) -> FaultRule:
        """Answer the next ``count`` matching requests with ``status``.

        429s look like Discord's (``Via`` header, ``retry_after`` in the body),
        which discord.py retries after ``retry_after`` seconds. Note discord.py
        retries 500/502/504 only after sleeping 1s, 3s, ...; 503 is not retried.
        With ``via=False`` a 429 has only what Discord documents (its body and
        rate-limit headers): discord.py then takes it for a Cloudflare ban and raises.
        """
        return self.faults.add(
            FaultRule(method, path_pattern, status, count, retry_after=retry_after, is_global=is_global, body=body,
                      via=via)
        )

    # ============================================ internals shared with routes
    def _publish(self, event: str, data: dict) -> List[asyncio.Future]:
        guild_id = data.get("guild_id")
        guild = self.state.guilds.get(int(guild_id)) if guild_id else None
        if guild is not None and not guild.bot_is_member:
            return []  # Discord sends nothing about guilds the bot is not in
        return self.gateway.dispatch(event, data)

    def _publish_message(self, event: str, message: dict) -> List[asyncio.Future]:
        return self._publish(event, messages.gateway_form(self.state, message))

    def _publish_guild_create(self, guild: FakeGuild) -> List[asyncio.Future]:
        return self.gateway.dispatch_guild_create(guild)

    def _bot_left_guild(self, guild: FakeGuild) -> List[asyncio.Future]:
        guild.bot_is_member = False
        return self._publish("GUILD_DELETE", {"id": str(guild.id)})

    def _delete_stored_message(self, message: dict) -> List[asyncio.Future]:
        self.state.messages.pop(int(message["id"]), None)
        if int(message.get("flags") or 0) & messages.EPHEMERAL:
            return []
        channel, guild = self.state.find_channel(int(message["channel_id"]))
        data = {"id": message["id"], "channel_id": str(channel.id)}
        if guild is not None:
            data["guild_id"] = str(guild.id)
        return self._publish("MESSAGE_DELETE", data)

    @staticmethod
    async def _flush(futures: List[asyncio.Future]) -> None:
        """Wait until the events are on the wire (not until the bot handled them)."""
        if futures:
            await asyncio.gather(*futures)

    def _check_can_post(self, channel: FakeChannel, user: FakeUser) -> None:
        guild = self.state.guild_of(channel)
        if guild is not None and user.id not in guild.members:
            raise ValueError(f"{user.username} is not a member of {guild.name}; add_member() first")
        if channel.is_dm and user.id != self.bot.id and user not in channel.recipients:
            raise ValueError(f"{user.username} is not a recipient of DM channel {channel.id}")

    # ------------------------------------------------------------ attachments
    def _make_attachment(self, channel: FakeChannel, filename: str, data: bytes, content_type: Optional[str]) -> dict:
        attachment_id = self.state.new_id()
        self.state.attachment_files[attachment_id] = data
        url = f"{self.url}/attachments/{channel.id}/{attachment_id}/{filename}"
        return payloads.attachment(attachment_id, filename, data, content_type, url)

    def _attachment_from_spec(self, channel: FakeChannel, spec: AttachmentSpec) -> dict:
        if isinstance(spec, dict):
            return self._make_attachment(channel, spec["filename"], spec["data"], spec.get("content_type"))
        filename, data, *rest = spec
        return self._make_attachment(channel, filename, data, rest[0] if rest else None)

    def _attachments_from_upload(self, channel: FakeChannel, body: dict, files: list) -> List[dict]:
        """Attachments for uploaded ``files[n]`` parts, described by ``body.attachments``."""
        described = {str(a.get("id")): a for a in body.get("attachments") or []}
        result = []
        for upload in files:
            index = upload.field[len("files[") : -1] if upload.field.startswith("files[") else upload.field
            meta = described.get(index, {})
            attachment = self._make_attachment(
                channel, meta.get("filename") or upload.filename, upload.data, upload.content_type
            )
            if meta.get("description"):
                attachment["description"] = meta["description"]
            result.append(attachment)
        return result

    def _attachments_after_edit(self, channel: FakeChannel, message: dict, body: dict, files: list) -> List[dict]:
        """An edit lists the existing attachments to keep, plus new uploads."""
        keep = {str(a.get("id")) for a in body.get("attachments") or []}
        kept = [a for a in message.get("attachments", []) if a["id"] in keep]
        return kept + self._attachments_from_upload(channel, body, files)

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        data = self.state.attachment_files.get(int(request.match_info["attachment_id"]))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------- middleware
    @web.middleware
    async def _record_and_guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Record every request, then apply injected faults and auth checks."""
        if request.path == GATEWAY_PATH:
            return await handler(request)
        rec = await self._record(request)
        response = self._injected_fault(rec) or self._auth_failure(rec)
        if response is None:
            response = await self._run_handler(request, handler)
        rec.status = response.status
        rec.response = _json_body(response)
        await self.log.completed()
        return response

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=_API_PREFIX_RE.sub("", request.path),
            query=dict(request.query),
            headers=dict(request.headers),
            raw_body=raw,
        )
        try:
            rec.json, rec.files, rec.form = parse_body(request.headers.get("Content-Type", ""), raw)
        except ValueError:
            rec.json = None  # handlers see no body; the raw bytes are kept
        self.log.add(rec)
        request[RECORDED_KEY] = rec
        return rec

    async def _run_handler(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return error_response(error)
        except web.HTTPException as exc:  # e.g. 405 from the router
            return json_response({"message": f"{exc.status}: {exc.reason}", "code": 0}, exc.status)
        except Exception:
            log.exception("fake Discord handler crashed on %s %s", request.method, request.path)
            return json_response({"message": "500: Internal Server Error", "code": 0}, 500)

    def _injected_fault(self, rec: RecordedRequest) -> Optional[web.Response]:
        rule = self.faults.take(rec.method, rec.path)
        if rule is None:
            return None
        rec.fault = True
        if rule.status != 429:
            body = rule.body or {"message": f"{rule.status}: injected failure", "code": 0}
            return json_response(body, rule.status)
        body = rule.body or {
            "message": "You are being rate limited.",
            "retry_after": rule.retry_after,
            "global": rule.is_global,
        }
        headers = {
            "Retry-After": str(max(1, math.ceil(rule.retry_after))),
            "X-RateLimit-Scope": "global" if rule.is_global else "user",
        }
        if rule.via:  # discord.py treats a 429 without Via as a Cloudflare ban and gives up
            headers["Via"] = "1.1 google"
        if rule.is_global:
            headers["X-RateLimit-Global"] = "true"
        return json_response(body, 429, headers)

    def _auth_failure(self, rec: RecordedRequest) -> Optional[web.Response]:
        if rec.path.startswith(_TOKENLESS_PREFIXES):
            return None
        if rec.headers.get("Authorization") == f"Bot {self.token}":
            return None
        return json_response({"message": "401: Unauthorized", "code": 0}, 401)

    async def _unknown_route(self, request: web.Request) -> web.Response:
        return json_response({"message": "404: Not Found", "code": 0}, 404)


def _json_body(response: web.StreamResponse) -> Any:
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return None
    try:
        return json.loads(response.body)
    except (TypeError, ValueError):
        return None
