"""A thought has a hard cap (issue 15): at `max_thinking_tokens` the model's own closing is put
in and the model goes on to answer, on the batching engine and on the one-at-a-time generate()
path alike, so a long thought can never leave a reply with no answer."""

from __future__ import annotations

import dataclasses

import pytest

from bot.config import GenerationSettings
from bot.core.cleaning import clean_reply
from bot.llm.thought_cap import CLOSING_TEXT, ThoughtCap, ThoughtMarkers
from tests.support.engines import chat, load_tiny

OPEN, CLOSE, NEWLINE = 900, 901, 10
MARKERS = ThoughtMarkers(open_id=OPEN, close_id=CLOSE, closing=(NEWLINE, CLOSE, NEWLINE))


def taken(cap: ThoughtCap, chosen: list[int]) -> list[int]:
    """The tokens a row takes when its sampler chooses `chosen`, one by one."""
    tokens = []
    for token in chosen:
        forced = cap.forced_next()
        tokens.append(token if forced is None else forced)
        cap.observe(tokens[-1])
    return tokens


def test_a_thought_opened_by_the_model_is_closed_at_the_limit_then_the_answer_goes_on():
    cap = ThoughtCap(MARKERS, limit=3, prompt_ids=[1, 2, 3])
    assert taken(cap, [OPEN, 5, 6, 7, 8, 9, 11, 12, 13]) == [OPEN, 5, 6, 7, NEWLINE, CLOSE, NEWLINE, 12, 13]
    assert cap.forced == 3


def test_a_prompt_that_ends_inside_a_thought_counts_from_its_first_token():
    cap = ThoughtCap(MARKERS, limit=2, prompt_ids=[CLOSE, 4, OPEN, NEWLINE])
    assert taken(cap, [5, 6, 7, 8, 9, 11]) == [5, 6, NEWLINE, CLOSE, NEWLINE, 11]


def test_a_thought_closed_in_time_is_left_alone_and_so_is_an_answer_without_one():
    cap = ThoughtCap(MARKERS, limit=3, prompt_ids=[OPEN, 4, CLOSE])  # an ended thought earlier in the chat
    assert taken(cap, [OPEN, 5, CLOSE, 6, 7, 8, 9]) == [OPEN, 5, CLOSE, 6, 7, 8, 9]
    assert cap.forced == 0


def test_a_limit_of_zero_closes_a_thought_at_once():
    cap = ThoughtCap(MARKERS, limit=0, prompt_ids=[OPEN])
    assert taken(cap, [5, 6, 7, 8]) == [NEWLINE, CLOSE, NEWLINE, 8]


# The real engine and generate() on the tiny SmolLM3 (its tokenizer has <think> and </think>) -----

THINK_LIMIT, ANSWER = 5, 6
CAPPED = GenerationSettings(do_sample=False, repetition_penalty=1.0, max_thinking_tokens=THINK_LIMIT,
                            max_new_tokens=THINK_LIMIT + ANSWER)  # as the service asks: the answer's room on top
UNCAPPED = dataclasses.replace(CAPPED, max_thinking_tokens=1000)


@pytest.fixture(scope="module")
def thinking_backend(tiny_smollm3_dir):
    return load_tiny(tiny_smollm3_dir, weight_scale=10.0)  # varied answers, as in tests/test_engine.py


def mid_thought(backend):
    """A prompt whose answer starts inside a thought, as a template that opens it would end."""
    prompt = backend.render(chat("Think hard: why is the sky blue?"), thinking=True)
    ids = (*prompt.token_ids, backend.thought_markers.open_id)
    return dataclasses.replace(prompt, token_ids=ids, tokens=len(ids), opens_thought=True)


async def engine_answer(engine, prompt, params) -> str:
    return "".join([piece async for piece in engine.stream(prompt, params, channel=None)])


def generate_answer(backend, prompt, params) -> str:
    pieces = []
    backend.generate_stream(prompt, params, lambda: False, pieces.append, None)
    return "".join(pieces)


async def test_the_engine_closes_a_long_thought_at_the_limit_and_still_answers(thinking_backend, make_engine):
    engine = make_engine(thinking_backend, max_batch=2)
    prompt = mid_thought(thinking_backend)
    uncapped = await engine_answer(engine, prompt, UNCAPPED)
    assert "</think>" not in uncapped  # left alone, this model thinks to the end of the allowance

    capped = await engine_answer(engine, prompt, CAPPED)
    thought, closing, answer = capped.partition(CLOSING_TEXT)
    assert closing and uncapped.startswith(thought)  # its own thought, cut at the limit
    tokenizer = thinking_backend.tokenizer
    assert len(tokenizer.encode(thought, add_special_tokens=False)) == THINK_LIMIT
    assert clean_reply(capped, prompt.opens_thought) == clean_reply(answer) != ""  # what people see: the answer alone


@pytest.mark.parametrize("penalty", [1.0, 1.3])  # with a penalty, the closing counts as seen on both paths
async def test_generate_closes_the_thought_where_the_engine_does(thinking_backend, make_engine, penalty):
    engine = make_engine(thinking_backend, max_batch=2)
    prompt, params = mid_thought(thinking_backend), dataclasses.replace(CAPPED, repetition_penalty=penalty)
    by_generate = generate_answer(thinking_backend, prompt, params)
    assert CLOSING_TEXT in by_generate
    assert by_generate == await engine_answer(engine, prompt, params)


def test_a_model_without_thought_markers_has_no_cap(embedded_worker):
    assert embedded_worker.backend.thought_markers is None  # SmolLM2: nothing to count, nothing forced
