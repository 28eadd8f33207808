"""Per-row token choice and text deltas for the batching engine.

Every row of a batch carries its own settings, so the next token is chosen per
row from that row's logits, with transformers' own logits processors, in the
order transformers' generate() applies them (bot/llm/decoding.py says what each
setting means): repetition penalty over the row's prompt + generated ids, then
temperature, then top-p; greedy when do_sample is off or temperature is 0.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..config import GenerationSettings
from .decoding import is_greedy, logits_processors

REPLACEMENT_CHAR = "\ufffd"


class RowSampler:
    """Chooses one row's tokens; remembers the ids it has seen for the repetition penalty."""

    def __init__(self, params: GenerationSettings, prompt_ids: list[int], device: torch.device | str = "cpu"):
        self.greedy = is_greedy(params)
        self.processors = logits_processors(params)
        self._seen = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # where the logits are

    def next_token(self, logits: torch.Tensor) -> int:
        """`logits`: the row's scores for the next position, shape [vocab]."""
        scores = self.processors(self._seen, logits[None].float())
        if self.greedy:
            token = int(scores.argmax(dim=-1))
        else:
            token = int(torch.multinomial(scores.softmax(dim=-1), 1))
        self._seen = torch.cat([self._seen, self._seen.new_tensor([[token]])], dim=1)
        return token


class IncrementalText:
    """Text deltas from a growing list of tokens.

    Decoding token by token breaks characters that span tokens (emoji, CJK), so the
    whole answer is decoded each time and the new suffix emitted; a trailing
    replacement character (half a character so far) is held back until completed."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.token_ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.token_ids.append(token)
        settled = self.decode(self.token_ids).rstrip(REPLACEMENT_CHAR)
        return self._emit(settled) if settled.startswith(self.emitted) else ""

    def finish(self) -> str:
        """The rest of the text, whatever it ends with. Returns the final delta."""
        text = self.decode(self.token_ids)
        return self._emit(text) if text.startswith(self.emitted) else ""

    @property
    def text(self) -> str:
        return self.decode(self.token_ids)

    def _emit(self, text: str) -> str:
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
