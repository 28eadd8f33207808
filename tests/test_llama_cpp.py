"""The remote backend against llama.cpp's servers as people run them: PyPI's llama-cpp-python and
llama.cpp's own C++ llama-server, each serving the embedded SmolLM2 GGUF on 127.0.0.1
(tests/support/llama_server.py), with the bot's real settings, loading, chat service and SQLite
file. Every test runs against both."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from bot import messages
from bot.config import GenerationSettings
from bot.llm import embedded
from bot.llm.loading import load_model
from bot.llm.server_kind import ServerKind
from bot.service import ChatService
from tests.support.conversation import said, stored
from tests.support.llama_server import CONTEXT_TOKENS, LLAMA_CPP_PYTHON, LLAMA_SERVER, llama_server, unavailable
from tests.support.loud_skips import skip_loudly
from tests.support.models import generate
from tests.support.settings import settings_for

STORY = [{"role": "user", "content": "Write a story about a dragon and a knight."}]


# How the bot recognises each (bot/llm/server_kind.py).
KIND = {LLAMA_CPP_PYTHON: ServerKind.LLAMA_CPP_PYTHON, LLAMA_SERVER: ServerKind.LLAMA_CPP}


@pytest.fixture(scope="module", params=[LLAMA_CPP_PYTHON, LLAMA_SERVER])
def llama(request, tmp_path_factory):
    reason = unavailable(request.param)
    if reason:
        skip_loudly(f"{request.param.upper()} TESTS SKIPPED: {reason}")
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(embedded.gguf_path(), log, flavour=request.param) as server:
        yield server


def remote_settings(tmp_path, server, **model):
    settings = settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=24)
    return settings.with_overrides("model", backend="openai", base_url=server.base_url, name="embedded", **model)


async def remote_model(tmp_path, server, **model):
    return await asyncio.to_thread(load_model, remote_settings(tmp_path, server, **model))


async def test_the_server_is_recognised_and_its_own_context_length_is_used(tmp_path, llama, store):
    model = await remote_model(tmp_path, llama)
    try:
        assert model.server is KIND[llama.flavour]
        # The embedded model's config says 8,192; the server gives each request 2,048.
        assert model.context_tokens == CONTEXT_TOKENS
        status = await ChatService(store, model, remote_settings(tmp_path, llama)).status()
        assert f"({CONTEXT_TOKENS:,} tokens of context, as the server reports)" in status
    finally:
        await model.aclose()


async def test_the_repetition_penalty_reaches_the_server_and_changes_greedy_output(tmp_path, llama):
    model = await remote_model(tmp_path, llama)
    try:
        plain = GenerationSettings(do_sample=False, max_new_tokens=48, repetition_penalty=1.0)
        penalised = GenerationSettings(do_sample=False, max_new_tokens=48, repetition_penalty=2.5)
        assert model.request_body(STORY, penalised)["repeat_penalty"] == 2.5
        assert "repetition_penalty" not in model.request_body(STORY, penalised)
        assert await generate(model, STORY, plain) != await generate(model, STORY, penalised)
    finally:
        await model.aclose()


async def test_the_prompt_count_is_what_the_server_counts(tmp_path, llama):
    model = await remote_model(tmp_path, llama)
    chinese = [{"role": "user", "content": ("龙与骑士的故事在很久以前开始了。" * 40)[:600]}]
    try:
        request = urllib.request.Request(
            f"{llama.base_url}/chat/completions", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"messages": chinese, "max_tokens": 1, "temperature": 0}).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["usage"]["prompt_tokens"]
        assert served > 600  # about two tokens a character: the old estimate said 200
        assert model.render(chinese).tokens >= served
    finally:
        await model.aclose()


async def test_a_message_past_the_servers_context_is_refused_in_a_sentence_and_the_channel_goes_on(
        tmp_path, llama, store):
    # Told the context is 8,192, the bot lets a 5,000-token message (3,000 characters, under the
    # 4,000-character limit) through; the server has 2,048 and answers with an empty stream.
    settings = remote_settings(tmp_path, llama, context_tokens=8192)
    model = await asyncio.to_thread(load_model, settings)
    service = ChatService(store, model, settings)
    try:
        refused = await service.reply(said(("龙与骑士的故事在很久以前开始了。" * 200)[:3000]))
        after = await service.reply(said("Say hello."))
    finally:
        await model.aclose()
    assert not refused.ok and "too long for the model server's context" in refused.text
    assert after.ok and after.text
    assert [role for role, _ in await stored(store)] == ["user", "assistant"]


async def test_a_server_killed_mid_answer_leaves_it_cut_short_and_answers_again_once_restarted(
        tmp_path, llama, store):
    settings = remote_settings(tmp_path, llama).with_overrides("generation", max_new_tokens=200)
    model = await asyncio.to_thread(load_model, settings)
    service = ChatService(store, model, settings)
    pieces = []

    async def kill_after_a_few_words(text: str) -> None:
        pieces.append(text)
        if len(pieces) == 3:
            llama.kill()

    try:
        cut = await service.reply(said("Write a long story about a dragon."), on_progress=kill_after_a_few_words)
        assert cut.ok and messages.CUT_SHORT_SERVER in cut.notes and cut.text
        down = await service.reply(said("Are you there?"))
        assert not down.ok and "could not be reached" in down.text
        await asyncio.to_thread(llama.start)
        back = await service.reply(said("Say hello."))
    finally:
        await model.aclose()
    assert back.ok and back.text
    assert [turn.cut_short for turn in await service.history(10) if turn.role == "assistant"] == ["interrupted", None]
