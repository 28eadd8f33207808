"""A fair share of the model: replies waiting for it are let in round-robin across servers
(a direct message counts for its person), and while others wait, one server holds at most
`max_share` of the places the model writes in at once.

Without it, one busy server (or a flood of DMs) fills the model's queue and everyone else waits
behind all of it. Each channel's own order is kept by ChannelSequence, upstream: this only
decides which channel's next reply goes in when a place frees up. Runs on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter, deque
from contextlib import asynccontextmanager
from typing import AsyncIterator, Hashable

from .llm.port import ModelBusy

Tenant = Hashable  # a server's id, or ("dm", person) for direct messages


def tenant_of(guild_id: int | None, author_id: int | None) -> Tenant:
    return guild_id if guild_id is not None else ("dm", author_id)


class FairShare:
    def __init__(self, places: int, max_share: float = 1.0, max_waiting: int | None = None):
        self.places = places  # replies the model writes at once
        self.cap = max(1, math.floor(places * max_share))  # one tenant's places while others wait
        self.max_waiting = max_waiting  # past this many waiting, a new reply is refused (ModelBusy)
        self._holding: Counter[Tenant] = Counter()
        self._queues: dict[Tenant, deque[asyncio.Future]] = {}
        self._turns = itertools.count()
        self._last_turn: dict[Tenant, int] = {}  # when each tenant was last let in

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def place_in_line(self) -> int:
        """Where a reply asked for now would wait (0: a place is free)."""
        return self.waiting() + 1 if self._in_use() >= self.places else 0

    @asynccontextmanager
    async def turn(self, tenant: Tenant) -> AsyncIterator[None]:
        """Wait for a place for one reply of `tenant`, hold it for the block."""
        if self.max_waiting is not None and self._in_use() >= self.places and self.waiting() >= self.max_waiting:
            raise ModelBusy(self.waiting())
        granted = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(granted)
        self._let_in()
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # let in just as it was cancelled
                self._leave(tenant)
            else:
                self._drop(tenant, granted)
            raise
        try:
            yield
        finally:
            self._leave(tenant)

    def _in_use(self) -> int:
        return sum(self._holding.values())

    def _leave(self, tenant: Tenant) -> None:
        self._holding[tenant] -= 1
        if self._holding[tenant] <= 0:
            del self._holding[tenant]
            if tenant not in self._queues:  # idle again: nothing to remember (its next turn comes soon)
                self._last_turn.pop(tenant, None)
        self._let_in()

    def _drop(self, tenant: Tenant, granted: asyncio.Future) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self._queues[tenant]

    def _let_in(self) -> None:
        """Fill the free places, one reply per tenant in turn; a tenant at its cap is passed over
        while another tenant waits (alone, it may use every place: none would be used otherwise)."""
        while self._in_use() < self.places and self._queues:
            tenant = self._next_tenant()
            queue = self._queues[tenant]
            granted = queue.popleft()
            if not queue:
                del self._queues[tenant]
            if granted.done():  # its reply was cancelled while waiting (its task has yet to leave)
                continue
            self._holding[tenant] += 1
            self._last_turn[tenant] = next(self._turns)
            granted.set_result(None)

    def _next_tenant(self) -> Tenant:
        """Among the tenants under their cap (all of them if none is), the one holding fewest
        places, and of those the one let in longest ago: round-robin."""
        under_cap = [tenant for tenant in self._queues if self._holding[tenant] < self.cap] or list(self._queues)
        return min(under_cap, key=lambda tenant: (self._holding[tenant], self._last_turn.get(tenant, -1)))
