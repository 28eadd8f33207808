"""Generation settings in each backend's own terms: the one place they are translated.

One meaning for every value, whichever backend writes the reply:
- greedy decoding when `do_sample` is off or `temperature` is 0 (the limit of ever colder
  sampling; transformers' temperature warper would refuse 0 outright);
- `temperature` and `top_p` shape sampling only; greedy decoding ignores them;
- `repetition_penalty` (1.0: none) divides the scores of tokens already in the prompt or
  the answer, as transformers applies it, whether sampling or greedy;
- `max_new_tokens` bounds the answer's tokens.

No torch at import: the remote backend uses this module too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import GenerationSettings


def is_greedy(params: GenerationSettings) -> bool:
    return not params.do_sample or params.temperature == 0


def generate_arguments(params: GenerationSettings) -> dict:
    """Keyword arguments for transformers' `model.generate()`."""
    arguments = {"max_new_tokens": params.max_new_tokens, "repetition_penalty": params.repetition_penalty,
                 "do_sample": not is_greedy(params)}
    if not is_greedy(params):  # transformers warns when these are given for greedy decoding
        arguments.update(temperature=params.temperature, top_p=params.top_p)
    return arguments


@dataclass(frozen=True)
class SamplingRow:
    """A reply's settings as the batching engine's sampler (bot/llm/batch_sampler.py) applies them,
    in transformers' order and arithmetic: repetition penalty, temperature, top-p."""

    greedy: bool
    temperature: float  # 1.0 for greedy rows: dividing by 1.0 changes nothing
    top_p_cut: float  # the probability mass top-p removes, 1 - top_p; 0: none (greedy rows, top_p >= 1)
    penalty: float  # 1.0: none


def sampling_row(params: GenerationSettings) -> SamplingRow:
    greedy = is_greedy(params)
    # The cut is computed in Python (double) as transformers computes it, so that a float32
    # comparison cuts where transformers' own TopPLogitsWarper does.
    cut = 0.0 if greedy or params.top_p >= 1.0 else 1.0 - float(params.top_p)
    return SamplingRow(greedy, 1.0 if greedy else float(params.temperature), cut,
                       float(params.repetition_penalty))


def openai_fields(params: GenerationSettings, *, penalty_field: str | None) -> dict:
    """Fields of an OpenAI-compatible chat-completion request. Greedy decoding is temperature 0
    in that API (it has no do_sample field). The repetition penalty is not part of the API
    (frequency_penalty is a different, additive penalty): it goes under the name the server
    reads (`penalty_field`, see ServerKind.penalty_field), or not at all (None)."""
    greedy = is_greedy(params)
    fields = {"max_tokens": params.max_new_tokens, "temperature": 0.0 if greedy else params.temperature}
    if not greedy:  # greedy needs none (TGI refuses a top_p of 1.0)
        fields["top_p"] = params.top_p
    if penalty_field:
        fields[penalty_field] = params.repetition_penalty
    return fields
