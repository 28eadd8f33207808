"""Per-user cooldowns: a token bucket per person, so one person cannot monopolise the model.

Each user has a bucket of `burst` messages that refills at `per_minute` messages a minute.
A message takes one token; with none left, the caller is told how long until one is back.
Pure logic with an injectable clock, so it is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    updated_at: float
    told: bool = False  # refused and told to slow down since the last message let through


class UserCooldowns:
    """`wait_before(user)` takes a token and returns 0, or returns the seconds until one is free.

    `per_minute = 0` switches cooldowns off. Users whose bucket has refilled are forgotten
    now and then, so memory stays bounded by the people active in the last few minutes.
    """

    def __init__(self, per_minute: float, burst: int, clock: Clock = time.monotonic,
                 prune_every: int = 1000):
        self.per_second = per_minute / 60
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._prune_every = prune_every
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def wait_before(self, user: Hashable) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        self._prune_now_and_then(now)
        bucket = self._refilled(user, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            bucket.told = False
            return 0.0
        return (1 - bucket.tokens) / self.per_second

    def mark_told(self, user: Hashable) -> None:
        """The person was refused and told to slow down: until a token is back, their messages
        are passed over quietly (`silenced`). Answering each message of a flood with a message
        would double the flood, and meet Discord's rate limit."""
        bucket = self._buckets.get(user)
        if bucket is not None:
            bucket.told = True

    def silenced(self, user: Hashable) -> bool:
        """Told to slow down and still without a token: their messages are passed over quietly."""
        bucket = self._buckets.get(user)
        return self.enabled and bucket is not None and bucket.told and self._refilled(user, self.clock()).tokens < 1

    def _refilled(self, user: Hashable, now: float) -> _Bucket:
        bucket = self._buckets.setdefault(user, _Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated_at) * self.per_second)
        bucket.updated_at = now
        return bucket

    def _prune_now_and_then(self, now: float) -> None:
        self._calls += 1
        if self._calls % self._prune_every:
            return
        full_after = self.burst / self.per_second
        self._buckets = {user: bucket for user, bucket in self._buckets.items()
                         if now - bucket.updated_at < full_after}

    def __len__(self) -> int:
        return len(self._buckets)


def whole_seconds(wait: float) -> int:
    """What to tell a person: never "try again in 0 seconds"."""
    return max(1, math.ceil(wait))
