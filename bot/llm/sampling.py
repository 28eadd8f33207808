"""Per-row token choice and text deltas for the batching engine.

Every row of a batch carries its own settings, so the next token is chosen per
row from that row's logits, with transformers' own logits processors, in the
order transformers' generate() applies them: repetition penalty over the row's
prompt + generated ids, then temperature, then top-p; greedy when do_sample is off.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from ..config import GenerationSettings

REPLACEMENT_CHAR = "\ufffd"


def is_greedy(params: GenerationSettings) -> bool:
    """Temperature 0 is read as its limit, greedy decoding (transformers would refuse it outright)."""
    return not params.do_sample or params.temperature == 0


def processors_for(params: GenerationSettings) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not is_greedy(params):
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(params.temperature)))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors


class RowSampler:
    """Chooses one row's tokens; remembers the ids it has seen for the repetition penalty."""

    def __init__(self, params: GenerationSettings, prompt_ids: list[int], device: torch.device | str = "cpu"):
        self.greedy = is_greedy(params)
        self.processors = processors_for(params)
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
