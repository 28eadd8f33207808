"""The fake Gateway: Discord's WebSocket protocol, JSON encoding, version 10.

Protocol implemented (see Discord's "Gateway" documentation):

* on connect send HELLO (op 10) with ``heartbeat_interval``;
* HEARTBEAT (op 1) is answered with HEARTBEAT_ACK (op 11);
* IDENTIFY (op 2) starts a new *session*: READY, then one GUILD_CREATE per
  guild the bot is in (READY lists them as unavailable, like Discord does);
* RESUME (op 6) re-attaches a session: every event with a sequence number
  above the client's is replayed, then RESUMED; unknown sessions get
  INVALID_SESSION (op 9, not resumable);
* REQUEST_GUILD_MEMBERS (op 8) is answered with one GUILD_MEMBERS_CHUNK.
* IDENTIFY with ``shard: [id, count]`` makes a sharded session: like Discord, it
  gets only the guilds with ``(guild_id >> 22) % count == id`` (READY, GUILD_CREATE
  and their events), and events outside any guild (DMs) go to shard 0 only.

Every DISPATCH (op 0) gets the session's next sequence number and is kept in
the session's log, so events that happen while the bot is disconnected are
delivered on resume, exactly what a resume is for.

Frames are sent as plain text. discord.py asks for ``compress=zlib-stream``
(or zstd-stream) in the URL but only decompresses *binary* frames, so text
frames work and we skip compression.

Each connection has one writer task fed by a queue: events can be dispatched
from synchronous code while keeping a strict order on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Set

from aiohttp import WSMsgType, web

from . import messages, payloads
from .ids import new_token
from .state import FakeState

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE_UPDATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_GUILD_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 6, 7, 8, 9, 10, 11

# Close codes, per Discord's documentation.
CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_WEBHOOKS = 1 << 5
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

_GUILD_EVENT_INTENTS = {
    "GUILD_CREATE": INTENT_GUILDS,
    "GUILD_UPDATE": INTENT_GUILDS,
    "GUILD_DELETE": INTENT_GUILDS,
    "GUILD_ROLE_CREATE": INTENT_GUILDS,
    "CHANNEL_CREATE": INTENT_GUILDS,
    "CHANNEL_UPDATE": INTENT_GUILDS,
    "CHANNEL_DELETE": INTENT_GUILDS,
    "THREAD_CREATE": INTENT_GUILDS,
    "THREAD_DELETE": INTENT_GUILDS,
    "WEBHOOKS_UPDATE": INTENT_GUILD_WEBHOOKS,
    "GUILD_MEMBER_ADD": INTENT_GUILD_MEMBERS,
    "GUILD_MEMBER_UPDATE": INTENT_GUILD_MEMBERS,
    "GUILD_MEMBER_REMOVE": INTENT_GUILD_MEMBERS,
    "MESSAGE_REACTION_ADD": INTENT_GUILD_MESSAGE_REACTIONS,
}
_MESSAGE_EVENTS = {"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK"}


class GatewayConnection:
    """One WebSocket, with an ordered outgoing queue."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.session: Optional[GatewaySession] = None
        # True when *we* closed it; a client-side 1000/1001 close instead
        # means the client is done with its session.
        self.server_closed = False
        self._queue: "asyncio.Queue[tuple]" = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def send(self, payload: dict) -> "asyncio.Future[None]":
        """Queue a frame; the returned future resolves once it was written."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((payload, future))
        return future

    async def _write_loop(self) -> None:
        while True:
            payload, future = await self._queue.get()
            try:
                await self.ws.send_str(json.dumps(payload))
            except (ConnectionError, RuntimeError):
                pass  # the socket went away; the session log still has the event
            finally:
                # Also on cancellation (close()), so nobody awaits it forever.
                if not future.done():
                    future.set_result(None)

    async def close(self, code: int) -> None:
        """Close now, dropping unsent frames (they stay in the session log)."""
        self._writer.cancel()
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_result(None)
        if not self.ws.closed:
            await self.ws.close(code=code)


def event_guild_id(event: str, data: dict) -> Optional[int]:
    """The guild an event belongs to (which decides its shard); None outside guilds."""
    guild_id = data.get("guild_id")
    if guild_id is None and event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"):
        guild_id = data.get("id")
    return int(guild_id) if guild_id is not None else None


class GatewaySession:
    """What Discord keeps per IDENTIFY: id, intents, sequence and event log."""

    def __init__(self, token: str, intents: int, shard: Optional[List[int]] = None) -> None:
        self.session_id = new_token()
        self.shard_id, self.shard_count = shard if shard else (0, 1)
        self.token = token
        self.intents = intents
        self.seq = 0
        self.log: List[dict] = []
        self.connection: Optional[GatewayConnection] = None

    def frame(self, event: str, data: Any) -> dict:
        self.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.log.append(frame)
        return frame

    def send(self, frame: dict) -> Optional["asyncio.Future[None]"]:
        return self.connection.send(frame) if self.connection else None

    def receives(self, guild_id: Optional[int]) -> bool:
        """Whether this session's shard carries the guild's events (DMs: shard 0)."""
        if guild_id is None:
            return self.shard_id == 0
        return (guild_id >> 22) % self.shard_count == self.shard_id


class Gateway:
    def __init__(
        self,
        state: FakeState,
        *,
        token: str,
        gateway_url: Callable[[], str],
        heartbeat_interval_ms: int,
        application_flags: int,
    ) -> None:
        self._state = state
        self._token = token
        self._gateway_url = gateway_url
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._application_flags = application_flags
        self.sessions: Dict[str, GatewaySession] = {}
        self.connections: Set[GatewayConnection] = set()
        self.identify_count = 0
        self.resume_count = 0
        self.received: List[dict] = []  # every payload the client sent us
        self.replayed_count = 0  # events re-sent on RESUME, in total
        # Cleared by FakeDiscord.hold_gateway(): new sockets wait before HELLO.
        self.accepting = asyncio.Event()
        self.accepting.set()
        self._connected = asyncio.Event()
        self._changed = asyncio.Condition()

    # --------------------------------------------------------- WebSocket side
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        await self.accepting.wait()
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConnection(ws)
        self.connections.add(conn)
        conn.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_payload(conn, json.loads(msg.data))
        finally:
            await self._detach(conn)
        return ws

    async def _on_payload(self, conn: GatewayConnection, payload: dict) -> None:
        self.received.append(payload)
        op, data = payload.get("op"), payload.get("d")
        if op == HEARTBEAT:
            conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            await self._identify(conn, data)
        elif op == RESUME:
            await self._resume(conn, data)
        elif conn.session is None:
            await conn.close(CLOSE_NOT_AUTHENTICATED)
        elif op == REQUEST_GUILD_MEMBERS:
            self._send_member_chunk(conn.session, data)
        elif op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            pass  # recorded in ``received``; nothing to answer
        else:
            await conn.close(CLOSE_UNKNOWN_OPCODE)

    async def _identify(self, conn: GatewayConnection, data: dict) -> None:
        if conn.session is not None:
            await conn.close(CLOSE_ALREADY_AUTHENTICATED)
            return
        if data.get("token") != self._token:
            await conn.close(CLOSE_AUTHENTICATION_FAILED)
            return
        session = GatewaySession(self._token, int(data.get("intents", 0)), data.get("shard"))
        self.sessions[session.session_id] = session
        self.identify_count += 1
        self._attach(conn, session)
        futures = [session.send(session.frame("READY", self._ready_payload(session)))]
        for guild in self._guilds_of(session):
            futures.append(session.send(session.frame("GUILD_CREATE", self._guild_create(session, guild))))
        await self._mark_connected(futures)

    async def _resume(self, conn: GatewayConnection, data: dict) -> None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != session.token:
            conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        if session.connection is not None and session.connection is not conn:
            await session.connection.close(4000)  # Discord kicks the stale socket
        self.resume_count += 1
        self._attach(conn, session)
        last_seen = data.get("seq") or 0
        futures = [conn.send(frame) for frame in session.log if frame["s"] > last_seen]
        self.replayed_count += len(futures)
        futures.append(session.send(session.frame("RESUMED", {})))
        await self._mark_connected(futures)

    def _attach(self, conn: GatewayConnection, session: GatewaySession) -> None:
        conn.session = session
        session.connection = conn

    async def _mark_connected(self, futures: List[Optional[asyncio.Future]]) -> None:
        await asyncio.gather(*(f for f in futures if f is not None))
        self._connected.set()
        async with self._changed:
            self._changed.notify_all()

    async def _detach(self, conn: GatewayConnection) -> None:
        self.connections.discard(conn)
        client_ended_session = conn.ws.close_code in (1000, 1001) and not conn.server_closed
        await conn.close(1000)
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None
            # A client closing with 1000/1001 ends its session for good.
            if client_ended_session:
                self.sessions.pop(session.session_id, None)
        if not any(s.connection for s in self.sessions.values()):
            self._connected.clear()
        async with self._changed:
            self._changed.notify_all()

    # --------------------------------------------------------------- payloads
    def _ready_payload(self, session: GatewaySession) -> dict:
        return {
            "v": 10,
            "user": payloads.current_user(self._state.bot),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self._guilds_of(session)],
            "session_id": session.session_id,
            "shard": [session.shard_id, session.shard_count],
            "session_type": "normal",
            "resume_gateway_url": self._gateway_url(),
            "application": {"id": str(self._state.application_id), "flags": self._application_flags},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "user_settings": {},
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "auth_session_id_hash": "",
            "_trace": ["fakediscord"],
        }

    def _guilds_of(self, session: GatewaySession) -> list:
        return [guild for guild in self._state.bot_guilds() if session.receives(guild.id)]

    def _guild_create(self, session: GatewaySession, guild) -> dict:
        return payloads.guild_create(
            guild,
            bot_id=self._state.bot.id,
            include_all_members=bool(session.intents & INTENT_GUILD_MEMBERS),
        )

    def _send_member_chunk(self, session: GatewaySession, data: dict) -> None:
        guild = self._state.guilds.get(int(data["guild_id"]))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.user.username.lower().startswith(data["query"].lower())]
        if data.get("limit"):
            members = members[: data["limit"]]
        chunk = {
            "guild_id": str(guild.id),
            "members": [payloads.member(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "presences": [],
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        session.send(session.frame("GUILD_MEMBERS_CHUNK", chunk))

    # ----------------------------------------------------------- server side
    def dispatch(self, event: str, data: dict) -> List[asyncio.Future]:
        """Send an event to every live session that would receive it.

        Sessions whose socket is down still log it, for replay on RESUME.
        """
        futures = []
        guild_id = event_guild_id(event, data)
        for session in self.sessions.values():
            if not session.receives(guild_id):
                continue
            shaped = shape_for_intents(session.intents, event, data, self._state.bot.id)
            if shaped is None:
                continue
            future = session.send(session.frame(event, shaped))
            if future is not None:
                futures.append(future)
        return futures

    def dispatch_guild_create(self, guild) -> List[asyncio.Future]:
        """GUILD_CREATE is rendered per session: its member list depends on intents."""
        futures = []
        for session in self.sessions.values():
            if not session.receives(guild.id):
                continue
            future = session.send(session.frame("GUILD_CREATE", self._guild_create(session, guild)))
            if future is not None:
                futures.append(future)
        return futures

    async def drop(self, code: int = 4000) -> None:
        """Close every socket from the server side; sessions stay resumable."""
        self._connected.clear()
        for conn in list(self.connections):
            conn.server_closed = True
            await conn.close(code)

    async def send_op(self, op: int, data: Any) -> None:
        for conn in list(self.connections):
            await conn.send({"op": op, "d": data, "s": None, "t": None})

    async def invalidate_sessions(self, resumable: bool) -> None:
        """INVALID_SESSION to every socket; forgets sessions unless resumable."""
        if not resumable:
            self.sessions.clear()
        await self.send_op(INVALID_SESSION, resumable)

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_for_counts(self, *, identifies: int = 0, resumes: int = 0, timeout: float = 2.0) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: (
                        self.identify_count >= identifies and self.resume_count >= resumes and self._connected.is_set()
                    )
                )

        await asyncio.wait_for(wait(), timeout)

    async def close_all(self) -> None:
        self.accepting.set()  # let held handshakes finish so shutdown can't hang
        for conn in list(self.connections):
            conn.server_closed = True
            await conn.close(1001)


def shape_for_intents(intents: int, event: str, data: dict, bot_id: int) -> Optional[dict]:
    """The event as a session with ``intents`` sees it, or None if not sent."""
    needed = _GUILD_EVENT_INTENTS.get(event)
    if needed is not None and not intents & needed:
        return None
    if event not in _MESSAGE_EVENTS:
        return data
    in_guild = "guild_id" in data
    if not intents & (INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES):
        return None
    # Discord blanks content for guild messages unless the bot wrote it, is
    # mentioned in it, or has the (privileged) MESSAGE_CONTENT intent.
    exempt = (
        not in_guild
        or intents & INTENT_MESSAGE_CONTENT
        or event in ("MESSAGE_DELETE", "MESSAGE_DELETE_BULK")
        or int(data.get("author", {}).get("id", 0)) == bot_id
        or messages.mentions_user(data, bot_id)
    )
    return data if exempt else messages.redact_content(data)
