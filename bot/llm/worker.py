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
from .adapters import NO_ADAPTERS, Adapters, UnknownAdapter

log = logging.getLogger(__name__)

ChatMessages = list[dict[str, str]]
StopSignal = Callable[[], bool]
Emit = Callable[[str], None]


class Backend(Protocol):
    """A model that turns chat messages into a reply. Called from the worker thread only,
    except count_tokens, which must be safe to call from any thread."""

    name: str
    context_tokens: int

    def count_tokens(self, messages: ChatMessages) -> int: ...

    def generate(self, messages: ChatMessages, params: GenerationSettings, should_stop: StopSignal) -> str: ...

    # Optional: backends that can stream define
    # generate_stream(messages, params, should_stop, emit) -> None, calling emit(text_delta) as they go.
    # Backends that serve LoRA adapters have `adapters` (an Adapters) and take `lora=` (the adapter's
    # name, None for the base model) in generate / generate_stream.


class GenerationError(Exception):
    """The model could not produce a reply. str() is a sentence for the user."""


class GenerationTimeout(GenerationError):
    pass


class GenerationFailed(GenerationError):
    pass


class ModelBusy(GenerationError):
    """Too many replies are waiting for the model already. `waiting` says how many."""

    def __init__(self, waiting: int):
        super().__init__(f"The model is busy: {waiting} replies are already waiting.")
        self.waiting = waiting


class ModelFront:
    """What every way of running a backend shares: its name, its context length, and exact,
    thread-safe token counting (the service counts from other threads than the model's)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._counting_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def context_tokens(self) -> int:
        return self.backend.context_tokens

    @property
    def adapters(self) -> Adapters:
        """The LoRA adapters this model serves (none, for most backends)."""
        return getattr(self.backend, "adapters", NO_ADAPTERS)

    def lora_for(self, adapter: str | None) -> str | None:
        """The adapter a request for `adapter` runs with (None: the base model); `adapter` None is
        the configured default. The service only asks for adapters it was offered; anything else
        is refused here all the same."""
        try:
            return self.adapters.resolve(adapter)
        except UnknownAdapter:
            raise GenerationFailed(f'The adapter "{adapter}" is not loaded.') from None

    def count_tokens(self, messages: ChatMessages) -> int:
        """Exact prompt length with the model's own chat template."""
        with self._counting_lock:
            return self.backend.count_tokens(messages)

    def forget(self, cache_key: Hashable) -> None:
        """Drop whatever is kept for `cache_key` (a channel that was reset). Nothing, by default."""

    def place_in_line(self) -> int:
        """Where a reply asked for now would wait for the model (0: it starts at once)."""
        return 0


class ModelWorker(ModelFront):
    """Runs one backend on its own thread, one reply at a time; `await worker.generate(...)`
    from the event loop. (The BatchingEngine serves many replies at once; this worker serves
    any backend, and is what tests with a scripted model use.)"""

    def __init__(self, backend: Backend, timeout_s: float = 120.0, max_waiting: int | None = None):
        super().__init__(backend)
        self.timeout_s = timeout_s
        # Like the engine's: past this many replies waiting behind the one being written, a new
        # one is refused with ModelBusy at once instead of queueing for ever. None = no bound.
        self.max_waiting = max_waiting
        self._queued = 0  # replies submitted and not finished, the one being written included
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")

    async def generate(self, messages: ChatMessages, params: GenerationSettings, *,
                       cache_key: Hashable | None = None, adapter: str | None = None) -> str:
        """The model's raw reply. Raises GenerationTimeout / GenerationFailed; the worker stays usable.
        (`cache_key` is accepted for the Model interface; this worker keeps no prefix caches.)"""
        return "".join([delta async for delta in self.stream(messages, params, adapter=adapter)])

    async def stream(self, messages: ChatMessages, params: GenerationSettings, *,
                     cache_key: Hashable | None = None, adapter: str | None = None) -> AsyncIterator[str]:
        """The reply as it is written, in text pieces (one piece if the backend cannot stream).
        `adapter`: a LoRA adapter's name, "base", or None for the configured default.

        Stopping the iteration early (break, cancel, time limit) stops the model at its next token.
        """
        # Backends without adapters are called exactly as before (no `lora` argument).
        lora = {"lora": self.lora_for(adapter)} if self.adapters.any else {}
        waiting = max(self._queued - 1, 0)
        if self.max_waiting is not None and self._queued and waiting >= self.max_waiting:
            raise ModelBusy(waiting)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def emit(delta: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, delta)

        job = asyncio.ensure_future(loop.run_in_executor(
            self._executor, functools.partial(self._run, messages, params, stop, emit, **lora)))
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
        done, _ = await asyncio.wait({getter, job}, timeout=max(time_left, 0), return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if not done:
            log.warning("generation passed its %.0f s limit and was stopped", self.timeout_s)
            raise GenerationTimeout(f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.")
        return None

    def _one_done(self, _job: asyncio.Future) -> None:
        self._queued -= 1

    def _run(self, messages: ChatMessages, params: GenerationSettings, stop: threading.Event, emit: Emit,
             **lora: str | None) -> None:
        if stop.is_set():  # cancelled while it waited in the queue
            return
        try:
            if hasattr(self.backend, "generate_stream"):
                self.backend.generate_stream(messages, params, stop.is_set, emit, **lora)
            else:
                emit(self.backend.generate(messages, params, stop.is_set, **lora))
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
