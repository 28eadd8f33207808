"""The batching model engine: many channels share the local model at the same time.

A ChatModel (bot/llm/port.py) in front of a TransformersBackend, like the
one-at-a-time ModelWorker, with continuous batching and per-channel caches. It
prefills the token ids the service rendered (the prompt is never rendered twice).

Each request takes one of `max_batch` fixed key/value slots (bot/llm/slots.py) for its
life; the engine thread runs rounds of prefill and decode over them (bot/llm/batch_runner.py):
new prompts are read in chunks between decode steps, every decoding row gets one token per
step with its own settings, chosen for all rows at once on the device, and a finished row's
keys/values are kept for its channel's next turn (kv_cache.PrefixCache). On a GPU the slots
are allocated at start from the free memory (their length is the engine's context), and each
decode step is the replay of a recorded CUDA graph (bot/llm/decode_graphs.py).

LoRA adapters: each request runs with its own adapter (or none), and rows with
different adapters share a decode step. peft's mixed-adapter batch does it: the
forward gets `adapter_names` (one per row, "__base__" for none), every LoRA layer
runs the base weights on the whole batch and adds each adapter's low-rank update
to its own rows. A kept channel cache is reused only under the adapter it was
computed with. Without adapters the model is not wrapped and nothing is added.

One thread owns the model (it is not thread-safe); the event loop only puts
requests in a bounded queue and reads results delivered through
loop.call_soon_threadsafe, so it never waits on the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import AsyncIterator, Hashable

import torch

from ..config import GenerationSettings
from .batch_runner import DONE, ERROR, BatchRunner, EngineCounters, fail
from .decode_graphs import DecodeGraphs
from .kv_cache import PrefixCache
from .port import (Abilities, ChatModel, GenerationFailed, GenerationTimeout, ModelBusy, ModelKind, ModelLoad,
                   RenderedPrompt)
from .model_source import ModelLoadError
from .slots import column_bytes, kv_shape
from .transformers_backend import TransformersBackend

log = logging.getLogger(__name__)

SHUTTING_DOWN = "The model is shutting down; the reply was stopped."
DEFAULT_CACHE_BUDGET_BYTES = 1 << 30


class _Request:
    """One generation, as both threads see it. The engine thread only hands it events through
    its event loop (send, or the runner's Outbox once a round); the caller reads `events`."""

    def __init__(self, prompt_ids: list[int], params: GenerationSettings, cache_key: Hashable | None,
                 deadline: float, lora: str | None = None):
        self.prompt_ids = prompt_ids
        self.params = params
        self.cache_key = cache_key
        self.lora = lora  # the adapter it runs with (None: the base model)
        self.deadline = deadline  # on the event loop's clock
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.cancelled = False  # set by the caller's side; the engine drops the request at its next step

    def send(self, kind: str, value: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the caller's event loop is closed: nobody is listening
            pass


SLOT_MEMORY_SHARE = 0.8  # of a GPU's memory free once the model is loaded; the rest: activations, graphs
FEWEST_SLOT_TOKENS = 512  # a slot shorter than this could not hold a persona and a few turns


def slot_memory_for(setting_bytes: int, device: torch.device, cache_budget_bytes: int) -> int:
    """Bytes for the rows' key/value slots: `[engine] slot_memory_mb` where set, else on a GPU
    SLOT_MEMORY_SHARE of the memory free once the model is loaded, less the kept caches' budget.
    0 on a CPU: slots grow as rows need (the machine's memory is shared with everything else)."""
    if setting_bytes or device.type != "cuda":
        return setting_bytes
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # torch holds it, unused
    return max(int(SLOT_MEMORY_SHARE * free) - cache_budget_bytes, 0)


def tokens_per_slot(memory: int, slots: int, context: int, config, dtype: torch.dtype) -> int:
    """Tokens each of `slots` slots holds in `memory` bytes, at most the model's context (one
    column of each slot is scratch). Too few to chat ends start-up with a sentence."""
    tokens = min(memory // (slots * column_bytes(config, dtype)) - 1, context)
    if tokens < min(FEWEST_SLOT_TOKENS, context):  # (a model whose own context is shorter is what it is)
        raise ModelLoadError(
            f"The key/value slots get {memory >> 20} MiB: {max(tokens, 0)} tokens for each of the {slots} replies "
            f"written at once, too few to chat (at least {FEWEST_SLOT_TOKENS}). Lower [engine] max_batch or "
            "raise [engine] slot_memory_mb.")
    return tokens


def default_prefill_tokens(device_type: str) -> int:
    """Prompt tokens a round when [engine] prefill_chunk_tokens is 0. On a GPU a forward of a few
    hundred tokens is bound by launching its kernels, not by the work: batching the prompts of
    many new requests into one forward is what costs little there. On a CPU every token is work,
    and 256 keep the stall of the replies being written short."""
    return 2048 if device_type == "cuda" else 256


def default_max_batch(device_type: str) -> int:
    """Rows decoded together when [engine] max_batch is 0. A GPU's decode step costs about the
    same for 1 row as for 64 (it is bound by reading the weights), so it serves many; a CPU's
    step grows with the rows, and 8 keep each answer's pace readable."""
    return 64 if device_type == "cuda" else 8


def attention_for(setting: str, device_type: str) -> str | None:
    """The attention implementation to run the batch with (None: leave the model's own).
    Every step passes a mask (rows of different lengths in their slots), and PyTorch's SDPA took a
    slow path on CUDA with a mask: on an H200, with the engine before slots, 8 channels got 1.7x one
    channel's throughput with SDPA and 5.3x with eager attention (bench/RESULTS.md); to be measured
    again with slots (bench.gpu_engine takes ATTENTION=...). On a CPU the model's default is kept."""
    if setting == "auto":
        return "eager" if device_type == "cuda" else None
    return setting


def refuse_split_models(model) -> None:
    """The slots, and each step's positions and mask, live on the model's one device. device_map
    "auto" on a machine with several GPUs spreads the layers over them (and a model too big for
    the GPU goes partly to the CPU): the first reply would then fail deep in a forward. Said at
    start instead, with what to set."""
    devices = sorted({str(place) for place in (getattr(model, "hf_device_map", None) or {}).values()})
    if len(devices) > 1:
        raise ModelLoadError(
            f"The model was spread over {', '.join(devices)} ([model] device_map), but the batching engine "
            'keeps it on one device: set [model] device_map = "cuda:0" (SmolLM3-3B fits one GPU), or '
            "[engine] batching = false to run it one reply at a time as it is.")


def use_attention(model, implementation: str) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through peft's wrapper
    base.set_attn_implementation(implementation)
    log.info("The batching engine runs %s attention.", implementation)


class BatchingEngine(ChatModel):
    """Runs a TransformersBackend's model for many callers at once on one thread of its own."""

    def __init__(self, backend: TransformersBackend, *, timeout_s: float = 120.0, max_batch: int = 8,
                 max_waiting: int = 64, cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES,
                 prefill_chunk_tokens: int = 256, torch_threads: int | None = None, attention: str = "auto",
                 graphs: DecodeGraphs | None = None, slot_memory_bytes: int = 0):
        self.backend = backend
        self.name = backend.name
        kv_shape(backend.model.config)  # refuse unsupported models here, not on the first request
        refuse_split_models(backend.model)
        self.context_tokens = backend.context_tokens
        # Slots sized by a memory budget are allocated at start (a GPU: a long conversation must
        # not grow every slot past the device's memory, and graphs keep their buffers); their
        # length becomes the engine's context, so the service cuts prompts to fit them.
        self.slot_memory = slot_memory_for(slot_memory_bytes, backend.model.device, cache_budget_bytes)
        if self.slot_memory:
            self.context_tokens = tokens_per_slot(self.slot_memory, max_batch, backend.context_tokens,
                                                  backend.model.config, backend.model.dtype)
            log.info("Key/value slots: %d of %d tokens (%d MiB)%s.", max_batch, self.context_tokens,
                     self.slot_memory >> 20, "" if self.context_tokens == backend.context_tokens else
                     f"; prompts are cut to fit, below the model's context of {backend.context_tokens}")
        self.abilities = Abilities(ModelKind.BATCHING, adapters=backend.adapters, channel_caches=True,
                                   max_batch=max_batch, max_waiting=max_waiting,
                                   thinks=backend.thought_markers is not None)
        self.model = backend.model
        chosen = attention_for(attention, self.model.device.type)
        if chosen:
            use_attention(self.model, chosen)
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_chunk_tokens = prefill_chunk_tokens
        # torch's intra-op threads (process-wide; None leaves them be). On a CPU shared with other
        # work, fewer threads than cores avoids OpenMP stalls: on a busy 2-core machine, 2 threads
        # ran decode steps several times slower than 1.
        self.torch_threads = torch_threads
        self.prefix_cache = PrefixCache(cache_budget_bytes)
        self.counters = EngineCounters()
        self.graphs = graphs  # the decode step's recorded graphs (None: every step runs eagerly)
        self._wakeup = threading.Condition()
        self._waiting: deque[_Request] = deque()  # guarded by _wakeup
        self._closing = False
        # Made here, so that slots that do not fit the device end start-up; owned by the engine
        # thread from then on, and dropped when it ends (its slots are most of the device's memory).
        self._runner: BatchRunner | None = self._start_runner()
        self._thread = threading.Thread(target=self._run, name="model-engine", daemon=True)
        self._thread.start()

    def render(self, messages, thinking: bool | None = None) -> RenderedPrompt:
        return self.backend.render(messages, thinking)

    def output_tokens(self, text: str) -> int:
        return self.backend.output_tokens(text)

    async def stream(self, prompt: RenderedPrompt, params: GenerationSettings, *, channel: Hashable | None = None,
                     adapter: str | None = None) -> AsyncIterator[str]:
        """The reply as text deltas, as tokens come (see ChatModel.stream). `channel` keeps this
        conversation's cache for its next turn. Stop early with contextlib.aclosing (or by
        cancelling the task) to free the place in the batch at once."""
        request = self._submit(list(prompt.token_ids), params, channel, adapter)
        try:
            while True:
                kind, value = await self._next_event(request)
                if kind == DONE:
                    return
                yield value
        finally:
            self._cancel(request)

    def close(self) -> None:
        """Stop the engine: waiting and running requests end with GenerationFailed."""
        with self._wakeup:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._wakeup.notify()
        for request in waiting:
            request.send(ERROR, GenerationFailed(SHUTTING_DOWN))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # What is going on (safe from any thread) ----------------------------------

    def load(self) -> ModelLoad:
        with self._wakeup:
            waiting = len(self._waiting)
        return ModelLoad(waiting=waiting, active=self._active(), cached_channels=len(self.prefix_cache.keys()))

    def _active(self) -> int:
        """Requests the engine is working on: prefilling or in the running batch."""
        runner = self._runner  # the engine thread drops it when it ends
        return runner.active if runner is not None else 0

    def place_in_line(self) -> int:
        """Where a request made now would wait: 0 when a place in the batch is free."""
        with self._wakeup:
            waiting = len(self._waiting)
        return waiting + 1 if self._active() + waiting >= self.max_batch else 0

    def forget(self, cache_key: Hashable) -> None:
        """Drop a channel's kept cache (its history was wiped). Only frees memory sooner:
        a stale cache is never used past the tokens it shares with the new prompt anyway."""
        self.prefix_cache.forget(cache_key)

    # The caller's side ---------------------------------------------------------

    def _submit(self, prompt_ids: list[int], params: GenerationSettings, cache_key: Hashable | None,
                adapter: str | None) -> _Request:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        request = _Request(prompt_ids, params, cache_key, deadline, self.adapter_to_run(adapter))
        with self._wakeup:
            if self._closing:
                raise GenerationFailed(SHUTTING_DOWN)
            if len(self._waiting) >= self.max_waiting:
                raise ModelBusy(len(self._waiting))
            self._waiting.append(request)
            self._wakeup.notify()
        return request

    async def _next_event(self, request: _Request) -> tuple[str, object]:
        try:
            async with asyncio.timeout_at(request.deadline):
                kind, value = await request.events.get()
        except TimeoutError:
            log.warning("generation passed its %.0f s limit and was stopped", self.timeout_s)
            raise GenerationTimeout(
                f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.") from None
        if kind == ERROR:
            raise value
        return kind, value

    def _cancel(self, request: _Request) -> None:
        """Whatever ended the wait (done, time limit, the caller cancelled), the request leaves:
        from the queue now, from the batch at the engine's next step."""
        request.cancelled = True
        with self._wakeup:
            if request in self._waiting:
                self._waiting.remove(request)

    # The engine thread -----------------------------------------------------------

    def _run(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        runner = self._runner
        with torch.inference_mode():
            runner.record_graphs()
            while self._admit(runner):
                try:
                    runner.round()
                except Exception as error:  # a bug of ours must not take the engine down
                    log.exception("the batching engine failed; dropping the requests in progress")
                    runner.fail_all(error)
            runner.fail_all(GenerationFailed(SHUTTING_DOWN))
        self._runner = None

    def _start_runner(self) -> BatchRunner:
        try:
            return self._new_runner()
        except torch.OutOfMemoryError:
            raise ModelLoadError(f"The key/value slots ({self.max_batch} of {self.context_tokens} tokens) do not fit "
                                 "in the device's free memory: lower [engine] max_batch or slot_memory_mb.") from None

    def _new_runner(self) -> BatchRunner:
        return BatchRunner(self.backend, **self._runner_options())

    def _runner_options(self) -> dict:
        return dict(max_batch=self.max_batch, slot_tokens=self.context_tokens, slots_at_once=bool(self.slot_memory),
                    prefix_cache=self.prefix_cache, prefill_chunk_tokens=self.prefill_chunk_tokens,
                    counters=self.counters, graphs=self.graphs)

    def _admit(self, runner: BatchRunner) -> bool:
        """Sleep until there is work; take waiting requests into free slots. False: closing."""
        with self._wakeup:
            while not (self._closing or self._waiting or runner.active):
                self._wakeup.wait()
            if self._closing:
                return False
            free = self.max_batch - runner.active
            admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        for request in admitted:
            try:
                max_new_tokens = self._answer_limit(request.params, len(request.prompt_ids))
            except GenerationFailed as error:
                fail(request, error)
                continue
            runner.start(request, max_new_tokens)
        return True

    def _answer_limit(self, params: GenerationSettings, prompt_tokens: int) -> int:
        room = self.context_tokens - prompt_tokens
        if room < 1:
            raise GenerationFailed(f"The conversation ({prompt_tokens} tokens) does not fit the model's "
                                   f"context of {self.context_tokens} tokens.")
        return min(params.max_new_tokens, room)
