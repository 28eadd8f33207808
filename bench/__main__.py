"""`python -m bench [name ...]`: run the benchmarks (all by default)."""

import argparse
import asyncio
import importlib
import sys

# name: (module, what it measures, roughly how long it takes on the 2-core CPU machine of bench/RESULTS.md)
BENCHES = {
    "window": ("window_read", "window read at 10^3 vs 10^6 stored messages",
               "a few min; it fills a 10^6-row SQLite file"),
    "recall": ("recall_bench", "recall (full-text search of a channel) at 10^3 vs 10^6 stored messages",
               "a few min; it fills a 10^6-row SQLite file"),
    "recall-postgresql": ("recall_postgresql", "the same recall bench on a throwaway PostgreSQL server",
                          "a few min; it loads 10^6 rows"),
    "latency": ("bot_latency", "P1: end-to-end bot latency over bare model.generate", "about 1 min"),
    "engine": ("engine_bench", "P2, P3, P5: batching throughput, event-loop lag, cached first token", "about 2 min"),
    "overhead": ("engine_overhead", "the engine's decode step over a bare batched forward (tiny SmolLM3)",
                 "under 1 min"),
    "load": ("load_bench", "a 500-message burst over 50 channels: lost / duplicated / order", "under 1 min"),
    "remote": ("remote_bench", "local engine vs an OpenAI-compatible server (transformers serve), 8 channels",
               "about 2 min"),
    "fair": ("fair_share_bench", "one server's message behind another's 100-message flood, fair share vs first-come",
             "about 2 min"),
    "adapters": ("adapter_bench", "decode step cost of LoRA adapters (peft mixed batches)", "about 2 min"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, BENCHES))
    listing = "\n".join(f"  {name:<{width}} {what} ({took})" for name, (_module, what, took) in BENCHES.items())
    parser = _Parser(prog="python -m bench", formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Run the benchmarks named (all of them by default) and print their ratios; "
                     "results are kept in bench/RESULTS.md.",
                     epilog="benchmarks (rough times on the 2-core CPU machine of bench/RESULTS.md):\n" + listing)
    parser.add_argument("names", nargs="*", metavar="name", help="benchmarks to run: " + ", ".join(BENCHES))
    return parser


def main(argv: list[str] | None = None) -> int:
    names = _parser().parse_args(argv).names or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"error: there is no benchmark named {unknown[0]!r}; the benchmarks are: {', '.join(BENCHES)}",
              file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{BENCHES[name][0]}")
        asyncio.run(module.main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
