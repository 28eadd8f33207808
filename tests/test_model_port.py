"""The model port (bot/llm/port.py): a prompt is rendered once per answered turn, and every
generation setting means the same on every backend."""

from __future__ import annotations

import pytest

from bot.config import GenerationSettings
from bot.llm import transformers_backend
from bot.llm.decoding import SamplingRow, generate_arguments, openai_fields, sampling_row
from bot.llm.openai_backend import OpenAICompatibleModel
from bot.llm.remote_counting import RemoteTokenCounter
from bot.llm.port import ModelKind
from bot.service import ChatService
from tests.support.conversation import said, stored
from tests.support.models import generate
from tests.support.settings import settings_for

GREEDY = GenerationSettings(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
# Sampling asked for, at temperature 0: its limit, greedy decoding, on every backend.
COLDEST = GenerationSettings(do_sample=True, temperature=0.0, top_p=0.5, max_new_tokens=8, repetition_penalty=1.0)
PROMPT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Ann: name a colour"}]


class CountingRenders:
    """Counts the chat-template renders of the transformers backend (on any thread)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = transformers_backend.render_prompt_ids

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(transformers_backend, "render_prompt_ids", counted)


@pytest.mark.parametrize("runner", ["embedded_engine", "embedded_worker"])
async def test_each_answered_turn_renders_the_chat_template_exactly_once(runner, request, monkeypatch, tmp_path,
                                                                         store):
    model = request.getfixturevalue(runner)
    service = ChatService(store, model, settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=6))
    renders = CountingRenders(monkeypatch)
    for number, text in enumerate(["hello", "what is two and two?", "thanks"], start=1):
        reply = await service.reply(said(text, channel=777))
        assert reply.ok
        assert renders.count == number  # one render per turn: counting and prefill share it
    assert len(await stored(store, channel=777)) == 6


async def test_the_scripted_model_is_asked_with_the_prompt_rendered_for_the_budget(scripted_service, scripted):
    for number in range(1, 4):
        assert (await scripted_service.reply(said(f"message {number}"))).ok
        assert scripted.renders == number


async def test_temperature_zero_is_greedy_on_the_one_at_a_time_worker(embedded_worker):
    """transformers' own generate() refuses temperature 0; here it means greedy, as everywhere."""
    assert await generate(embedded_worker, PROMPT, COLDEST) == await generate(embedded_worker, PROMPT, GREEDY)


async def test_temperature_zero_is_greedy_on_the_batching_engine(embedded_engine):
    assert await generate(embedded_engine, PROMPT, COLDEST) == await generate(embedded_engine, PROMPT, GREEDY)


def test_temperature_zero_is_greedy_for_a_remote_server():
    remote = OpenAICompatibleModel("http://127.0.0.1:9/v1", "m", 2048, RemoteTokenCounter(thinking=False))
    body = remote.request_body(PROMPT, COLDEST)
    assert (body["temperature"], body["max_tokens"]) == (0.0, 8)
    assert "top_p" not in body  # greedy needs none, and TGI refuses a top_p of 1.0
    assert remote.abilities.kind is ModelKind.REMOTE and not remote.abilities.counts_exactly


@pytest.mark.parametrize("params", [GREEDY, COLDEST, GenerationSettings(do_sample=False, temperature=0.7, repetition_penalty=1.0)])
def test_every_greedy_setting_translates_to_greedy_everywhere(params):
    assert generate_arguments(params)["do_sample"] is False
    assert "temperature" not in generate_arguments(params)  # transformers warns about it when greedy
    assert openai_fields(params, penalty_field=None)["temperature"] == 0.0
    assert sampling_row(params).greedy and sampling_row(params).temperature == 1.0
    assert sampling_row(params).top_p_cut == 0.0


def test_sampling_settings_translate_to_each_backends_names():
    hot = GenerationSettings(do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.2,
                             max_new_tokens=50)
    assert generate_arguments(hot) == {"max_new_tokens": 50, "repetition_penalty": 1.2, "do_sample": True,
                                       "temperature": 0.8, "top_p": 0.9}
    assert openai_fields(hot, penalty_field="repetition_penalty") == {"max_tokens": 50, "temperature": 0.8,
                                                                      "top_p": 0.9, "repetition_penalty": 1.2}
    assert openai_fields(hot, penalty_field="repeat_penalty")["repeat_penalty"] == 1.2  # llama.cpp's name
    assert "repetition_penalty" not in openai_fields(hot, penalty_field=None)
    assert sampling_row(hot) == SamplingRow(greedy=False, temperature=0.8, top_p_cut=1.0 - 0.9, penalty=1.2)
