"""`python -m bench overhead`: what the batching engine adds around the model, on a CPU.

With the tiny SmolLM3 (a few layers, random weights), the model itself costs almost
nothing, so the engine's own work shows: its decode step at 8 and 64 rows against a bare
batched forward of the same shapes (transformers' DynamicCache, the batch's rows all the
same length, nothing chosen but the argmax). Also the device-to-host reads per decode step
(the goal is one: every row's token read back in a single copy).

The engine's step time is measured as (wall time to write NEW_TOKENS tokens per row minus
the wall time to write one token per row, same prompts) / (NEW_TOKENS - 1): prefill and the
first token cancel out. Engine and bare runs alternate, ROUNDS times each, and the medians are
compared: a shared 2-core machine drifts by tens of percent between one run and the next, which
one engine run against one bare run showed as ratios from 0.84 to 2.08. Aim: engine / bare <= 1.2.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch

NEW_TOKENS = 48
PROMPT_TOKENS = 64
ROWS = (8, 64)
ROUNDS = 5


def tiny_backend(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.llm.transformers_backend import TransformersBackend
    from tests.support.tiny_smollm3 import build_tiny_smollm3

    directory = build_tiny_smollm3(folder / "tiny")
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    backend = TransformersBackend(model, AutoTokenizer.from_pretrained(directory), name="tiny-smollm3", thinking=False)
    backend.stop_ids = [-1]  # every answer runs to its limit: random weights stop at random otherwise
    return backend


def prompts(rows: int) -> list[list[int]]:
    return [[(17 * row + 5 * i) % 1000 + 10 for i in range(PROMPT_TOKENS)] for row in range(rows)]


async def engine_wall(engine, rows: int, tokens: int) -> float:
    from bot.config import GenerationSettings
    from bot.core.prompt import RenderedPrompt

    params = GenerationSettings(do_sample=False, max_new_tokens=tokens, repetition_penalty=1.0)

    async def one(ids: list[int]) -> None:
        async for _ in engine.stream(RenderedPrompt([], len(ids), tuple(ids)), params):
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(ids) for ids in prompts(rows)))
    return time.perf_counter() - started


def bare_step(model, rows: int) -> float:
    """Seconds per decode step of plain batched forwards with a DynamicCache, argmax on the device."""
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        input_ids = torch.tensor(prompts(rows))
        output = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        token = output.logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            output = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            token = output.logits[:, -1].argmax(-1, keepdim=True)
            token.tolist()  # the engine reads every step's tokens back too
        return (time.perf_counter() - started) / (NEW_TOKENS - 1)


async def main() -> None:
    from bot.llm.engine import BatchingEngine

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        backend = tiny_backend(Path(folder))
        print(f"\nEngine overhead: tiny SmolLM3, {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens a row, "
              "greedy, torch threads: 1")
        print(f"{'rows':>5} | {'engine step':>11} | {'bare step':>9} | {'engine / bare':>13} | host reads a step | "
              f"per-round ratio, {ROUNDS} rounds")
        for rows in ROWS:
            engine = BatchingEngine(backend, max_batch=rows, timeout_s=600, prefill_chunk_tokens=PROMPT_TOKENS * rows)
            engine_steps, bare_steps = [], []
            try:
                await engine_wall(engine, rows, 2)  # warm-up
                bare_step(backend.model, rows)
                for _ in range(ROUNDS):  # alternating, so that the machine's drift hits both alike
                    one = await engine_wall(engine, rows, 1)
                    steps_before, reads_before = engine.counters.decode_steps, engine.counters.host_reads
                    full = await engine_wall(engine, rows, NEW_TOKENS)
                    steps = engine.counters.decode_steps - steps_before
                    reads = engine.counters.host_reads - reads_before
                    engine_steps.append((full - one) / (NEW_TOKENS - 1))
                    bare_steps.append(bare_step(backend.model, rows))
            finally:
                engine.close()
            engine_step, bare = statistics.median(engine_steps), statistics.median(bare_steps)
            ratios = sorted(e / b for e, b in zip(engine_steps, bare_steps))
            print(f"{rows:>5} | {engine_step * 1000:8.2f} ms | {bare * 1000:6.2f} ms | {engine_step / bare:13.2f} | "
                  f"{reads / max(steps, 1):.2f} ({reads} reads, {steps} steps) | rounds {ratios[0]:.2f}-{ratios[-1]:.2f}")
