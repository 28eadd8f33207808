"""The model worker: one thread owns the model; the event loop awaits its results.

Generation is blocking, CPU/GPU-bound work. Running it on a dedicated
single-thread executor keeps the asyncio loop free to heartbeat, read the
database and answer commands while the model works, and serialises access to a
model that is not safe to call from two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol

from ..config import GenerationSettings

log = logging.getLogger(__name__)

ChatMessages = list[dict[str, str]]
StopSignal = Callable[[], bool]


class Backend(Protocol):
    """A model that turns chat messages into a reply. Called from the worker thread only,
    except count_tokens, which must be safe to call from any thread."""

    name: str
    context_tokens: int

    def count_tokens(self, messages: ChatMessages) -> int: ...

    def generate(self, messages: ChatMessages, params: GenerationSettings, should_stop: StopSignal) -> str: ...


class GenerationError(Exception):
    """The model could not produce a reply. str() is a sentence for the user."""


class GenerationTimeout(GenerationError):
    pass


class GenerationFailed(GenerationError):
    pass


class ModelWorker:
    """Runs one backend on its own thread; `await worker.generate(...)` from the event loop."""

    def __init__(self, backend: Backend, timeout_s: float = 120.0):
        self.backend = backend
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-worker")
        self._counting_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def context_tokens(self) -> int:
        return self.backend.context_tokens

    def count_tokens(self, messages: ChatMessages) -> int:
        """Exact prompt length with the model's own chat template. Thread-safe."""
        with self._counting_lock:
            return self.backend.count_tokens(messages)

    async def generate(self, messages: ChatMessages, params: GenerationSettings) -> str:
        """The model's raw reply. Raises GenerationTimeout / GenerationFailed; the worker stays usable."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._run, messages, params, stop)
        try:
            return await asyncio.wait_for(job, self.timeout_s)
        except asyncio.TimeoutError:
            log.warning("generation passed its %.0f s limit and was stopped", self.timeout_s)
            raise GenerationTimeout(
                f"The model took longer than {self.timeout_s:.0f} seconds and was stopped.") from None
        finally:
            # Whatever ended the wait (time limit, the caller being cancelled), the
            # thread stops at its next token instead of running on for nothing.
            stop.set()

    def _run(self, messages: ChatMessages, params: GenerationSettings, stop: threading.Event) -> str:
        if stop.is_set():  # cancelled while it waited in the queue
            return ""
        try:
            return self.backend.generate(messages, params, stop.is_set)
        except Exception as error:  # the model raising must not take the worker down
            log.exception("the model failed while generating")
            raise GenerationFailed(f"The model failed while writing a reply ({type(error).__name__}).") from error

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
