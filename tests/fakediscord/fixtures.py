"""pytest fixtures ``fake_discord`` and ``world``. Enable them in a test module::

    pytest_plugins = ["tests.fakediscord.fixtures"]

(They live here rather than in a conftest.py on purpose. Do not also import
this module directly, or pytest cannot assert-rewrite it.)
"""

from __future__ import annotations

from typing import AsyncIterator

import pytest_asyncio

from .harness import World, build_world
from .install import point_discord_py_at
from .server import FakeDiscord


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord with discord.py pointed at it."""
    async with FakeDiscord() as fake:
        with point_discord_py_at(fake):
            yield fake


@pytest_asyncio.fixture
async def world(fake_discord: FakeDiscord) -> World:
    return build_world(fake_discord)
