"""Snowflake and token generation.

Real Discord IDs are "snowflakes": the creation time (milliseconds since the
Discord epoch) shifted left by 22 bits, plus worker/process/increment bits.
discord.py derives ``created_at`` from the ID, so we generate time-based IDs to
keep timestamps plausible, while guaranteeing strict monotonicity so that IDs
created in quick succession still sort in creation order (message history
pagination relies on that).
"""

from __future__ import annotations

import secrets
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeGenerator:
    """Produces strictly increasing, time-based snowflake IDs."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now_ms = int(time.time() * 1000)
        time_based = (now_ms - DISCORD_EPOCH_MS) << 22
        # Several IDs per millisecond are common in tests: bump the low bits.
        self._last = max(self._last + 1, time_based)
        return self._last


def snowflake_time_iso(snowflake: int) -> str:
    """ISO-8601 timestamp encoded in ``snowflake`` (what Discord sends as ``timestamp``)."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return iso_from_ms(ms)


def iso_from_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{millis:03d}000+00:00"


def now_iso() -> str:
    return iso_from_ms(int(time.time() * 1000))


def new_token(prefix: str = "") -> str:
    """Opaque random string, used for session IDs and interaction tokens."""
    return prefix + secrets.token_urlsafe(24)
