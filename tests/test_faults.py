"""Faults: each gets a clear message to the user, a log line for the operator, and the bot
keeps serving everyone else (another channel is answered after the fault).

Discord answering 429 / 5xx and the Gateway dropping are covered in test_discord_e2e.py;
the worker's own recovery from a raising or slow model in test_worker.py. Here: the
database locked by another process or full, and the model failing or running out of time
as users on Discord see it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from sqlalchemy import event

from bot import messages
from bot.llm.worker import ModelWorker
from bot.service import ChatService
from bot.store import Store, database
from tests.support.conversation import said as said_in
from tests.support.conversation import stored as turns
from tests.support.discord_scene import running_bot
from tests.support.scripted import ScriptedBackend
from tests.support.settings import settings_for
from tests.support.sqlite_file import integrity

SERVICE_LOG = "bot.service"


def said(text: str, channel: int = 1):
    return said_in(text, channel=channel)


@asynccontextmanager
async def scripted_service_on(path: Path) -> AsyncIterator[ChatService]:
    """The real flow and database at `path`, with an echoing scripted model; checked for
    integrity once closed."""
    store = await Store.open(settings_for(path).database.url)
    worker = ModelWorker(ScriptedBackend(), timeout_s=5)
    try:
        yield ChatService(store, worker, settings_for(path))
    finally:
        worker.close()
        await store.close()
    assert integrity(path) == "ok"


async def test_a_database_locked_past_the_busy_timeout_is_told_and_nothing_half_stored(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 200)  # wait 0.2 s, not 5, before giving up
    path = tmp_path / "bot.db"
    async with scripted_service_on(path) as service:
        store = service.store
        assert (await service.reply(said("before"))).ok
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool holding the write lock
        try:
            with caplog.at_level(logging.ERROR, logger=SERVICE_LOG):
                refused = await service.reply(said("while locked"))
        finally:
            other_process.execute("ROLLBACK")
            other_process.close()
        assert not refused.ok and refused.text == messages.STORAGE_FAILED
        assert any("reason=storage" in r.getMessage() and "locked" in r.getMessage() for r in caplog.records)

        assert (await service.reply(said("another channel", channel=2))).ok
        assert (await service.reply(said("after"))).ok
        assert await turns(store, 1) == [("user", "before"), ("assistant", "echo: Ann: before"),
                                         ("user", "after"), ("assistant", "echo: Ann: after")]


async def test_a_full_disk_is_told_and_the_database_stays_consistent(tmp_path, caplog):
    path = tmp_path / "bot.db"
    async with scripted_service_on(path) as service:
        store = service.store
        assert (await service.reply(said("before"))).ok
        full = disk_full_at_current_size(store, path)
        await store.engine.dispose()  # new connections, with the size cap
        with caplog.at_level(logging.ERROR, logger=SERVICE_LOG):
            refused = await service.reply(said("a long message " * 250))
        assert not refused.ok and refused.text == messages.STORAGE_FAILED
        assert any("reason=storage" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)

        event.remove(store.engine.sync_engine, "connect", full)  # space freed
        await store.engine.dispose()
        assert (await service.reply(said("another channel", channel=2))).ok
        assert (await service.reply(said("after"))).ok
        # Whichever write hit the cap (the question or its answer), no answer to it is stored,
        # and a question left without one does not trouble the next turn.
        stored = await turns(store, 1)
        assert not any(role == "assistant" and "a long message" in content for role, content in stored)
        assert stored[:2] == [("user", "before"), ("assistant", "echo: Ann: before")]
        assert stored[-2:] == [("user", "after"), ("assistant", "echo: Ann: after")]


def disk_full_at_current_size(store: Store, path):
    """SQLite's own page cap makes every write that needs a new page fail with SQLITE_FULL,
    the error a full disk gives, without filling a disk."""
    with sqlite3.connect(path) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]

    def cap(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count={pages}")
        cursor.close()
    event.listen(store.engine.sync_engine, "connect", cap)
    return cap


async def test_a_failing_model_is_told_in_its_channel_and_another_channel_is_answered(tmp_path, caplog):
    def breaks_on_request(prompt: list[dict]) -> str:
        if "break" in prompt[-1]["content"]:
            raise RuntimeError("CUDA error: an illegal memory access")
        return "fine: " + prompt[-1]["content"]

    async with running_bot(tmp_path, reply=breaks_on_request) as scene:
        random = scene.fake.add_text_channel(scene.world.guild, "random")
        with caplog.at_level(logging.ERROR, logger="bot.llm"):
            failed = await scene.ask("please break")
        elsewhere = await scene.ask("hello", channel=random)
        again = await scene.ask("and now?")
        assert failed.json["content"].startswith(messages.GENERATION_FAILED.split("{")[0])
        assert "RuntimeError" in failed.json["content"]
        assert any("the model failed" in r.getMessage() for r in caplog.records)
        assert elsewhere.json["content"] == "fine: Alice: hello"
        assert again.json["content"] == "fine: Alice: and now?"
        # The failed question is kept (it was asked); no answer is stored for it.
        assert await scene.turns() == [("user", "please break"), ("user", "and now?"),
                                       ("assistant", "fine: Alice: and now?")]


async def test_a_reply_past_its_time_limit_keeps_what_was_written_with_a_note(tmp_path, caplog):
    # Ten words, then the model stalls on an event set only once the test is done: the time
    # limit is sure to be hit with part of the answer written, however fast this machine is.
    stalled = threading.Event()
    slow = ScriptedBackend(reply=lambda prompt: " ".join(f"w{n}" for n in range(200)), gate=stalled,
                           gate_after_words=10)
    worker = ModelWorker(slow, timeout_s=2)
    try:
        async with running_bot(tmp_path, worker=worker, stream_edit_interval=0.0) as scene:
            random = scene.fake.add_text_channel(scene.world.guild, "random")
            with caplog.at_level(logging.WARNING, logger="bot.llm"):
                cut = await scene.ask("write a lot")
            slow.reply = lambda prompt: "short"
            elsewhere = await scene.ask("quick one", channel=random)
            [(_, question), (_, kept)] = await scene.turns()
    finally:
        stalled.set()
        worker.close()
    text = cut.json["content"]
    assert text.startswith("w0 w1") and text.endswith(f"\n-# {messages.CUT_SHORT_TIMEOUT}")
    assert question == "write a lot" and text.startswith(kept) and len(kept.split()) < 200
    assert any("passed its" in r.getMessage() for r in caplog.records)
    assert elsewhere.json["content"] == "short"
