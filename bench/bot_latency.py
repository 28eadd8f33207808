"""P1: end-to-end bot latency over bare model.generate, for the same prompt and token count.

The bot side is the whole product path: a message arrives from a (fake, local) Discord
over the real discord.py client, is stored, the prompt is built with the chat template,
the batching engine writes the answer, it is cleaned, stored and posted back. The bare
side is `model.generate` on exactly the prompt the bot built, forced to write as many
tokens as the bot did. Both on the embedded model, greedy, in one run; medians of a few
alternating rounds. Goal: ratio <= 1.03.

    python -m bench latency
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bot.config import load_settings
from bot.discord_bot.client import ChatBot, required_intents
from bot.llm.engine import BatchingEngine
from bot.llm.transformers_backend import load_transformers_backend
from bot.service import ChatService
from bot.store import Store
from tests.fakediscord import FakeDiscord
from tests.fakediscord.harness import build_world, make_client, running_client

ROUNDS = 3
NEW_TOKENS = 60
QUESTION = "Tell me a long story about a dragon who loves tea."


async def bot_round(fake, world, store, engine, round_number: int) -> tuple[float, list[dict], int]:
    """Seconds from the message arriving to its final reply being posted; the prompt; tokens written."""
    channel = fake.add_text_channel(world.guild, f"bench-{round_number}")
    before = engine.counters.generated_tokens
    sent_at = time.monotonic()
    await fake.send_message(channel, world.alice, f"{fake.bot.mention} {QUESTION}")
    # Polled slowly: the time measured is the fake's own record of the final post, and a busy
    # poll would take CPU (and the GIL) from the bot being measured.
    while not [t for t in await store.recent_turns(channel.id, 2) if t.role == "assistant"]:
        await asyncio.sleep(0.2)
    [answer] = [t.content for t in await store.recent_turns(channel.id, 2) if t.role == "assistant"]
    posted = await final_post(fake, channel.id, answer)
    return posted.time - sent_at, engine.last_prompt, engine.counters.generated_tokens - before


async def final_post(fake, channel_id: int, answer: str):
    """The request that put the finished answer on Discord: the reply itself, or the last edit
    of a reply that was shown while it was written."""
    paths = (f"/channels/{channel_id}/messages", f"/channels/{channel_id}/messages/{{id}}")
    while True:
        for method, path in (("POST", paths[0]), ("PATCH", paths[1])):
            done = [r for r in fake.requests_to(method, path) if (r.json or {}).get("content") == answer]
            if done and done[-1].status is not None:
                return done[-1]
        await asyncio.sleep(0.05)


def bare_generate(backend, prompt, tokens: int) -> float:
    input_ids = torch.tensor([prompt.token_ids])
    started = time.monotonic()
    backend.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                           max_new_tokens=tokens, min_new_tokens=tokens, repetition_penalty=1.0,
                           pad_token_id=backend.stop_ids[0])
    return time.monotonic() - started


class RecordingEngine(BatchingEngine):
    """The engine, remembering the last prompt it was given (so the bare run uses the same ids)."""

    def stream(self, prompt, params, **kwargs):
        self.last_prompt = prompt
        return super().stream(prompt, params, **kwargs)


async def main() -> None:
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(environ={
            "BOT_MODEL_NAME": "embedded", "BOT_MODEL_DTYPE": "float32",
            "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}",
            "BOT_GENERATION_DO_SAMPLE": "false", "BOT_GENERATION_REPETITION_PENALTY": "1.0",
            "BOT_GENERATION_MAX_NEW_TOKENS": str(NEW_TOKENS)})
        backend = load_transformers_backend(settings.model)
        engine = RecordingEngine(backend, torch_threads=threads)
        store = await Store.open(settings.database.url)
        bot_times, bare_times = [], []
        try:
            async with FakeDiscord() as fake:
                world = build_world(fake)
                bot = make_client(ChatBot, intents=required_intents(),
                                  service=ChatService(store, engine, settings), settings=settings.discord)
                async with running_client(fake, bot):
                    await bot_round(fake, world, store, engine, -1)  # warm-up
                    for round_number in range(ROUNDS):
                        seconds, prompt, tokens = await bot_round(fake, world, store, engine, round_number)
                        bot_times.append(seconds)
                        bare_times.append(await asyncio.to_thread(bare_generate, backend, prompt, tokens))
        finally:
            engine.close()
            await store.close()
    bot, bare = statistics.median(bot_times), statistics.median(bare_times)
    print(f"\nP1: end-to-end bot latency vs bare model.generate ({backend.name}, greedy, {tokens} tokens, "
          f"torch threads: {threads}, median of {ROUNDS})")
    print(f"  bot (message in -> final reply posted): {bot:6.2f} s   {', '.join(f'{t:.2f}' for t in bot_times)}")
    print(f"  bare model.generate, same prompt:       {bare:6.2f} s   {', '.join(f'{t:.2f}' for t in bare_times)}")
    print(f"  ratio bot / bare: {bot / bare:.3f} (goal <= 1.03)")
