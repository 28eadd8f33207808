"""The decode step's forward replayed as CUDA graphs: one launch instead of hundreds of kernels.

On a GPU a decode step of a few rows is bound by launching kernels from Python (a 3B model
runs some 700 a step), not by the device: reading SmolLM3-3B's weights once takes about
1.4 ms on an H200, launching its kernels one by one several times that. A CUDA graph records
the step's kernels once and replays them with one call.

A graph replays exactly what it recorded, on the same memory. The decode forward qualifies
because it reads only buffers that live as long as the engine: the rows' next tokens, the
slots' lengths and decoding flags, and their keys/values (bot/llm/slots.py computes the
step's positions and mask from those on the device). Shapes must be fixed, so each step is
rounded up to a bucket: rows to the next power of two (slots past the top one write their
scratch column, as idle slots always do) and key/value columns to the next power of two.
A few graphs serve every step; each is recorded the first time its shape comes.

Every graph is checked once against the eager forward it replaces, on a later step than the
one it was recorded in (so a graph that kept anything of that step's inputs would show):
the same outputs, within bfloat16's rounding. A graph that cannot be recorded or does not
match turns graphs off for the engine, with one log line, and steps run eagerly as before
(after a replay that failed its check, the runner writes the answers' slots again: the replay
may have written keys/values in the wrong places).

Graphs hold the slots' buffers' addresses: when the slots grow, they are dropped and
recorded again. Batches that mix LoRA adapters run eagerly (peft splits such a batch in
Python at every layer); a batch all on one adapter, or on none, has graphs of its own.
"""

from __future__ import annotations

import logging
from typing import Callable, Hashable, Protocol

import torch

from .slots import FIRST_COLUMNS

log = logging.getLogger(__name__)

Forward = Callable[[], torch.Tensor]  # one decode forward over fixed buffers; returns its logits

MOST_GRAPHS = 64  # past this many shapes, further ones run eagerly (each graph holds device memory)
WARM_UPS = 2  # eager runs before a recording


def decode_graphs_for(device: torch.device, wanted: bool) -> DecodeGraphs | None:
    """The engine's graphs for `[engine] cuda_graphs`: CUDA graphs on a CUDA device, none elsewhere."""
    if not wanted or device.type != "cuda":
        return None
    return DecodeGraphs(CudaGraphRecorder(device))


class Recorder(Protocol):
    def record(self, forward: Forward) -> Forward:
        """A function that replays `forward`'s work on the same buffers and returns its output."""


class CudaGraphRecorder:
    """Records forwards as CUDA graphs sharing one memory pool (a graph's output is read before
    the next graph replays, so their scratch memory can be the same)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def record(self, forward: Forward) -> Forward:
        # As torch.cuda.graph's docs do: run it on a side stream first (lazy kernel and cuBLAS set-up).
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARM_UPS):
                forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the engine thread records while other threads go on with their own work.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = forward()

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


class EagerRecorder:
    """Runs the forward again each time: the buckets and fixed buffers of graphs without a GPU
    (the tests check on a CPU that bucketed steps answer exactly as exact-size ones)."""

    def record(self, forward: Forward) -> Forward:
        return forward


class DecodeGraphs:
    """The engine's recorded decode forwards, by (rows, columns, adapter)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.enabled = True
        self.recorded = 0  # graphs recorded so far (dropped ones included)
        self.replays = 0  # steps whose logits came from a graph
        self.eager_steps = 0  # steps run eagerly here: each graph's recording, and its check
        self._graphs: dict[Hashable, Forward] = {}
        self._unchecked: set[Hashable] = set()  # not yet compared with the eager forward
        self._allocation = -1  # the slots' allocation the graphs were recorded against
        self._told_full = False  # the log has said that new shapes run eagerly
        # A replay that failed its check had run: it may have written keys/values into the wrong
        # columns. The runner rewrites its rows' slots (take_suspect_writes) before the next step.
        self._suspect_writes = False

    @property
    def shapes(self) -> list[Hashable]:
        """The (rows, columns, adapter) of the graphs held now."""
        return list(self._graphs)

    @staticmethod
    def rows_for(rows: int, most: int) -> int:
        """The bucket of a step of `rows` rows: the next power of two, at most the slots there are."""
        return min(_next_power_of_two(rows), most)

    @staticmethod
    def columns_for(columns: int, allocated: int) -> int:
        """The key/value width of a step that needs `columns`: the next power of two from the
        slots' first width, at most what the slots hold (the rest of the bucket is masked)."""
        return min(max(_next_power_of_two(columns), FIRST_COLUMNS), allocated)

    def record(self, key: Hashable, allocation: int, forward: Forward) -> None:
        """Record `forward` for `key` ahead of its first step (at start-up)."""
        if self._usable(allocation) and key not in self._graphs and len(self._graphs) < MOST_GRAPHS:
            self._record(key, forward)

    def run(self, key: Hashable, allocation: int, forward: Forward) -> torch.Tensor | None:
        """This step's logits through the graph for `key`. A new shape is recorded now (this step
        runs eagerly); a graph's first replay after the step it was recorded in is checked against
        the eager forward on that step's inputs, which differ from the recording's, so a graph
        that kept anything of the step it was recorded in is caught. None: graphs are off (or
        full); the caller runs the step eagerly."""
        if not self._usable(allocation):
            return None
        replay = self._graphs.get(key)
        if replay is None:
            if len(self._graphs) >= MOST_GRAPHS:
                self._tell_full()
                return None
            logits = forward()
            self._record(key, forward)
            self.eager_steps += 1
            return logits
        if key in self._unchecked:
            return self._checked_replay(key, replay, forward)
        self.replays += 1
        return replay()

    def _tell_full(self) -> None:
        if not self._told_full:
            self._told_full = True
            log.info("%d decode graphs are held, the most kept: steps of other shapes run eagerly.", MOST_GRAPHS)

    def _usable(self, allocation: int) -> bool:
        """Graphs are on; those of an older allocation of the slots are dropped."""
        if allocation != self._allocation:
            self._graphs.clear()
            self._unchecked.clear()
            self._allocation = allocation
        return self.enabled

    def _record(self, key: Hashable, forward: Forward) -> None:
        try:
            self._graphs[key] = self.recorder.record(forward)
        except Exception as error:  # any failure to record: run eagerly, as before graphs
            self._turn_off(f"recording the decode step for {_described(key)} failed ({type(error).__name__}: {error})")
            return
        self._unchecked.add(key)
        self.recorded += 1
        log.info("Recorded the decode step for %s as a graph.", _described(key))

    def _checked_replay(self, key: Hashable, replay: Forward, forward: Forward) -> torch.Tensor:
        """The eager forward's logits, after comparing the replay's with them (the decode forward
        writes the same keys/values to the same columns each time it runs: running it twice
        changes nothing)."""
        expected = forward().clone()
        self.eager_steps += 1
        try:
            replayed = replay()
            difference = float((replayed.float() - expected.float()).abs().max())
        except Exception as error:
            self._suspect_writes = True
            self._turn_off(f"replaying the decode step for {_described(key)} failed ({type(error).__name__}: {error})")
            return expected
        # Within bfloat16's rounding of the largest logit (the same kernels give the same bits).
        if difference > 0.02 * float(expected.float().abs().max()) + 1e-3:
            self._suspect_writes = True
            self._turn_off(f"the recorded decode step for {_described(key)} did not match the eager one "
                           f"(largest difference {difference:.3g})")
        else:
            self._unchecked.discard(key)
        return expected

    def take_suspect_writes(self) -> bool:
        """Whether a replay that failed its check ran since the last call."""
        suspect, self._suspect_writes = self._suspect_writes, False
        return suspect

    def _turn_off(self, why: str) -> None:
        self.enabled = False
        self._graphs.clear()
        self._unchecked.clear()
        log.warning("Decode graphs are off: %s. The engine runs every step eagerly from now on: the same "
                    "answers, slower on a GPU ([engine] cuda_graphs = false skips graphs).", why)


def _next_power_of_two(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _described(key: Hashable) -> str:
    rows, columns, adapter = key  # type: ignore[misc]
    return f"{rows} rows x {columns} columns ({f'adapter {adapter}' if adapter else 'no adapter'})"
