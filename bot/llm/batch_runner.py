"""The engine thread's work: prefill new requests, decode every row together, retire rows.

A round (BatchRunner.round, called by the engine thread while there is work):

1. rows whose caller stopped listening leave (their computed keys/values are kept for the
   channel);
2. prefill: requests that took a slot run their prompt into it, at most
   `prefill_chunk_tokens` a round (oldest first), so a long prompt does not stall the rows
   already answering; a channel's kept prefix is copied into the slot first, and only the
   rest of the prompt is run;
3. decode: one forward for the slots [0, top), one token for each decoding row (on a GPU,
   the replay of a recorded CUDA graph of it: bot/llm/decode_graphs.py); all rows' next
   tokens are chosen at once on the device (BatchSampler) and read back in one copy;
   finished, failed and cancelled rows give their slot back at once.

Keys/values live in fixed slots (bot/llm/slots.py): nothing is concatenated or copied when
rows join or leave. Text is detokenized incrementally (bot/llm/detokenize.py).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from functools import partial
import torch

from ..core.tokens import common_prefix_length
from .batch_sampler import BatchSampler
from .decode_graphs import DecodeGraphs
from .kv_cache import PrefixCache
from .port import GenerationError, GenerationFailed
from .detokenize import IncrementalText
from .slots import SlotCache
from .thought_cap import ThoughtCap
from .transformers_backend import TransformersBackend

log = logging.getLogger(__name__)

# A batched prefill pads its chunks to the longest: at most this many times their own tokens.
PADDING_WASTE = 1.25

# What the engine thread sends to a waiting caller.
DELTA, DONE, ERROR = "delta", "done", "error"


@dataclass
class EngineCounters:
    """Running totals, for benchmarks and operators."""

    prefilled_tokens: int = 0  # prompt tokens run through the model
    reused_tokens: int = 0  # prompt tokens taken from a channel's kept cache instead
    generated_tokens: int = 0
    largest_batch: int = 0
    decode_steps: int = 0
    prefill_forwards: int = 0  # forwards that ran prompt tokens (several requests' chunks may share one)
    host_reads: int = 0  # device-to-host copies of chosen tokens (one per decode step)


@dataclass
class _Row:
    """A request in a slot: prefilling while `done` < the prompt's length, then decoding."""

    request: object  # engine._Request
    slot: int
    cache_ids: list[int]  # the tokens whose keys/values are in the slot, in order
    max_new_tokens: int
    text: IncrementalText
    thought: ThoughtCap | None  # None: the model does not think
    done: int = 0  # prompt tokens in the slot
    generated: int = 0
    finished: bool = False

    def forced_next(self) -> int | None:
        """The token the row must take next instead of the sampler's choice: its thought's closing."""
        return self.thought.forced_next() if self.thought is not None else None

    @property
    def allowance(self) -> int:
        """New tokens the row may write: a forced thought closing comes on top."""
        return self.max_new_tokens + (self.thought.forced if self.thought is not None else 0)

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.prompt_ids


class BatchRunner:
    """Owned by the engine thread alone."""

    def __init__(self, backend: TransformersBackend, *, max_batch: int, slot_tokens: int, slots_at_once: bool,
                 prefix_cache: PrefixCache, prefill_chunk_tokens: int, counters: EngineCounters,
                 graphs: DecodeGraphs | None = None):
        self.backend = backend
        self.model = backend.model
        config = self.model.config
        device, dtype = self.model.device, self.model.dtype
        self.slots = SlotCache(config, max_batch, slot_tokens, device, dtype, at_once=slots_at_once)
        self.sampler = BatchSampler(max_batch, config.vocab_size, device)
        self.prefix_cache = prefix_cache
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.counters = counters
        self.stop_ids = set(backend.stop_ids)
        self._prefills: deque[_Row] = deque()
        self._decoding: dict[int, _Row] = {}  # by slot
        self._next_tokens = torch.zeros(max_batch, dtype=torch.long, device=device)  # chosen, not yet run
        self.outbox = Outbox()
        self.graphs = graphs  # None: every decode step runs eagerly

    @property
    def active(self) -> int:
        return len(self._prefills) + len(self._decoding)

    # Joining ------------------------------------------------------------------------

    def start(self, request, max_new_tokens: int) -> None:
        """A request takes a slot (the engine admits no more than there are slots)."""
        slot = self.slots.take()
        # Held back: a trailing start of a special token's text, which decode removes once whole.
        text = IncrementalText(self.backend.decode, hold=self.backend.tokenizer.all_special_tokens)
        markers = self.backend.thought_markers
        thought = ThoughtCap(markers, request.params.max_thinking_tokens, request.prompt_ids) if markers else None
        row = _Row(request, slot, [], max_new_tokens, text, thought)
        try:
            row.done = self._reuse_kept_prefix(row)
        except Exception as error:
            self._leave(row, error=error)
            return
        row.cache_ids = list(row.prompt_ids[:row.done])
        self.counters.reused_tokens += row.done
        self._prefills.append(row)

    def _reuse_kept_prefix(self, row: _Row) -> int:
        """Copy the channel's kept keys/values for the longest common token prefix into the slot
        (the chat template may render the previous answer differently from how it was generated,
        so only token equality counts). Keys/values computed under another adapter are dropped.
        Returns the prompt tokens reused; the last prompt token is always run (its logits choose
        the first answer token)."""
        request = row.request
        kept = self.prefix_cache.take(request.cache_key) if request.cache_key is not None else None
        if not kept or kept.lora != request.lora:
            return 0
        reused = min(common_prefix_length(kept.token_ids, row.prompt_ids), len(row.prompt_ids) - 1)
        if reused > 0:
            self.slots.load(row.slot, kept.layers, reused)
        return max(reused, 0)

    def record_graphs(self) -> None:
        """Record the decode step's graph for every rows bucket at the slots' first width, before
        any request comes (start-up), so the first answers do not wait for recording. Idle slots
        only write their scratch column, so nothing any row holds changes."""
        if self.graphs is None:
            return
        rows, columns = 0, self.graphs.columns_for(0, self.slots.columns)
        while rows < self.slots.slots and self.graphs.enabled:
            rows = self.graphs.rows_for(rows + 1, self.slots.slots)
            with self.backend.adapters_for([None]):
                self.graphs.record((rows, columns, None), self.slots.allocation,
                                   partial(self._decode_forward, rows, columns))

    # A round -----------------------------------------------------------------------------

    def round(self) -> None:
        try:
            self._drop_cancelled()
            self._prefill_some()
            if self._decoding:
                self._decode_step()
        finally:
            self.outbox.flush()

    def _drop_cancelled(self) -> None:
        for row in [r for r in self._prefills if r.request.cancelled]:
            self._prefills.remove(row)
            self._leave(row, keep=True)
        for row in [r for r in self._decoding.values() if r.request.cancelled]:
            self._leave(row, keep=True)

    def _prefill_some(self) -> None:
        """One prefill forward a round, of at most prefill_chunk_tokens prompt tokens: the oldest
        requests' chunks together, so that a long prompt (or a crowd of new ones) does not stall
        the rows already answering for long."""
        if not self._prefills:
            return
        batch = self._next_prefill_batch(self.prefill_chunk_tokens)
        try:
            logits = self._forward_prefill(batch)
        except Exception as error:  # one forward served them all
            for row, _chunk in batch:
                self._prefills.remove(row)
                self._leave(row, error=error)
            return
        self.counters.prefill_forwards += 1
        for index, (row, chunk) in enumerate(batch):
            row.done += len(chunk)
            row.cache_ids.extend(chunk)
            self.counters.prefilled_tokens += len(chunk)
            if row.done == len(row.prompt_ids):
                self._prefills.remove(row)
                self._start_decoding(row, logits[index:index + 1])

    def _next_prefill_batch(self, budget: int) -> list[tuple[_Row, list[int]]]:
        """The oldest request's next chunk (cut to the budget), then the next requests' whole rest
        of prompt while they fit the budget and, padded to the longest, cost at most PADDING_WASTE
        times their own tokens (on a GPU each forward costs about as much as a launch-bound
        step; on a CPU padding is real work)."""
        first = self._prefills[0]
        batch = [(first, first.prompt_ids[first.done:first.done + budget])]
        budget -= len(batch[0][1])
        for row in list(self._prefills)[1:]:
            chunk = row.prompt_ids[row.done:]
            lengths = [len(c) for _, c in batch] + [len(chunk)]
            if len(chunk) > budget or len(lengths) * max(lengths) > PADDING_WASTE * sum(lengths):
                break
            batch.append((row, chunk))
            budget -= len(chunk)
        return batch

    def _forward_prefill(self, batch: list[tuple[_Row, list[int]]]) -> torch.Tensor:
        """One forward for the batch's chunks; the logits at each row's last token, [rows, vocab]."""
        longest = max(len(chunk) for _, chunk in batch)
        positions, mask = self.slots.prefill_inputs([row.slot for row, _ in batch],
                                                    [len(chunk) for _, chunk in batch])
        input_ids = torch.tensor([[0] * (longest - len(chunk)) + chunk for _, chunk in batch], device=self.model.device)
        with self.backend.adapters_for([row.request.lora for row, _ in batch]) as lora_arguments:
            output = self.model(input_ids=input_ids, position_ids=positions, attention_mask=mask, cache=self.slots,
                                use_cache=True, logits_to_keep=1, **lora_arguments)
        return output.logits[:, -1]

    def _start_decoding(self, row: _Row, logits: torch.Tensor) -> None:
        self.sampler.add(row.slot, row.request.params, row.prompt_ids)
        try:
            forced = row.forced_next()
            token = self.sampler.choose(logits, [row.slot], forced=None if forced is None else {0: forced})
            self._next_tokens[row.slot] = token[0]
            self._take_token(row, token.item())
        except Exception as error:
            self._leave(row, error=error)
            return
        if not row.finished:
            self.slots.start_decoding(row.slot)
            self._decoding[row.slot] = row
            self.counters.largest_batch = max(self.counters.largest_batch, len(self._decoding))

    def _decode_step(self) -> None:
        """One token for every decoding row, in one forward over the slots [0, top)."""
        rows = [self._decoding[slot] for slot in sorted(self._decoding)]
        try:
            logits = self._decode_logits(rows)
            self.slots.advance()
            slots = [row.slot for row in rows]
            slot_index = self.sampler.index(slots)
            if len(slots) != logits.shape[0]:  # some slots of the step's range do not decode
                logits = logits[slot_index]
            forced = {i: token for i, row in enumerate(rows) if (token := row.forced_next()) is not None}
            tokens = self.sampler.choose(logits, slots, forced=forced)
            self._next_tokens[slot_index] = tokens
            chosen = tokens.tolist()  # the one device-to-host read of the step
        except Exception as error:
            # One forward serves every row, so every row fails; the engine goes on for the next requests.
            for row in rows:
                self._leave(row, error=error)
            return
        self.counters.decode_steps += 1
        self.counters.host_reads += 1
        for row in rows:
            row.cache_ids.append(row.text.token_ids[-1])  # the token this step ran is in the slot now
        if self.graphs is not None and self.graphs.take_suspect_writes():
            self._rewrite_slots()
        self._take_tokens(rows, chosen)

    def _rewrite_slots(self) -> None:
        """A recorded step failed its check after it had run (graphs are off now). The step's
        logits came from the eager forward, but the replay wrote keys/values for every slot in its
        range, maybe into wrong columns: every row's slot is written again from its tokens, as a
        prefill whose logits are thrown away, so the answers go on as if graphs had never run."""
        rows = [*self._decoding.values(), *self._prefills]
        for row in rows:
            self.slots.rewind(row.slot)
            for start in range(0, len(row.cache_ids), self.prefill_chunk_tokens):
                self._forward_prefill([(row, row.cache_ids[start:start + self.prefill_chunk_tokens])])
        log.warning("Rewrote the key/value slots of %d answer(s) in progress after the failed graph.", len(rows))

    def _decode_logits(self, rows: list[_Row]) -> torch.Tensor:
        """The step's last-position logits, one row per slot of the step's range: from a recorded
        graph of a bucketed range where there is one (bot/llm/decode_graphs.py), else eagerly
        over exactly [0, top)."""
        top, needed = self.slots.top(), self.slots.decode_columns()
        # A slot in range that does not decode runs with any row's adapter: its output is unused,
        # and a batch all on one adapter keeps peft's single-adapter path.
        loras = [(self._decoding.get(s) or rows[0]).request.lora for s in range(top)]
        with self.backend.adapters_for(loras) as lora_arguments:
            if self.graphs is not None and not lora_arguments:  # a mix of adapters runs eagerly
                bucket = (self.graphs.rows_for(top, self.slots.slots),
                          self.graphs.columns_for(needed, self.slots.columns), loras[0])
                logits = self.graphs.run(bucket, self.slots.allocation, partial(self._decode_forward, *bucket[:2]))
                if logits is not None:
                    return logits
            return self._decode_forward(top, needed, **lora_arguments)

    def _decode_forward(self, top: int, kv_columns: int, **lora_arguments) -> torch.Tensor:
        positions, mask = self.slots.decode_inputs(top, kv_columns)
        output = self.model(input_ids=self._next_tokens[:top, None], position_ids=positions, attention_mask=mask,
                            cache=self.slots, use_cache=True, logits_to_keep=1, **lora_arguments)
        return output.logits[:, -1]

    def _take_tokens(self, rows: list[_Row], tokens: list[int]) -> None:
        """Pass each row's new token on; a row that fails here leaves alone, the others go on."""
        for row, token in zip(rows, tokens):
            try:
                self._take_token(row, token)
            except Exception as error:
                self._leave(row, error=error)

    def _take_token(self, row: _Row, token: int) -> None:
        """Pass the token on as text; a finished row leaves, its cache kept for the channel."""
        row.generated += 1
        self.counters.generated_tokens += 1
        if row.thought is not None:
            row.thought.observe(token)
        delta = row.text.push(token)
        if delta:
            self.outbox.post(row.request, DELTA, delta)
        if token in self.stop_ids or row.generated >= row.allowance:
            row.finished = True
            delta = row.text.finish()
            if delta:
                self.outbox.post(row.request, DELTA, delta)
            self._leave(row, keep=True)
            self.outbox.post(row.request, DONE, None)

    # Leaving --------------------------------------------------------------------------------

    def _leave(self, row: _Row, *, keep: bool = False, error: Exception | None = None) -> None:
        """The row gives its slot back; with `keep`, what the slot holds is kept for the channel."""
        self._decoding.pop(row.slot, None)
        if keep and row.request.cache_key is not None and row.cache_ids:
            self.prefix_cache.put(row.request.cache_key, row.cache_ids, self.slots.copy_out(row.slot),
                                  row.request.lora)
        self.sampler.remove(row.slot)
        self.slots.give_back(row.slot)
        if error is not None:
            self.outbox.post(row.request, ERROR, failure_for(error))

    def fail_all(self, error: Exception) -> None:
        for row in [*self._prefills, *self._decoding.values()]:
            self._leave(row, error=error)
        self._prefills.clear()
        self.outbox.flush()


class Outbox:
    """What a round has for the callers, handed to their event loop in one call per round:
    waking a loop costs a write to its self-pipe, too much to pay for every token of every row."""

    def __init__(self) -> None:
        self._by_loop: dict[object, list[tuple[object, tuple[str, object]]]] = {}

    def post(self, request, kind: str, value: object) -> None:
        self._by_loop.setdefault(request.loop, []).append((request.events, (kind, value)))

    def flush(self) -> None:
        by_loop, self._by_loop = self._by_loop, {}
        for loop, events in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:  # that event loop is closed: nobody is listening
                pass


def _deliver(events) -> None:
    for queue, event in events:
        queue.put_nowait(event)


def fail(request, error: Exception) -> None:
    request.send(ERROR, failure_for(error))


def failure_for(error: Exception) -> GenerationError:
    """What the caller is told: a fresh GenerationError (never one instance for several callers)."""
    if isinstance(error, GenerationError):
        # A fresh instance per caller: one exception raised in several tasks would share a traceback.
        failure = type(error)(str(error))
    else:
        log.error("the model failed while generating", exc_info=error)
        failure = GenerationFailed(f"The model failed while writing a reply ({type(error).__name__}).")
        failure.__cause__ = error
    return failure

