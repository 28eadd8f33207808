"""The model worker: one thread owns the model; the event loop awaits its results.

Generation is blocking, CPU/GPU-bound work. Running it on a dedicated
single-thread executor keeps the asyncio loop free to heartbeat, read the
database and answer commands while the model works, and serialises access to a
model that is not safe to call from two threads at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Hashable, Protocol

from ..config import GenerationSettings
from .adapters import Adapters
from .port import (Abilities, ChatMessages, ChatModel, GenerationFailed, GenerationTimeout, ModelBusy, ModelKind,
                   ModelLoad, RenderedPrompt)

log = logging.getLogger(__name__)

StopSignal = Callable[[], bool]
Emit = Callable[[str], None]


class TextGenerator(Protocol):
    """What the worker runs: a model that writes one reply at a time on the worker's thread
    (the transformers backend, or a scripted model in tests). `render` and `output_tokens`
    must be safe to call from any thread."""

    name: str
    context_tokens: int
    adapters: Adapters  # the LoRA adapters it serves (NO_ADAPTERS for most)
    streams: bool  # emits as it writes (else once, at the end)

    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt: ...

    def generate_stream(self, prompt: RenderedPrompt, params: GenerationSettings, should_stop: StopSignal,
                        emit: Emit, lora: str | None) -> None:
        """Write the reply, calling emit(text_delta) as it goes (once, at the end, if it cannot
        stream); stop early when should_stop() is true. `lora`: the adapter (None: the base model)."""

    def output_tokens(self, text: str) -> int | None: ...


class ModelWorker(ChatModel):
    """Runs one TextGenerator on its own thread, one reply at a time. (The BatchingEngine serves
    many replies at once; this worker serves any generator, and is what tests with a scripted
    model use.)"""

    def __init__(self, backend: TextGenerator, timeout_s: float = 120.0, max_waiting: int | None = None):
        self.backend = backend
        markers = getattr(backend, "thought_markers", ...)  # (a generator that does not say: not known)
        self.abilities = Abilities(ModelKind.ONE_AT_A_TIME, adapters=backend.adapters, streams=backend.streams,
                                   max_waiting=max_waiting, thinks=None if markers is ... else markers is not None)
        self.timeout_s = timeout_s
        # Like the engine's: past this many replies waiting behind the one being written, a new
        # one is refused with ModelBusy at once instead of queueing for ever. None = no bound.
        self.max_waiting = max_waiting
        self._queued = 0  # replies submitted and not finished, the one being written included
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def context_tokens(self) -> int:
        return self.backend.context_tokens

    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt:
        return self.backend.render(messages, thinking)

    def output_tokens(self, text: str) -> int | None:
        return self.backend.output_tokens(text)

    def load(self) -> ModelLoad:
        return ModelLoad(waiting=max(self._queued - 1, 0), active=min(self._queued, 1))

    async def stream(self, prompt: RenderedPrompt, params: GenerationSettings, *, channel: Hashable | None = None,
                     adapter: str | None = None) -> AsyncIterator[str]:
        """See ChatModel.stream (this worker keeps no per-channel caches: `channel` is unused)."""
        lora = self.adapter_to_run(adapter)
        waiting = max(self._queued - 1, 0)
        if self.max_waiting is not None and self._queued and waiting >= self.max_waiting:
            raise ModelBusy(waiting)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def emit(delta: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, delta)

        job = asyncio.ensure_future(loop.run_in_executor(
            self._executor, functools.partial(self._run, prompt, params, stop, emit, lora)))
        self._queued += 1
        job.add_done_callback(self._one_done)
        deadline = loop.time() + self.timeout_s
        try:
            while not (job.done() and pieces.empty()):
                piece = await self._next_piece(pieces, job, deadline - loop.time())
                if piece:
                    yield piece
            job.result()  # raise what the backend raised
        finally:
            # Whatever ended the iteration (the end, a time limit, the caller stopping or being
            # cancelled), the thread stops at its next token instead of running on for nothing.
            stop.set()
            job.add_done_callback(_retrieve_outcome)

    async def _next_piece(self, pieces: asyncio.Queue, job: asyncio.Future, time_left: float) -> str | None:
        getter = asyncio.ensure_future(pieces.get())
        try:
            done, _ = await asyncio.wait({getter, job}, timeout=max(time_left, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:  # (cancelled while it waits, too: a reply stopped before its next piece)
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if not done:
            log.warning("generation passed its %.0f s limit and was stopped", self.timeout_s)
            raise GenerationTimeout(f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.")
        return None

    def _one_done(self, _job: asyncio.Future) -> None:
        self._queued -= 1

    def _run(self, prompt: RenderedPrompt, params: GenerationSettings, stop: threading.Event, emit: Emit,
             lora: str | None) -> None:
        if stop.is_set():  # cancelled while it waited in the queue
            return
        try:
            self.backend.generate_stream(prompt, params, stop.is_set, emit, lora)
        except Exception as error:  # the model raising must not take the worker down
            log.exception("the model failed while generating")
            raise GenerationFailed(f"The model failed while writing a reply ({type(error).__name__}).") from error

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieve_outcome(job: asyncio.Future) -> None:
    """Mark a job's outcome as seen: a caller that stopped listening has no use for it,
    and asyncio would otherwise log "exception was never retrieved"."""
    if not job.cancelled():
        job.exception()
