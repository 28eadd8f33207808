"""Serving LoRA adapters: one base model, adapters picked per request, per server.

Real parts: the embedded SmolLM2-135M (float32, greedy), LoRA adapters made here with peft
itself (random, non-zero lora_B, so they change the answers), the batching engine, the
one-at-a-time worker, the service with a real SQLite store, the CLI as a subprocess, and the
real discord.py client against the fake Discord. One backend with adapters is loaded for the
whole module.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

from bot import messages
from bot.config import GenerationSettings, load_settings
from bot.discord_bot.commands import adapter_choices
from bot.llm.adapters import AdapterProblem, Adapters, plan_adapters
from bot.llm.engine import BatchingEngine
from bot.llm.transformers_backend import ModelLoadError, load_transformers_backend
from bot.llm.port import GenerationFailed
from bot.llm.worker import ModelWorker
from bot.service import Actor, ChatService
from bot.store import Store
from bot.terminal import TerminalChat
from tests.support.conversation import said as said_in
from tests.support.discord_scene import EPHEMERAL, running_bot
from tests.support.scripted import ScriptedBackend
from tests.support.settings import REPO_ROOT, settings_for
from tests.support.store_queries import audit_entries
from tests.support.models import generate
from tests.support.recording import graphs_on_the_cpu

GREEDY = GenerationSettings(do_sample=False, max_new_tokens=8, repetition_penalty=1.0)
SEA = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "Tell me about the sea."}]
CATS = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Why do cats purr?"}]
ADMIN = Actor(id=5, name="admin")


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, embedded_backend):
    """Two LoRA adapters for the embedded model, saved as peft's save_pretrained writes them.
    A copy of the model is wrapped (the session's model is left alone); init_lora_weights=False
    gives non-zero lora_B; the weights are then drawn larger, so that each adapter changes even
    short greedy answers, its own way."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapters")
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tuned = get_peft_model(copy.deepcopy(embedded_backend.model), config)
    for seed, name in enumerate(("pirate", "poet"), start=1):
        torch.manual_seed(seed)
        with torch.no_grad():
            for key, parameter in tuned.named_parameters():
                if "lora_" in key:
                    parameter.normal_(std=0.1)
        tuned.save_pretrained(str(folder / name))
    (folder / "notes").mkdir()  # not an adapter: not offered
    return folder


def embedded_settings(**model):
    settings = load_settings(REPO_ROOT / "config.toml", environ={"BOT_MODEL_NAME": "embedded",
                                                                 "BOT_MODEL_DTYPE": "float32"})
    return dataclasses.replace(settings.model, **model)


@pytest.fixture(scope="module")
def tuned_backend(adapters_dir):
    """The embedded model with [model] adapter = pirate (the default) and both adapters to pick."""
    return load_transformers_backend(embedded_settings(adapter=str(adapters_dir / "pirate"),
                                                       adapters_dir=str(adapters_dir)))


@pytest.fixture
async def tuned_engine(tuned_backend):
    engine = BatchingEngine(tuned_backend, timeout_s=120)
    yield engine
    engine.close()


_ALONE: dict[tuple[str, str | None], str] = {}  # (backend and prompt, adapter) -> answer


async def alone(engine: BatchingEngine, prompt: list[dict], adapter: str | None = None) -> str:
    """A greedy answer decoded alone and uncached (computed once per module: it is deterministic)."""
    key = (f"{id(engine.backend)} {json.dumps(prompt)}", adapter)
    if key not in _ALONE:
        _ALONE[key] = await generate(engine, prompt, GREEDY, adapter=adapter)
    return _ALONE[key]


# Loading --------------------------------------------------------------------------------


def test_adapters_load_once_on_one_base_model_by_folder_name(tuned_backend):
    adapters = tuned_backend.adapters
    # The default is one of adapters_dir's: loaded once, under its folder's name.
    assert adapters == Adapters(default="pirate", names=("pirate", "poet"), label="pirate")
    assert set(tuned_backend.model.peft_config) == {"pirate", "poet"}
    assert adapters.choices() == ["pirate", "poet", "default", "base"]


def test_bad_adapter_folders_are_refused_with_one_sentence(tmp_path, adapters_dir):
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    cases = {
        str(tmp_path / "nowhere"): "is not a folder",
        str(tmp_path / "prefix"): "only LoRA adapters are served",
        str(tmp_path): "has no readable adapter_config.json",
    }
    for adapter, expected in cases.items():
        with pytest.raises(AdapterProblem, match=expected) as caught:
            plan_adapters(embedded_settings(adapter=adapter))
        assert "\n" not in str(caught.value)
    reserved = tmp_path / "dir"
    (reserved / "base").mkdir(parents=True)
    (reserved / "base" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterProblem, match='"base" needs another name'):
        plan_adapters(embedded_settings(adapters_dir=str(reserved)))


def test_an_adapter_made_for_another_base_model_ends_start_up_clearly(adapters_dir, tiny_smollm3_dir):
    settings = embedded_settings(name=str(tiny_smollm3_dir), device_map="cpu", adapter=str(adapters_dir / "poet"))
    with pytest.raises(ModelLoadError, match="does not fit the model .* made for another base model") as caught:
        load_transformers_backend(settings)
    assert "\n" not in str(caught.value)


def test_the_cli_says_in_one_line_that_an_adapter_path_is_wrong(tmp_path):
    env = {**os.environ, "BOT_MODEL_ADAPTER": "/nonexistent", "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/b.db"}
    result = subprocess.run([sys.executable, "-m", "bot", "chat", "--model", "embedded"], input="", env=env,
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ['error: [model] adapter: "/nonexistent" is not a folder; point it at a LoRA adapter folder '
                      "(with adapter_config.json and adapter_model.safetensors, as `python -m bot finetune "
                      '--out DIR` writes).'], result.stderr
    assert "Traceback" not in result.stderr


# Answers ------------------------------------------------------------------------------------


async def test_an_adapter_changes_greedy_answers_and_base_is_the_base_model_exactly(tuned_engine, embedded_engine):
    plain = await alone(embedded_engine, SEA)
    default = await alone(tuned_engine, SEA)  # [model] adapter applies when none is asked for
    pirate = await alone(tuned_engine, SEA, "pirate")
    poet = await alone(tuned_engine, SEA, "poet")
    assert default == pirate != plain
    assert len({plain, pirate, poet}) == 3
    assert await alone(tuned_engine, SEA, "base") == plain
    with pytest.raises(GenerationFailed, match='"kraken" is not loaded'):
        await generate(tuned_engine, SEA, GREEDY, adapter="kraken")


async def test_rows_with_different_adapters_share_a_decode_step(tuned_engine):
    requests = [(SEA, "pirate"), (CATS, "base"), (SEA, "base"), (CATS, "poet")]
    answers = [await alone(tuned_engine, prompt, adapter) for prompt, adapter in requests]
    together = await asyncio.gather(*(generate(tuned_engine, prompt, GREEDY, channel=i, adapter=adapter)
                                      for i, (prompt, adapter) in enumerate(requests)))
    assert tuned_engine.counters.largest_batch == len(requests)  # one batch, rows of three adapters
    assert together == answers
    assert answers[0] != answers[2] and answers[1] != answers[3]  # same prompt, other adapter, other answer


async def test_the_one_at_a_time_worker_honours_the_adapter(tuned_backend, tuned_engine, embedded_engine):
    worker = ModelWorker(tuned_backend, timeout_s=120)
    try:
        assert await generate(worker, SEA, GREEDY, adapter="poet") == await alone(tuned_engine, SEA, "poet")
        assert await generate(worker, SEA, GREEDY) == await alone(tuned_engine, SEA)
        assert await generate(worker, SEA, GREEDY, adapter="base") == await alone(embedded_engine, SEA)
    finally:
        worker.close()


async def test_a_channel_cache_is_never_reused_under_another_adapter(tuned_engine):
    first = await generate(tuned_engine, SEA, GREEDY, channel="general", adapter="pirate")
    follow_up = [*SEA, {"role": "assistant", "content": first}, {"role": "user", "content": "And the sky?"}]
    reused = tuned_engine.counters.reused_tokens
    # The server switches to the base model: its channel's cache was computed with the adapter.
    switched = await generate(tuned_engine, follow_up, GREEDY, channel="general", adapter="base")
    assert tuned_engine.counters.reused_tokens == reused  # a fresh prefill
    assert switched == await generate(tuned_engine, follow_up, GREEDY, adapter="base")  # as if never cached
    # Under one adapter the cache is reused, and changes nothing in the answer.
    again = [*follow_up, {"role": "assistant", "content": switched}, {"role": "user", "content": "Thanks."}]
    cached = await generate(tuned_engine, again, GREEDY, channel="general", adapter="base")
    assert tuned_engine.counters.reused_tokens > reused
    assert cached == await generate(tuned_engine, again, GREEDY, adapter="base")


async def test_a_remote_server_is_asked_for_the_adapter_as_its_model(tmp_path, adapters_dir):
    """vLLM serves each LoRA adapter as a model of its own (--lora-modules NAME=PATH): a few lines
    of aiohttp on loopback stand in for it, answering with the model name each request asked for."""
    from aiohttp import web

    from bot.llm.loading import load_model
    from tests.support.openai_server import stub_server

    async def answer_with_the_model_name(request):
        chunk = {"choices": [{"delta": {"content": (await request.json())["model"]}, "finish_reason": "stop"}]}
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer_with_the_model_name)
    async with stub_server(app) as base_url:
        # [model] adapter names the default by its folder; that folder is on the server's machine.
        settings = settings_for(tmp_path / "bot.db").with_overrides(
            "model", backend="openai", base_url=base_url, name="embedded",
            adapter="/srv/adapters/tuned-v2", adapters_dir=str(adapters_dir))
        model = await asyncio.to_thread(load_model, settings)
        try:
            assert model.abilities.adapters.choices() == ["pirate", "poet", "default", "base"]
            asked = [await generate(model, SEA, GREEDY, adapter=a) for a in (None, "poet", "base", "default")]
            assert asked == ["tuned-v2", "poet", "embedded", "tuned-v2"]
        finally:
            await model.aclose()


# The service ----------------------------------------------------------------------------------


def said(guild_id: int, channel_id: int, text: str = "Tell me about the sea."):
    return said_in(text, channel=channel_id, guild=guild_id, author_id=9)


async def test_servers_get_the_default_adapter_or_their_pick(tmp_path, tuned_engine, embedded_engine, caplog):
    settings = settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=8)
    store = await Store.open(settings.database.url)
    try:
        plain = ChatService(store, embedded_engine, settings)
        tuned = ChatService(store, tuned_engine, settings)
        base_answer = (await plain.reply(said(1, 10))).text
        default_answer = (await tuned.reply(said(1, 11))).text  # [model] adapter: every server, unless it picks
        assert default_answer != base_answer

        assert await tuned.servers.set_adapter(2, ADMIN, "base") == messages.ADAPTER_SET.format(
            adapter=messages.ADAPTER_NONE)
        assert (await tuned.reply(said(2, 20))).text == base_answer
        assert await store.adapter(2) == "base"
        [entry] = await audit_entries(store)
        assert (entry.action, entry.actor_id, entry.guild_id, entry.detail) == ("adapter.set", 5, 2, "base")
        assert "Model: the base model, without an adapter." in await tuned.servers.show_persona(2)
        assert 'default fine-tuned adapter ("pirate")' in await tuned.servers.show_persona(1)

        await tuned.servers.set_adapter(2, ADMIN, "default")
        assert await store.adapter(2) is None
        with pytest.raises(Exception, match='no adapter named "kraken".*Pick one of: pirate, poet, default, base'):
            await tuned.servers.set_adapter(2, ADMIN, "kraken")

        # A pick the operator has since removed: the default, and one line for the operator.
        await store.set_adapter(3, "retired")
        with caplog.at_level(logging.WARNING, logger="bot.service"):
            assert (await tuned.reply(said(3, 30))).text == default_answer
            await tuned.reply(said(3, 31))
        gone = [r for r in caplog.records if "retired" in r.getMessage()]
        assert len(gone) == 1 and "no longer served" in gone[0].getMessage()
    finally:
        await store.close()


# Commands: Discord and the terminal (scripted model: the words do not matter) --------------------


class ScriptedWithAdapters(ScriptedBackend):
    """A scripted model that serves two adapters and says which one wrote each answer."""

    adapters = Adapters(default=None, names=("pirate", "poet"))

    def generate(self, messages_, params, should_stop, lora=None) -> str:
        return f"[{lora or 'base'}] " + super().generate(messages_, params, should_stop)

    def generate_stream(self, prompt, params, should_stop, emit, lora=None) -> None:
        emit(self.generate(prompt.messages, params, should_stop, lora))


async def test_persona_adapter_on_discord(tmp_path):
    worker = ModelWorker(ScriptedWithAdapters(), timeout_s=10)
    try:
        async with running_bot(tmp_path, worker=worker) as scene:
            world, store, guild = scene.world, scene.store, scene.world.guild.id
            registered = {c["name"]: c for c in scene.fake.registered_commands()}
            adapter = next(o for o in registered["persona"]["options"] if o["name"] == "adapter")
            assert adapter["options"][0]["autocomplete"] is True
            assert [c.value for c in adapter_choices(scene.service, "p")] == ["pirate", "poet"]
            assert [c.value for c in adapter_choices(scene.service, "OE")] == ["poet"]

            # Typing the name: the operator's adapters are offered to an admin, to no one else.
            for who, offered in ((world.mod, ["pirate", "poet"]), (world.alice, [])):
                typing = await scene.fake.send_interaction(world.general, who, "persona adapter",
                                                           options={"name": "p"}, focused="name")
                suggestions = await scene.fake.wait_for_interaction_response(typing)
                assert suggestions["type"] == 8 and [c["value"] for c in suggestions["data"]["choices"]] == offered

            refused = await scene.command(world.alice, "persona adapter", options={"name": "pirate"},
                                          enforce_default_permissions=False)
            assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")
            assert await store.adapter(guild) is None and await audit_entries(store) == []

            answer = await scene.command(world.mod, "persona adapter", options={"name": "pirate"})
            assert answer["flags"] & EPHEMERAL
            assert answer["content"] == messages.ADAPTER_SET.format(adapter='the fine-tuned adapter "pirate"')
            assert await store.adapter(guild) == "pirate"
            [entry] = await audit_entries(store)
            assert (entry.action, entry.actor_id, entry.detail) == ("adapter.set", world.mod.id, "pirate")
            assert (await scene.ask("hello")).json["content"] == "[pirate] echo: Alice: hello"

            unknown = await scene.command(world.mod, "persona adapter", options={"name": "kraken"})
            assert unknown["content"].startswith('There is no adapter named "kraken"')
            assert "pirate, poet, default, base" in unknown["content"]
            assert await store.adapter(guild) == "pirate"
            shown = await scene.command(world.mod, "persona show")
            assert shown["content"].endswith('Model: the fine-tuned adapter "pirate". Change it with /persona adapter.')

            await scene.command(world.mod, "persona adapter", options={"name": "default"})
            assert (await scene.ask("again")).json["content"] == "[base] echo: Alice: again"
    finally:
        worker.close()


async def test_without_adapters_the_command_says_none_are_configured(scene_without_adapters):
    answer = await scene_without_adapters.command(scene_without_adapters.world.mod, "persona adapter",
                                                  options={"name": "pirate"})
    assert answer["content"] == messages.ADAPTERS_NONE


@pytest.fixture
async def scene_without_adapters(tmp_path):
    async with running_bot(tmp_path) as scene:
        yield scene


async def test_the_terminal_picks_an_adapter(scripted_service):
    worker = ModelWorker(ScriptedWithAdapters(), timeout_s=10)
    service = ChatService(scripted_service.store, worker, scripted_service.settings)
    out = io.StringIO()
    try:
        await TerminalChat(service, stdin=io.StringIO("/persona adapter poet\nhi\n/persona adapter\n"),
                           stdout=out, user_name="Ann").run()
    finally:
        worker.close()
    text = out.getvalue()
    assert 'Done: from the next message, the terminal\'s replies are written by the fine-tuned adapter "poet".' in text
    assert "bot> [poet] echo: Ann: hi" in text
    assert "Pick one of: pirate, poet, default, base" in text


async def test_recorded_decode_steps_keep_each_rows_adapter(tuned_backend):
    """With decode graphs, a batch all on one adapter replays that adapter's own graph (and the
    base model's is another); a mix of adapters runs eagerly. Answers are the same either way."""
    requests = [(SEA, "poet"), (CATS, "poet"), (SEA, "base"), (CATS, "base")]
    plain = BatchingEngine(tuned_backend, timeout_s=120)
    recorded = BatchingEngine(tuned_backend, timeout_s=120, graphs=graphs_on_the_cpu())
    try:
        answers = [await alone(plain, prompt, adapter) for prompt, adapter in requests]
        for batch in (requests[:2], requests[2:], requests):  # all poet, all base, a mix
            together = await asyncio.gather(*(generate(recorded, prompt, GREEDY, adapter=adapter)
                                              for prompt, adapter in batch))
            assert together == [answers[requests.index(request)] for request in batch]
        assert recorded.graphs.enabled
        assert {adapter for _, _, adapter in recorded.graphs.shapes} == {None, "poet"}
        assert recorded.graphs.replays < recorded.counters.decode_steps  # the mixed batch's steps ran eagerly
    finally:
        plain.close()
        recorded.close()
