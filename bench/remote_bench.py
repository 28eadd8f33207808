"""The local batching engine against the remote backend talking to `transformers serve`, on the
same load: 8 channels asking at once, the embedded SmolLM2-135M on CPU, greedy, a fixed
number of new tokens. Prints throughput (reply tokens a second, counted with the same
tokenizer for both) and per-channel latency, and their ratios.

The two run one after the other, never at the same time, so they do not share the CPU.
`transformers serve` is run as it ships (no continuous batching: `--continuous-batching`
needs a GPU-sized paged cache), which is what a user without vLLM would start.

    python -m bench remote      (if registered in bench/__main__.py)
    python -c "import asyncio, bench.remote_bench as b; asyncio.run(b.main())"
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.engine_bench import CHANNELS, GREEDY, NEW_TOKENS, TOPICS, ask
from bot.config import GenerationSettings, ModelSettings
from bot.llm import embedded
from bot.llm.engine import BatchingEngine
from bot.llm.openai_backend import OpenAICompatibleModel
from bot.llm.remote_counting import RemoteTokenCounter
from bot.llm.server_kind import ServerKind
from bot.llm.transformers_backend import load_transformers_backend
from tests.support.models import generate
from tests.support.openai_server import transformers_server

# transformers serve refuses repetition_penalty, so both sides run without it.
SAME_FOR_BOTH = GREEDY


class LoadResult:
    def __init__(self, replies: list[str], latencies: list[float], wall: float, tokens: int):
        self.replies, self.latencies, self.wall, self.tokens = replies, latencies, wall, tokens

    @property
    def throughput(self) -> float:
        return self.tokens / self.wall

    def row(self, label: str) -> str:
        return (f"{label:>16} | {self.wall:7.2f} s | {self.tokens:6d} | {self.throughput:7.1f} | "
                f"{max(self.latencies):7.2f} s | {statistics.median(self.latencies):7.2f} s")


async def eight_channels_at_once(model, tokenizer) -> LoadResult:
    """Every channel asks at t=0; each latency is from then to its full reply."""
    started = time.perf_counter()

    async def one(topic: str) -> tuple[str, float]:
        reply = await generate(model, ask(topic), SAME_FOR_BOTH)
        return reply, time.perf_counter() - started

    results = await asyncio.gather(*(one(topic) for topic in TOPICS))
    wall = time.perf_counter() - started
    replies = [reply for reply, _ in results]
    tokens = sum(len(tokenizer.encode(reply, add_special_tokens=False)) for reply in replies)
    return LoadResult(replies, [latency for _, latency in results], wall, tokens)


async def measure_local(backend) -> LoadResult:
    engine = BatchingEngine(backend, max_batch=CHANNELS, timeout_s=600, torch_threads=1)
    try:
        await generate(engine, ask("warming up"), GenerationSettings(do_sample=False, max_new_tokens=4))
        return await eight_channels_at_once(engine, backend.tokenizer)
    finally:
        engine.close()


async def measure_remote(backend, model_dir: Path) -> LoadResult:
    with tempfile.TemporaryDirectory() as scratch, transformers_server(model_dir, Path(scratch) / "serve.log") as url:
        counter = RemoteTokenCounter(thinking=False, tokenizer=backend.tokenizer)
        remote = OpenAICompatibleModel(url, str(model_dir), backend.context_tokens, counter, timeout_s=600,
                                       server=ServerKind.TRANSFORMERS)
        try:
            await generate(remote, ask("warming up"), GenerationSettings(do_sample=False, max_new_tokens=4))
            return await eight_channels_at_once(remote, backend.tokenizer)
        finally:
            await remote.aclose()


async def main() -> None:
    model_dir = embedded.converted_model_dir()
    backend = load_transformers_backend(ModelSettings(name=str(model_dir), device_map="cpu", dtype="float32"))
    print(f"\nLocal batching engine vs remote backend (transformers serve), {CHANNELS} channels at once, "
          f"greedy, {NEW_TOKENS} new tokens per reply")
    local = await measure_local(backend)
    remote = await measure_remote(backend, model_dir)
    print(f"{'':>16} | {'wall':>9} | {'tokens':>6} | {'tok/s':>7} | {'max lat':>9} | {'median lat':>9}")
    print(local.row("local engine"))
    print(remote.row("remote (serve)"))
    same = sum(a == b for a, b in zip(local.replies, remote.replies))
    print(f"throughput local / remote: {local.throughput / remote.throughput:.2f}x;  "
          f"max latency remote / local: {max(remote.latencies) / max(local.latencies):.2f}x;  "
          f"median latency remote / local: {statistics.median(remote.latencies) / statistics.median(local.latencies):.2f}x;  "
          f"identical replies: {same}/{CHANNELS}")
