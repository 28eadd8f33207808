"""Shared fixtures. The real embedded model is loaded once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from bot.config import Settings, load_settings
from bot.llm.worker import ModelWorker
from bot.service import ChatService
from bot.store import Store
from tests.support.discord_scene import Scene, running_bot
from tests.support.scripted import ScriptedBackend
from tests.support.settings import REPO_ROOT, settings_for

# A throwaway PostgreSQL server for the storage tests (skipped, loudly, where it cannot start).
pytest_plugins = ["tests.support.loud_skips", "tests.support.postgres"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return settings_for(tmp_path / "bot.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """For the storage tests that run on both backends the bot supports."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
async def any_store(database_url):
    """A store on each backend in turn (SQLite, then a fresh PostgreSQL database)."""
    store = await Store.open(database_url)
    yield store
    await store.close()


@pytest.fixture
async def store(settings):
    store = await Store.open(settings.database.url)
    yield store
    await store.close()


@pytest.fixture
def scripted() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def scripted_service(store, settings, scripted):
    worker = ModelWorker(scripted, timeout_s=5)
    yield ChatService(store, worker, settings)
    worker.close()


@pytest.fixture
async def scene(tmp_path) -> AsyncIterator[Scene]:
    """Our bot on a fake Discord with a small world (tests/support/discord_scene.py)."""
    async with running_bot(tmp_path) as scene:
        yield scene


@pytest.fixture(scope="session")
def embedded_backend():
    """The real SmolLM2-135M-Instruct, loaded once per session. Pair it with
    settings_for(..., do_sample=False) so that its answers are repeatable."""
    from bot.llm.transformers_backend import load_transformers_backend

    # float32 pinned: "auto" picks bfloat16 on CPUs with native bf16, and the greedy answers
    # that the memory tests check were verified in float32.
    settings = load_settings(REPO_ROOT / "config.toml",
                             environ={"BOT_MODEL_NAME": "embedded", "BOT_MODEL_DTYPE": "float32"})
    return load_transformers_backend(settings.model)


@pytest.fixture(scope="session")
def embedded_worker(embedded_backend):
    """The embedded model behind the one-at-a-time worker (transformers' own generate)."""
    worker = ModelWorker(embedded_backend, timeout_s=120)
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def embedded_engine(embedded_backend):
    """The embedded model behind the batching engine: what the bot runs by default."""
    from bot.llm.engine import BatchingEngine

    engine = BatchingEngine(embedded_backend, timeout_s=120)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_smollm3_dir(tmp_path_factory) -> Path:
    from tests.support.tiny_smollm3 import build_tiny_smollm3

    return build_tiny_smollm3(tmp_path_factory.mktemp("tiny-smollm3"))


@pytest.fixture
async def make_engine():
    """make(backend, **options): a batching engine (tests/support/engines.py SteeredEngine), closed after the test."""
    from tests.support.engines import SteeredEngine

    engines = []

    def make(backend, **options) -> SteeredEngine:
        engines.append(SteeredEngine(backend, **options))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()
