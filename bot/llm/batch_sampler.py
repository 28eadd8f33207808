"""Next-token choice for every row of a batch at once, on the logits' device.

Choosing per row (a per-row sampler) costs one device-to-host sync per row per step.
Here each row's settings live in per-slot tensors, so one step is a handful of batched
kernels and returns the tokens still on the device: the engine copies them to the host
once, for all rows.

Each setting has the one meaning bot/llm/decoding.py gives it, applied in the order
transformers' generate() applies its processors (and with their arithmetic, so the
scores match transformers' own, which the tests check):
1. repetition penalty, greedy and sampling rows alike, over the prompt's and the
   answer's tokens: a seen token's score s becomes s*penalty if s < 0 else s/penalty;
2. temperature, sampling rows only;
3. top-p, sampling rows only (transformers' TopPLogitsWarper);
then greedy rows (do_sample off or temperature 0) take the argmax, sampling rows draw
from the softmax.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import GenerationSettings
from .decoding import sampling_row


class BatchSampler:
    """Per-slot settings for up to `capacity` rows; chooses all rows' tokens in one go.

    `vocab_size` is the width of the model's logits (its config's vocab_size), which may
    exceed the tokenizer's: the seen mask covers every token the model can produce."""

    def __init__(self, capacity: int, vocab_size: int, device: torch.device | str):
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        # Allocated once; a free slot holds neutral values (greedy, no penalty), which
        # change nothing if it were ever chosen by mistake.
        self.temperature = torch.ones(capacity, dtype=torch.float32, device=self.device)
        # The mass top-p drops, 1 - top_p, rounded as transformers rounds it: computed in
        # Python (double, decoding.sampling_row) then compared in float32. Computing it from a
        # float32 top_p instead would move the cut (1 - float32(0.9) != float32(1 - 0.9)).
        self.top_p_cut = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.penalty = torch.ones(capacity, dtype=torch.float32, device=self.device)
        self.greedy = torch.ones(capacity, dtype=torch.bool, device=self.device)
        self.seen = torch.zeros(capacity, vocab_size, dtype=torch.bool, device=self.device)
        # The same facts on the host, so that a step skips the work no row of it needs (a
        # batch of greedy rows sorts nothing and draws nothing) without asking the device.
        self._samples = [False] * capacity
        self._penalised = [False] * capacity
        self._cuts = [False] * capacity
        self._index_key: tuple[int, ...] = ()
        self._index = torch.zeros(0, dtype=torch.long, device=self.device)

    def add(self, slot: int, params: GenerationSettings, prompt_ids: Sequence[int]) -> None:
        """A row takes `slot`: its settings, and its prompt's ids marked seen."""
        row = sampling_row(params)
        self.temperature[slot] = row.temperature
        self.top_p_cut[slot] = row.top_p_cut
        self.penalty[slot] = row.penalty
        self.greedy[slot] = row.greedy
        self.seen[slot] = False
        self._samples[slot] = not row.greedy
        self._penalised[slot] = row.penalty != 1.0
        self._cuts[slot] = row.top_p_cut > 0
        # Ids the logits cannot score (an embedding wider than the lm_head) cannot be
        # penalised either; transformers drops them too.
        ids = [i for i in prompt_ids if 0 <= i < self.vocab_size]
        if ids:
            self.seen[slot, torch.tensor(ids, dtype=torch.long, device=self.device)] = True

    def remove(self, slot: int) -> None:
        """Frees `slot`: the next row there starts with nothing seen and neutral settings."""
        self.seen[slot] = False
        self.temperature[slot] = 1.0
        self.top_p_cut[slot] = 0.0
        self.penalty[slot] = 1.0
        self.greedy[slot] = True
        self._samples[slot] = self._penalised[slot] = self._cuts[slot] = False

    def index(self, slots: Sequence[int]) -> torch.Tensor:
        """The slots as a device tensor, made again only when the batch's rows change (a copy
        to the device each step would wait for the device on some backends)."""
        key = tuple(slots)
        if key != self._index_key:
            self._index_key, self._index = key, torch.tensor(key, dtype=torch.long, device=self.device)
        return self._index

    def processed_scores(self, logits: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """The rows' scores after repetition penalty, temperature and top-p, in float32,
        -inf where top-p removed a token. `logits` [n, vocab]; `slots` the n rows' slots.
        Each stage runs only when some row of the batch needs it."""
        width = logits.shape[-1]
        if width > self.vocab_size:  # shapes are host metadata: checking them does not sync
            raise ValueError(f"logits have {width} columns, more than vocab_size {self.vocab_size}")
        scores = logits.float()
        if any(self._penalised[slot] for slot in slots):
            scores = self._penalise(scores, self.index(slots), width)
        if any(self._samples[slot] for slot in slots):
            scores = scores / self.temperature[self.index(slots), None]  # greedy rows hold 1.0: exact
        if any(self._cuts[slot] for slot in slots):
            scores = self._top_p(scores, self.index(slots))
        return scores

    def _penalise(self, scores: torch.Tensor, slots: torch.Tensor, width: int) -> torch.Tensor:
        # Repetition penalty. A factor of 1.0 leaves scores exactly as they were, so rows
        # without a penalty need no mask of their own.
        penalty = self.penalty[slots, None]
        penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(self.seen[slots, :width], penalised, scores)

    def _top_p(self, scores: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # Top-p, as TopPLogitsWarper: sort ascending, drop the tokens whose cumulative
        # probability is <= 1 - top_p, always keep the most likely one. Rows with top_p >= 1
        # (and greedy rows) hold a cut of 0 and are left alone: transformers does not run
        # the warper for them, and a cumulative probability of exactly 0 (tokens already
        # at -inf) would otherwise count as removable.
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        cut = self.top_p_cut[slots, None]
        remove_sorted = (cumulative <= cut) & (cut > 0)
        remove_sorted[:, -1] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        return scores.masked_fill(remove, float("-inf"))

    def choose(self, logits: torch.Tensor, slots: Sequence[int], generator: torch.Generator | None = None,
               forced: dict[int, int] | None = None) -> torch.Tensor:
        """Each row's next token, [n] long on the logits' device; marks them seen. `forced` maps
        a row's position in `slots` to the token it must take instead (a thought's closing,
        bot/llm/thought_cap.py): seen is what the row takes, as in generate().

        No .item()/.tolist() here: the caller copies the whole result to the host once."""
        scores = self.processed_scores(logits, slots)
        index = self.index(slots)
        tokens = scores.argmax(dim=-1)
        sampling = [self._samples[slot] for slot in slots]
        if any(sampling):
            # Every row of a mixed batch draws (greedy ones then take their argmax): one kernel
            # for the batch rather than indexing out the sampling rows.
            drawn = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
            tokens = drawn if all(sampling) else torch.where(self.greedy[index], tokens, drawn)
        if forced:  # rare: one small copy to the device
            tokens = tokens.index_put((torch.tensor(list(forced), device=tokens.device),),
                                      torch.tensor(list(forced.values()), device=tokens.device))
        self.seen[index, tokens] = True
        return tokens
