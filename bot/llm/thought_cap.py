"""A hard cap on a thought's length: the model's own closing forced in at the limit.

SmolLM3 (and other reasoning models) may think in a <think> block before answering. A thought
that runs on would otherwise spend the reply's whole allowance, leaving no answer. Each row
counts the tokens of an open thought; at `[generation] max_thinking_tokens` the closing
("\\n</think>\\n") is put in as the next tokens instead of what the model would choose, and the
model goes on to write its answer. The forced tokens do not count against the answer's room.

Pure bookkeeping on token ids (no torch): the batching engine applies it after its sampler
chooses (bot/llm/batch_runner.py), the one-at-a-time generate() path through a logits
processor (bot/llm/transformers_backend.py). A remote server chooses its own tokens, so there
the thought is bounded only by the reply's total allowance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

OPEN, CLOSE = "<think>", "</think>"
CLOSING_TEXT = "\n</think>\n"  # how SmolLM3's template writes an ended thought


@dataclass(frozen=True)
class ThoughtMarkers:
    """A tokenizer's thought markers: each a single token, and the tokens of the closing."""

    open_id: int
    close_id: int
    closing: tuple[int, ...]

    def open_at_end(self, prompt_ids: Sequence[int]) -> bool:
        """Whether the prompt ends inside a thought (a template that starts the thought itself)."""
        for token in reversed(prompt_ids):
            if token == self.close_id:
                return False
            if token == self.open_id:
                return True
        return False


def thought_markers(tokenizer) -> ThoughtMarkers | None:
    """The markers, where the tokenizer has <think> and </think> as tokens of their own (None:
    a model that does not think, such as SmolLM2)."""
    ids = [tokenizer.convert_tokens_to_ids(marker) for marker in (OPEN, CLOSE)]
    if any(not isinstance(i, int) or i == tokenizer.unk_token_id for i in ids):
        return None
    closing = tuple(tokenizer.encode(CLOSING_TEXT, add_special_tokens=False))
    if ids[1] not in closing:
        return None
    return ThoughtMarkers(ids[0], ids[1], closing)


class ThoughtCap:
    """One row's thought: how long it has run, and the closing still to put in.

    For each new token: ask `forced_next()` (a token the row must take, or None to take what
    was chosen), then tell `observe(token)` what the row took."""

    def __init__(self, markers: ThoughtMarkers, limit: int, prompt_ids: Sequence[int]):
        self._markers = markers
        self._limit = max(0, limit)
        self._thinking = markers.open_at_end(prompt_ids)
        self._spent = 0
        self._closing: deque[int] = deque()
        self.forced = 0  # tokens put in so far: the row's allowance grows by as many
        self._close_at_limit()

    def forced_next(self) -> int | None:
        return self._closing[0] if self._closing else None

    def observe(self, token: int) -> None:
        if self._closing and token == self._closing[0]:
            self._closing.popleft()
            self.forced += 1
        if token == self._markers.open_id:
            self._thinking, self._spent = True, 0
        elif token == self._markers.close_id:
            self._thinking = False
            return
        elif self._thinking:
            self._spent += 1
        self._close_at_limit()

    def _close_at_limit(self) -> None:
        if self._thinking and self._spent >= self._limit and not self._closing:
            self._closing.extend(self._markers.closing)
