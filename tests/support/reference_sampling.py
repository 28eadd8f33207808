"""transformers' own logits processors, as its generate() applies them: the reference the
batching engine's sampler (bot/llm/batch_sampler.py) is checked against."""

from __future__ import annotations

from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopPLogitsWarper)

from bot.config import GenerationSettings
from bot.llm.decoding import is_greedy


def logits_processors(params: GenerationSettings) -> LogitsProcessorList:
    """Repetition penalty, then temperature, then top-p (sampling rows only), as generate() orders them."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not is_greedy(params):
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(params.temperature)))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors
