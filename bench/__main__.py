"""`python -m bench [name ...]`: run the benchmarks (all by default)."""

import asyncio
import sys

from bench import adapter_bench, bot_latency, engine_bench, engine_overhead, load_bench, remote_bench, window_read

BENCHES = {
    "window": window_read.main,    # window read at 10^3 vs 10^6 stored messages
    "latency": bot_latency.main,   # P1
    "engine": engine_bench.main,   # P2, P3, P5
    "overhead": engine_overhead.main,  # the engine's decode step over a bare batched forward (tiny SmolLM3)
    "load": load_bench.main,       # a 500-message burst over 50 channels: lost / duplicated / order
    "remote": remote_bench.main,   # local engine vs an OpenAI-compatible server, 8 channels
    "adapters": adapter_bench.main,  # decode step cost of LoRA adapters (peft mixed batches)
}

if __name__ == "__main__":
    for name in sys.argv[1:] or BENCHES:
        asyncio.run(BENCHES[name]())
