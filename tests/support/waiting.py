"""Waiting for something another task, thread or process does, without guessing how long it takes."""

from __future__ import annotations

import asyncio
import inspect
from typing import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[bool]], limit_s: float = 30.0) -> None:
    """Until `condition()` (a plain or an async function) holds, checked every 10 ms. The limit
    only guards against a hang: it is far above what anything takes on a busy machine."""
    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    async with asyncio.timeout(limit_s):
        while not await holds():
            await asyncio.sleep(0.01)
