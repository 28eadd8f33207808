"""What the conversation keeps in memory per channel: its place in line, and where its last
prompt began."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, defaultdict
from contextlib import asynccontextmanager
from typing import AsyncIterator

from .core.types import Turn


class ChannelSequence:
    """One FIFO line per channel: a channel's messages, edits, deletes and resets happen one at a
    time, in the order they arrived; different channels never wait for each other. A line is
    forgotten when nobody is in it.

    Order holds because asyncio.Lock queues its waiters in order, and `turn()` joins the line
    before its first await: a caller that enters before any await of its own keeps its place."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: defaultdict[int, int] = defaultdict(int)

    def waiting(self) -> int:
        """Callers queued behind another in their channel's line (safe from any thread)."""
        counts = list(self._users.values())
        return sum(counts) - len(counts)

    def busy(self, channel_id: int) -> bool:
        """Whether anything is being done, or waits to be, in the channel."""
        return channel_id in self._users

    @asynccontextmanager
    async def turn(self, channel_id: int) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        self._users[channel_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[channel_id] -= 1
            if not self._users[channel_id]:
                del self._users[channel_id], self._locks[channel_id]


class PromptStarts:
    """Per channel, the row id of the oldest turn in its last prompt (bounded, least recently used out).
    Starting the next prompt there keeps prompts append-only, which keeps prefix caches valid."""

    def __init__(self, capacity: int = 50_000):
        self._starts: OrderedDict[int, int] = OrderedDict()
        self._capacity = capacity

    def remember(self, channel_id: int, turn_id: int) -> None:
        self._starts[channel_id] = turn_id
        self._starts.move_to_end(channel_id)
        while len(self._starts) > self._capacity:
            self._starts.popitem(last=False)

    def index_in(self, channel_id: int, turns: list[Turn]) -> int | None:
        turn_id = self._starts.get(channel_id)
        return next((i for i, turn in enumerate(turns) if turn.id == turn_id), None) if turn_id else None

    def forget(self, channel_id: int) -> None:
        self._starts.pop(channel_id, None)


class Wipes:
    """When each channel's history was last wiped (/reset, the channel deleted), each person
    last asked to be forgotten (/forget-me) and each server's data was deleted (the bot was
    removed), on one clock that also stamps messages as they arrive. A message that came before
    such a wipe, still waiting for its channel's turn, is then dropped: answering and storing it
    after the wipe would undo what was asked."""

    def __init__(self, marks_kept: int = 50_000):
        self._clock = itertools.count()
        self._channels: dict[int, int] = {}
        # Bounded: every message that came before has gone by long before so many more are marked.
        self._people: OrderedDict[int, int] = OrderedDict()
        self._servers: OrderedDict[int, int] = OrderedDict()  # servers whose data was deleted (the bot left)
        self._marks_kept = marks_kept

    def arrived(self) -> int:
        """A message's stamp, taken as it arrives (before it waits for its turn)."""
        return next(self._clock)

    def channel_wiped(self, channel_id: int) -> int:
        self._channels[channel_id] = stamp = next(self._clock)
        return stamp

    def channel_wipe_done(self, channel_id: int, stamp: int) -> None:
        """Called in the channel's turn: the messages that came before the wipe have gone by."""
        if self._channels.get(channel_id) == stamp:
            del self._channels[channel_id]

    def person_forgotten(self, author_id: int) -> None:
        self._mark(self._people, author_id)

    def server_forgotten(self, guild_id: int) -> None:
        self._mark(self._servers, guild_id)

    def _mark(self, marks: OrderedDict[int, int], key: int) -> None:
        marks[key] = next(self._clock)
        marks.move_to_end(key)
        while len(marks) > self._marks_kept:
            marks.popitem(last=False)

    def channel_wiped_since(self, channel_id: int, arrived: int) -> bool:
        return self._channels.get(channel_id, -1) > arrived

    def forgotten_since(self, author_id: int, arrived: int) -> bool:
        return self._people.get(author_id, -1) > arrived

    def server_forgotten_since(self, guild_id: int | None, arrived: int) -> bool:
        return guild_id is not None and self._servers.get(guild_id, -1) > arrived
