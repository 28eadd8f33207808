"""The batching model engine: many channels share the local model at the same time.

A ChatModel (bot/llm/port.py) in front of a TransformersBackend, like the
one-at-a-time ModelWorker, with continuous batching and per-channel caches. It
prefills the token ids the service rendered (the prompt is never rendered twice).

How a round of the engine thread goes (continuous batching):

1. admit waiting requests while there are free places (`max_batch`);
2. prefill: each new request runs its prompt alone, into a cache of its own,
   at most `prefill_chunk_tokens` per round, so a long prompt does not stall
   the rows already answering; when a channel's kept cache shares a prefix with
   the new prompt, only the rest is run;
3. a prefilled request chooses its first token and joins the running batch
   (its cache is padded and stacked onto the batch's, see kv_cache.RunningBatch);
4. decode: one forward for every row of the batch, one token each, each row
   with its own settings; finished, failed and cancelled rows leave the batch
   at once, and their caches are kept for their channel's next turn.

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
from dataclasses import dataclass
from typing import AsyncIterator, Hashable

import torch
from transformers import DynamicCache

from ..config import GenerationSettings
from ..core.tokens import common_prefix_length
from .kv_cache import PrefixCache, RunningBatch, cache_from_layers, crop_to, layers_of, new_cache
from .port import (Abilities, ChatModel, GenerationError, GenerationFailed, GenerationTimeout, ModelBusy, ModelKind,
                   ModelLoad, RenderedPrompt)
from .sampling import IncrementalText, RowSampler
from .transformers_backend import TransformersBackend

log = logging.getLogger(__name__)

SHUTTING_DOWN = "The model is shutting down; the reply was stopped."
DEFAULT_CACHE_BUDGET_BYTES = 1 << 30

# What the engine thread sends to a waiting caller.
DELTA, DONE, ERROR = "delta", "done", "error"


@dataclass
class EngineCounters:
    """Running totals, for benchmarks and operators."""

    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from a channel's kept cache instead
    generated_tokens: int = 0
    largest_batch: int = 0


class _Request:
    """One generation, as both threads see it. The engine thread only calls send()."""

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


@dataclass
class _Prefill:
    request: _Request
    prompt_ids: list[int]
    cache: DynamicCache  # this request's alone
    done: int  # prompt tokens already in the cache
    max_new_tokens: int


@dataclass
class _Row:
    """A request decoding in the running batch; its row there is its index in BatchingEngine._rows."""

    request: _Request
    cache_ids: list[int]  # the tokens whose keys/values are in the cache, in order
    sampler: RowSampler
    text: IncrementalText
    max_new_tokens: int
    generated: int = 0
    next_token: int = -1  # chosen, not yet run through the model


def attention_for(setting: str, device_type: str) -> str | None:
    """The attention implementation to run the batch with (None: leave the model's own).
    A batch of rows of different lengths needs a padding mask, and PyTorch's SDPA takes a slow
    path on CUDA with a mask: on an H200, 8 channels got 1.7x one channel's throughput with SDPA
    and 5.3x with eager attention (bench/RESULTS.md). On a CPU the model's default is kept."""
    if setting == "auto":
        return "eager" if device_type == "cuda" else None
    return setting


def use_attention(model, implementation: str) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through peft's wrapper
    base.set_attn_implementation(implementation)
    log.info("The batching engine runs %s attention.", implementation)


class BatchingEngine(ChatModel):
    """Runs a TransformersBackend's model for many callers at once on one thread of its own."""

    def __init__(self, backend: TransformersBackend, *, timeout_s: float = 120.0, max_batch: int = 8,
                 max_waiting: int = 64, cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES,
                 prefill_chunk_tokens: int = 256, torch_threads: int | None = None, attention: str = "auto"):
        self.backend = backend
        self.name = backend.name
        self.context_tokens = backend.context_tokens
        self.abilities = Abilities(ModelKind.BATCHING, adapters=backend.adapters, channel_caches=True,
                                   max_batch=max_batch)
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
        new_cache(self.model.config)  # refuse unsupported models here, not on the first request
        self._stop_ids = set(backend.stop_ids)
        self._wakeup = threading.Condition()
        self._waiting: deque[_Request] = deque()  # guarded by _wakeup
        self._closing = False
        # Owned by the engine thread:
        self._prefills: deque[_Prefill] = deque()
        self._rows: list[_Row] = []
        self._batch = RunningBatch(self.model.config)
        self._thread = threading.Thread(target=self._run, name="model-engine", daemon=True)
        self._thread.start()

    def render(self, messages) -> RenderedPrompt:
        return self.backend.render(messages)

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
        return len(self._rows) + len(self._prefills)

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
        with torch.inference_mode():
            while self._admit():
                try:
                    self._drop_cancelled()
                    self._prefill_some()
                    if self._rows:
                        self._decode_step()
                except Exception as error:  # a bug of ours must not take the engine down
                    log.exception("the batching engine failed; dropping the requests in progress")
                    self._fail_all_in_progress(error)
            self._fail_all_in_progress(GenerationFailed(SHUTTING_DOWN))

    def _admit(self) -> bool:
        """Sleep until there is work; take waiting requests into free places. False: closing."""
        with self._wakeup:
            while not (self._closing or self._waiting or self._rows or self._prefills):
                self._wakeup.wait()
            if self._closing:
                return False
            free = self.max_batch - len(self._rows) - len(self._prefills)
            admitted = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        for request in admitted:
            self._start_prefill(request)
        return True

    def _start_prefill(self, request: _Request) -> None:
        try:
            prompt_ids = request.prompt_ids
            max_new_tokens = self._answer_limit(request.params, len(prompt_ids))
            cache, reused = self._cache_for(request, prompt_ids)
        except Exception as error:
            self._fail(request, error)
            return
        self.counters.reused_tokens += reused
        self._prefills.append(_Prefill(request, prompt_ids, cache, reused, max_new_tokens))

    def _answer_limit(self, params: GenerationSettings, prompt_tokens: int) -> int:
        room = self.context_tokens - prompt_tokens
        if room < 1:
            raise GenerationFailed(f"The conversation ({prompt_tokens} tokens) does not fit the model's "
                                   f"context of {self.context_tokens} tokens.")
        return min(params.max_new_tokens, room)

    def _cache_for(self, request: _Request, prompt_ids: list[int]) -> tuple[DynamicCache, int]:
        """A cache for this prompt: the channel's kept one cut to the longest common token prefix
        (the chat template may render the previous answer differently from how it was generated,
        so only token equality counts), else an empty one. Returns (cache, tokens reused).
        Keys/values computed under another adapter are worth nothing here: they are dropped."""
        kept = self.prefix_cache.take(request.cache_key) if request.cache_key is not None else None
        if kept and kept.lora != request.lora:
            kept = None
        # The last prompt token is always run: its logits choose the first answer token.
        reused = min(common_prefix_length(kept.token_ids, prompt_ids), len(prompt_ids) - 1) if kept else 0
        if reused <= 0:
            return new_cache(self.model.config), 0
        cache = cache_from_layers(self.model.config, kept.layers)
        crop_to(cache, reused)
        return cache, reused

    def _drop_cancelled(self) -> None:
        for prefill in [p for p in self._prefills if p.request.cancelled]:
            self._prefills.remove(prefill)
            self._keep_cache(prefill.request, prefill.prompt_ids[:prefill.done], layers_of(prefill.cache))
        cancelled = [i for i, row in enumerate(self._rows) if row.request.cancelled]
        if cancelled:
            self._retire(cancelled, [])

    def _prefill_some(self) -> None:
        """Run up to prefill_chunk_tokens prompt tokens, oldest request first."""
        budget = self.prefill_chunk_tokens
        while self._prefills and budget > 0:
            prefill = self._prefills[0]
            chunk = prefill.prompt_ids[prefill.done:prefill.done + budget]
            try:
                logits = self._forward_alone(prefill.cache, chunk, prefill.done, prefill.request.lora)
            except Exception as error:
                self._prefills.popleft()
                self._fail(prefill.request, error)
                continue
            prefill.done += len(chunk)
            budget -= len(chunk)
            self.counters.prefilled_tokens += len(chunk)
            if prefill.done == len(prefill.prompt_ids):
                self._prefills.popleft()
                self._start_row(prefill, logits)

    def _forward_alone(self, cache: DynamicCache, token_ids: list[int], start: int, lora: str | None) -> torch.Tensor:
        """Run one sequence's tokens on top of its cache; the logits for the position after the last."""
        device = self.model.device
        output = self.model(input_ids=torch.tensor([token_ids], device=device),
                            position_ids=torch.arange(start, start + len(token_ids), device=device)[None],
                            cache=cache, use_cache=True, logits_to_keep=1, **self.backend.lora_arguments([lora]))
        return output.logits[0, -1]

    def _start_row(self, prefill: _Prefill, logits: torch.Tensor) -> None:
        request = prefill.request
        row = _Row(request, cache_ids=list(prefill.prompt_ids),
                   sampler=RowSampler(request.params, prefill.prompt_ids, logits.device),
                   text=IncrementalText(self.backend.decode), max_new_tokens=prefill.max_new_tokens)
        try:
            finished = self._choose_token(row, logits)
        except Exception as error:
            self._fail(request, error)
            return
        if finished:
            self._keep_cache(request, row.cache_ids, layers_of(prefill.cache))
            self._complete(row)
            return
        self._batch.add(prefill.cache)
        self._rows.append(row)
        self.counters.largest_batch = max(self.counters.largest_batch, len(self._rows))

    def _decode_step(self) -> None:
        """One token for every row, in one forward over the whole batch."""
        device = self.model.device
        attention_mask, position_ids = self._batch.step_inputs(device)
        input_ids = torch.tensor([[row.next_token] for row in self._rows], device=device)
        try:
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache=self._batch.cache, use_cache=True, logits_to_keep=1,
                                **self.backend.lora_arguments([row.request.lora for row in self._rows]))
        except Exception as error:
            # One forward serves every row, so every row fails; the engine goes on for the next requests.
            self._fail_rows(range(len(self._rows)), error)
            return
        logits = output.logits[:, -1]
        finished, failed = [], {}
        for index, row in enumerate(self._rows):
            row.cache_ids.append(row.next_token)
            try:
                if self._choose_token(row, logits[index]):
                    finished.append(index)
            except Exception as error:
                failed[index] = error
        if not (finished or failed):
            return
        done_rows = [self._rows[i] for i in finished]
        failures = [(self._rows[i].request, error) for i, error in failed.items()]
        # Out of the batch before the callers hear of it: an answered request holds no place.
        self._retire(finished, list(failed))
        for row in done_rows:
            self._complete(row)
        for request, error in failures:
            self._fail(request, error)

    def _choose_token(self, row: _Row, logits: torch.Tensor) -> bool:
        """Choose the row's next token and pass on its text. True when the row is finished."""
        token = row.sampler.next_token(logits)
        row.generated += 1
        self.counters.generated_tokens += 1
        delta = row.text.push(token)
        if delta:
            row.request.send(DELTA, delta)
        row.next_token = token
        return token in self._stop_ids or row.generated >= row.max_new_tokens

    def _complete(self, row: _Row) -> None:
        delta = row.text.finish()
        if delta:
            row.request.send(DELTA, delta)
        row.request.send(DONE, None)

    def _retire(self, keep: list[int], discard: list[int]) -> None:
        """Take rows out of the batch; `keep` rows leave their cache to their channel."""
        for index in keep:
            row = self._rows[index]
            self._keep_cache(row.request, row.cache_ids, self._batch.row_layers(index))
        leaving = set(keep) | set(discard)
        self._batch.remove(sorted(leaving))
        self._rows = [row for i, row in enumerate(self._rows) if i not in leaving]

    def _keep_cache(self, request: _Request, token_ids: list[int], layers) -> None:
        if request.cache_key is not None and token_ids:
            self.prefix_cache.put(request.cache_key, token_ids, layers, request.lora)

    def _fail(self, request: _Request, error: Exception) -> None:
        if isinstance(error, GenerationError):
            # A fresh instance per caller: one exception raised in several tasks would share a traceback.
            failure = type(error)(str(error))
        else:
            log.error("the model failed while generating", exc_info=error)
            failure = GenerationFailed(f"The model failed while writing a reply ({type(error).__name__}).")
            failure.__cause__ = error
        request.send(ERROR, failure)

    def _fail_rows(self, indices, error: Exception) -> None:
        indices = list(indices)
        requests = [self._rows[i].request for i in indices]
        self._retire([], indices)
        for request in requests:
            self._fail(request, error)

    def _fail_all_in_progress(self, error: Exception) -> None:
        for prefill in self._prefills:
            self._fail(prefill.request, error)
        for row in self._rows:
            self._fail(row.request, error)
        self._prefills.clear()
        self._rows = []
        self._batch = RunningBatch(self.model.config)
