"""The batching engine on the embedded model (SmolLM2-135M, CPU), measured in one run.

P2  8 channels asking at once: total throughput batched over one at a time (the same
    engine, each request awaited before the next: batch size 1), and per-channel
    latency (time from asking to the full reply), max and median.
P3  event-loop lag while the engine generates: a task sleeps 5 ms again and again and
    records how late it wakes (p50 / p99 / max), idle and during the P2 batch.
P5  time to first token of a channel's next turn with ~1,500 tokens of history, with
    the channel's kept cache over without it (goal >= 10x).

Greedy decoding and a fixed max_new_tokens throughout, so runs compare. torch runs one
intra-op thread unless BENCH_TORCH_THREADS says otherwise: on a 2-core machine that also
runs other work (and this event loop), 2 OpenMP threads stall on each other and made
every decode step 2-4x slower than 1 thread, plain generate(model, ) included.

    python -m bench engine
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time

from bot.config import GenerationSettings, ModelSettings
from bot.core.cleaning import clean_reply
from bot.llm.engine import BatchingEngine
from bot.llm.transformers_backend import load_transformers_backend
from tests.support.models import generate, stream

CHANNELS = 8
NEW_TOKENS = 40
HISTORY_TOKENS = 1500
GREEDY = GenerationSettings(do_sample=False, max_new_tokens=NEW_TOKENS, repetition_penalty=1.0)
PERSONA = {"role": "system", "content": "You are a friendly assistant in a Discord server. Answer in detail."}
TOPICS = ["the history of tea", "how rainbows form", "why cats purr", "the rules of chess",
          "how bread rises", "the life of bees", "how volcanoes erupt", "the moon landing"]


def ask(text: str) -> list[dict[str, str]]:
    return [PERSONA, {"role": "user", "content": f"alice: Tell me a long story about {text}."}]


class LoopLag:
    """Sleeps 5 ms over and over and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append(loop.time() - started - 0.005)

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()

    def summary(self) -> str:
        ordered = sorted(self.lags) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"p50 {statistics.median(ordered) * 1000:5.2f} ms  p99 {p99 * 1000:5.2f} ms  "
                f"max {ordered[-1] * 1000:5.2f} ms  ({len(ordered)} samples)")

    def p99(self) -> float:
        ordered = sorted(self.lags) or [0.0]
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def timed(engine: BatchingEngine, messages, started: float) -> tuple[str, float]:
    reply = await generate(engine, messages, GREEDY)
    return reply, time.perf_counter() - started


async def one_at_a_time(engine: BatchingEngine) -> tuple[list[str], list[float], float, int]:
    """All channels ask at t=0 and are served in turn: channel i waits for all before it."""
    before = engine.counters.generated_tokens
    started = time.perf_counter()
    results = [await timed(engine, ask(topic), started) for topic in TOPICS]
    wall = time.perf_counter() - started
    return [r for r, _ in results], [t for _, t in results], wall, engine.counters.generated_tokens - before


async def all_at_once(engine: BatchingEngine) -> tuple[list[str], list[float], float, int]:
    before = engine.counters.generated_tokens
    started = time.perf_counter()
    results = await asyncio.gather(*(timed(engine, ask(topic), started) for topic in TOPICS))
    wall = time.perf_counter() - started
    return [r for r, _ in results], [t for _, t in results], wall, engine.counters.generated_tokens - before


def long_history(engine: BatchingEngine) -> list[dict[str, str]]:
    """A channel's conversation of about HISTORY_TOKENS tokens, ending with a user turn."""
    messages = [PERSONA]
    turn = 0
    while engine.render(messages).tokens < HISTORY_TOKENS:
        messages.append({"role": "user", "content": f"bob: Here is fact number {turn} about {TOPICS[turn % 8]}: "
                         "it is interesting, it has a long history, and people like to talk about it a lot."})
        messages.append({"role": "assistant", "content": f"Thanks, bob! Fact {turn} is noted. "
                         "I enjoyed reading it and I will remember it for later in our chat."})
        turn += 1
    messages.append({"role": "user", "content": "bob: What did we talk about so far?"})
    return messages


async def time_to_first_token(engine: BatchingEngine, messages, channel) -> float:
    started = time.perf_counter()
    async with contextlib.aclosing(stream(engine, messages, GREEDY, channel=channel)) as deltas:
        async for _ in deltas:
            break
    return time.perf_counter() - started


async def next_turn_ttft(engine: BatchingEngine, history, channel) -> tuple[float, float, int]:
    """Answer one turn for the channel, then time its next turn's first token with and without its cache."""
    answer = await generate(engine, history, GREEDY, channel=channel)
    next_turn = history + [{"role": "assistant", "content": clean_reply(answer) or "ok"},
                           {"role": "user", "content": "alice: And what should we talk about next?"}]
    reused_before = engine.counters.reused_tokens
    cached = await time_to_first_token(engine, next_turn, channel)
    reused = engine.counters.reused_tokens - reused_before
    uncached = await time_to_first_token(engine, next_turn, None)
    return cached, uncached, reused


def print_latencies(label: str, latencies: list[float], wall: float, tokens: int) -> None:
    print(f"{label:>14} | {wall:7.2f} s | {tokens:6d} | {tokens / wall:7.1f} | "
          f"{max(latencies):7.2f} s | {statistics.median(latencies):7.2f} s")


async def main() -> None:
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
    backend = load_transformers_backend(ModelSettings(name="embedded", device_map="cpu", dtype="float32"))
    engine = BatchingEngine(backend, max_batch=CHANNELS, timeout_s=600, torch_threads=threads)
    try:
        await generate(engine, ask("warming up"), GenerationSettings(do_sample=False, max_new_tokens=4))
        print(f"\nBatching engine, {backend.name}, torch threads: {threads}, "
              f"greedy, {NEW_TOKENS} new tokens per reply")

        with LoopLag() as idle:
            await asyncio.sleep(1.0)
        sequential = await one_at_a_time(engine)
        with LoopLag() as busy:
            batched = await all_at_once(engine)

        print(f"\nP2: {CHANNELS} channels asking at once")
        print(f"{'':>14} | {'wall':>9} | {'tokens':>6} | {'tok/s':>7} | {'max lat':>9} | {'median lat':>9}")
        print_latencies("one at a time", sequential[1], sequential[2], sequential[3])
        print_latencies("batched", batched[1], batched[2], batched[3])
        speedup = (batched[3] / batched[2]) / (sequential[3] / sequential[2])
        print(f"throughput batched / one at a time: {speedup:.2f}x;  "
              f"max latency one at a time / batched: {max(sequential[1]) / max(batched[1]):.2f}x;  "
              f"same answers: {'yes' if batched[0] == sequential[0] else 'NO'}")

        print("\nP3: event-loop lag (5 ms sleeps)")
        print(f"  idle:       {idle.summary()}")
        print(f"  generating: {busy.summary()}")

        history = long_history(engine)
        print(f"\nP5: next turn's time to first token, {engine.render(history).tokens} tokens of history")
        runs = [await next_turn_ttft(engine, history, channel=1000 + i) for i in range(2)]
        cached = statistics.median(r[0] for r in runs)
        uncached = statistics.median(r[1] for r in runs)
        print(f"  uncached: {uncached * 1000:8.1f} ms   cached: {cached * 1000:8.1f} ms   "
              f"(prompt tokens taken from the cache: {runs[0][2]})")
        print(f"  ratio uncached / cached: {uncached / cached:.1f}x (goal >= 10x)")
    finally:
        engine.close()
