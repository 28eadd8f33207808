"""`python -m bench [name ...]`: run the benchmarks (all by default)."""

import asyncio
import sys

from bench import window_read

BENCHES = {"window": window_read.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or BENCHES:
        asyncio.run(BENCHES[name]())
