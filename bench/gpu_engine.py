"""GPU check of the serving path (run by hand on a CUDA machine; not part of `python -m bench`):
`python -m bench.gpu_engine TOKENIZER_DIR WORK_DIR`.

SmolLM3-3B's weights cannot be fetched offline, so this builds a model of SmolLM3-3B's shape
(36 layers, hidden 2048, 16 heads / 4 KV heads, MLP 11008, NoPE every 4th layer) with random
bfloat16 weights and the tokenizer of TOKENIZER_DIR (the tiny SmolLM3 the tests build: SmolLM2's
49k vocabulary, not SmolLM3's 128k), saves it and two rank-16 LoRA adapters, then loads it as
the bot does (load_transformers_backend: device_map "cuda", dtype "auto", adapters_dir) and
times the batching engine: one channel alone, 8 channels at once, and 8 channels on a mix of
adapters. Random weights decode arbitrary tokens; the figures are about speed, not words."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

SMOLLM3_3B_SHAPE = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                        num_key_value_heads=4, max_position_embeddings=65536)
# Without a GPU (a smoke run of this script on a CPU): a small model of the same layout.
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096)
NEW_TOKENS = 128
CHANNELS = 8


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build(tokenizer_dir: Path, work: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer_dir)
    for key, value in (SMOLLM3_3B_SHAPE if device() == "cuda" else SMOKE_SHAPE).items():
        setattr(config, key, value)
    config.no_rope_layers = [int((i + 1) % 4 != 0) for i in range(config.num_hidden_layers)]
    if hasattr(config, "layer_types"):
        config.layer_types = ["full_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(work / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, work / "base" / name)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    tuned = get_peft_model(model, lora, adapter_name="pirate")
    tuned.add_adapter("poet", lora)
    tuned.save_pretrained(work / "adapters")  # non-default names go to adapters/pirate, adapters/poet
    del model, tuned
    print(f"built {sum(1 for _ in (work / 'base').iterdir())} files; adapters: "
          f"{sorted(p.name for p in (work / 'adapters').iterdir() if p.is_dir())}", flush=True)


async def timed(engine, adapters: list[str | None], params) -> tuple[float, int]:
    persona = "You are a friendly, helpful assistant chatting in a Discord server. " * 4
    started, before = time.perf_counter(), engine.counters.generated_tokens

    async def one(channel: int, adapter: str | None) -> None:
        messages = [{"role": "system", "content": persona},
                    {"role": "user", "content": f"User {channel}: tell me a long story about channel {channel}"}]
        async for _ in engine.stream(engine.render(messages), params, channel=("bench", channel, time.perf_counter()),
                                     adapter=adapter):
            pass

    await asyncio.gather(*(one(channel, adapter) for channel, adapter in enumerate(adapters)))
    return time.perf_counter() - started, engine.counters.generated_tokens - before


async def measure(work: Path, adapters_dir: str, label: str, cases: dict[str, list[str | None]]) -> dict:
    import torch

    from bot.config import GenerationSettings, Settings
    from bot.llm.engine import BatchingEngine
    from bot.llm.transformers_backend import load_transformers_backend

    settings = Settings().with_overrides("model", name=str(work / "base"), device_map=device(), dtype="auto",
                                         adapters_dir=adapters_dir)
    backend = load_transformers_backend(settings.model)
    if os.environ.get("ATTENTION"):  # compare attention implementations: ATTENTION=eager, sdpa, ...
        backend.model.set_attn_implementation(os.environ["ATTENTION"])
        label = f"{label} ({os.environ['ATTENTION']})"
    engine = BatchingEngine(backend, max_batch=CHANNELS, timeout_s=600)
    # Every answer runs to NEW_TOKENS: random weights would otherwise stop at random.
    backend.stop_ids = [-1]
    engine._stop_ids = set()
    params = GenerationSettings(max_new_tokens=NEW_TOKENS, do_sample=False, repetition_penalty=1.0)
    await timed(engine, [None], params)  # warm-up: CUDA kernels, allocator
    results = {}
    for name, adapters in cases.items():
        seconds, tokens = await timed(engine, adapters, params)
        results[name] = tokens / seconds
        print(f"{'':>14s}   largest batch so far {engine.counters.largest_batch}, "
              f"prefilled {engine.counters.prefilled_tokens} tokens", flush=True)
        print(f"{label:>14s} | {name:34s} | {tokens:5d} tokens in {seconds:6.2f} s | {tokens / seconds:7.1f} tok/s",
              flush=True)
    if device() == "cuda":
        print(f"{label:>14s} | dtype {backend.model.dtype}, peak GPU memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    engine.close()
    del engine, backend
    torch.cuda.empty_cache()
    return results


def profile_engine_thread() -> None:
    """With PROFILE=1: where the engine thread's time goes, printed when the engine closes."""
    import cProfile
    import pstats

    from bot.llm.engine import BatchingEngine

    unprofiled = BatchingEngine._run

    def profiled(self) -> None:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            unprofiled(self)
        finally:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)

    BatchingEngine._run = profiled


async def main(tokenizer_dir: Path, work: Path) -> None:
    build(tokenizer_dir, work)
    if os.environ.get("ONLY_PLAIN"):  # batching alone, without the adapter runs
        await measure(work, "", "no adapters", {"1 channel": [None], f"{CHANNELS} channels at once": [None] * CHANNELS})
        return
    if os.environ.get("PROFILE"):
        profile_engine_thread()
        await measure(work, "", "profiled", {f"{CHANNELS} channels at once": [None] * CHANNELS})
        return
    plain = await measure(work, "", "no adapters", {
        "1 channel": [None], f"{CHANNELS} channels at once": [None] * CHANNELS})
    mixed = ["pirate", "poet", "base", None] * (CHANNELS // 4)
    tuned = await measure(work, str(work / "adapters"), "with adapters", {
        "1 channel, adapter": ["pirate"], f"{CHANNELS} channels, one adapter": ["pirate"] * CHANNELS,
        f"{CHANNELS} channels, 2 adapters + base": mixed})
    print(f"batching: {CHANNELS} channels / 1 channel throughput "
          f"{plain[f'{CHANNELS} channels at once'] / plain['1 channel']:.2f}x")
    print(f"adapters: {CHANNELS} mixed rows / {CHANNELS} plain rows throughput "
          f"{tuned[f'{CHANNELS} channels, 2 adapters + base'] / plain[f'{CHANNELS} channels at once']:.2f}x")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
