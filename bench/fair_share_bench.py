"""Fair share: how long one server's single message waits behind another server's flood.

The real batching engine with the embedded SmolLM2 (8 places, greedy, 24 new tokens a reply)
behind the real chat service and a SQLite file. Server A sends 40 messages over 20 channels at
once; once they are queued, server B sends one. Measured: B's wait from asking to its first
piece of answer, and A's whole flood, with the fair share (round-robin across servers, at most
half the places to one server while others wait) and without it (every reply in one first-come
queue, as before).

    python -m bench fair
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bot import messages
from bot.config import ModelSettings
from bot.llm.engine import BatchingEngine
from bot.llm.transformers_backend import load_transformers_backend
from bot.service import ChatService
from bot.store import Store
from tests.support.conversation import said
from tests.support.settings import settings_for

WAITING_NOTICE = messages.QUEUED.split("{")[0]  # "waiting for a place" progress, not an answer
SERVER_A, SERVER_B, CHANNELS, PER_CHANNEL, PLACES = 100, 200, 20, 2, 8


async def flood_and_one(engine: BatchingEngine, folder: Path, fair: bool) -> tuple[float, float]:
    folder.mkdir(exist_ok=True)
    settings = settings_for(folder / f"fair-{fair}.db", do_sample=False, max_new_tokens=24)
    store = await Store.open(settings.database.url)
    service = ChatService(store, engine, settings)
    if not fair:  # every reply one tenant: a single first-come queue
        service._model_turn = lambda message: service._fair.turn("everyone")
    started = time.monotonic()
    flood = [asyncio.create_task(service.reply(said(f"Tell me about the number {n}.", channel=channel,
                                                    guild=SERVER_A)))
             for n in range(PER_CHANNEL) for channel in range(1, CHANNELS + 1)]
    while service.replies_waiting_for_model() < CHANNELS - PLACES:  # A's first reply of each channel is in or queued
        await asyncio.sleep(0.01)
    first_piece = asyncio.get_running_loop().create_future()

    async def on_progress(text: str) -> None:
        if text and not text.startswith(WAITING_NOTICE) and not first_piece.done():
            first_piece.set_result(time.monotonic())

    asked = time.monotonic()
    lone = asyncio.create_task(service.reply(said("Say hello.", channel=999, guild=SERVER_B, author_id=7),
                                             on_progress=on_progress))
    b_wait = await first_piece - asked
    await asyncio.gather(*flood, lone)
    flood_s = time.monotonic() - started
    await store.close()
    return b_wait, flood_s


async def main() -> None:
    threads = max(1, (os.cpu_count() or 2))
    backend = load_transformers_backend(ModelSettings(name="embedded", device_map="cpu", dtype="float32"))
    engine = BatchingEngine(backend, max_batch=PLACES, max_waiting=200, timeout_s=600, torch_threads=threads)
    try:
        with tempfile.TemporaryDirectory() as folder:
            await flood_and_one(engine, Path(folder) / "warm-up", fair=True)  # first use of the engine is slower
            fifo_wait, fifo_flood = await flood_and_one(engine, Path(folder), fair=False)
            fair_wait, fair_flood = await flood_and_one(engine, Path(folder), fair=True)
    finally:
        engine.close()
    print(f"fair share: server A floods {CHANNELS * PER_CHANNEL} messages over {CHANNELS} channels, then "
          f"server B sends one; real engine, {PLACES} places, embedded SmolLM2, 24 tokens a reply")
    print(f"  B's wait for its first piece: {fair_wait:.2f} s fair, {fifo_wait:.2f} s first-come "
          f"({fifo_wait / fair_wait:.1f}x)")
    print(f"  A's whole flood: {fair_flood:.1f} s fair, {fifo_flood:.1f} s first-come")

