"""Prometheus metrics: replies through the real ChatService (scripted model inside the real
ModelWorker), the endpoint started by the real wiring, scraped over real HTTP."""

import asyncio
import dataclasses
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import open_app
from bot.cli import _is_user_fixable
from bot.config import load_settings
from bot.discord_bot.launch import run_on_discord
from bot.llm.worker import ModelWorker
from bot.metrics import MetricsError
from tests.fakediscord import FakeDiscord, build_world, point_discord_py_at
from tests.support.conversation import said as said_in
from tests.support.discord_scene import MESSAGES, replying_to
from tests.support.ports import free_port
from tests.support.scripted import Gate, ScriptedBackend
from tests.support.settings import REPO_ROOT, settings_for


def said(text: str, channel_id: int = 10):
    return said_in(text, channel=channel_id, guild=1, author="Alice", author_id=7, message_id=99)


def scrape_now(port: int) -> dict[str, float]:
    """Every sample on /metrics, as name{label="value"} -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def scrape(port: int) -> dict[str, float]:
    return await asyncio.to_thread(scrape_now, port)


def metrics_on(tmp_path, port: int, **history):
    settings = settings_for(tmp_path / "bot.db").with_overrides("metrics", enabled=True, port=port)
    return settings.with_overrides("history", **history) if history else settings


async def test_replies_refusals_and_errors_are_counted(tmp_path):
    port = free_port()
    scripted = ScriptedBackend(word_delay_s=0.01)
    app = await open_app(metrics_on(tmp_path, port, max_message_chars=100),
                         ModelWorker(scripted, timeout_s=5), serve_metrics=True)
    try:
        before = await scrape(port)
        assert before["smolbot_replies_total"] == 0 and before['smolbot_refusals_total{reason="too_long"}'] == 0

        answered = await app.service.reply(said("hello there, how are you"))
        refused = await app.service.reply(said("x" * 101))
        scripted.reply = RuntimeError("the model fell over")
        failed = await app.service.reply(said("and now?"))
        assert answered.ok and not refused.ok and not failed.ok

        after = await scrape(port)
    finally:
        await app.close()
    assert after["smolbot_replies_total"] == 1
    assert after['smolbot_refusals_total{reason="too_long"}'] == 1
    assert after['smolbot_errors_total{kind="generation_failed"}'] == 1
    assert after['smolbot_errors_total{kind="timeout"}'] == 0
    # Only the answer had a first token to wait for; its words streamed one by one.
    assert after["smolbot_time_to_first_token_seconds_count"] == 1
    assert after["smolbot_tokens_per_second_count"] == 1
    assert after["smolbot_output_tokens_total"] == len(answered.text.split())  # pieces: no tokenizer here
    assert after["smolbot_queue_depth"] == after["smolbot_active_generations"] == 0


async def test_the_gauges_show_replies_waiting_and_being_written(tmp_path):
    port = free_port()
    gate = Gate()
    scripted = ScriptedBackend(gate.wrap(lambda messages: "one two three"), word_delay_s=0.01)
    app = await open_app(metrics_on(tmp_path, port), ModelWorker(scripted, timeout_s=10), serve_metrics=True)
    seen_while_writing: list[dict] = []

    async def on_progress(text: str) -> None:
        if not seen_while_writing:  # the first words are out, the rest still coming
            seen_while_writing.append(await scrape(port))

    try:
        replying = asyncio.create_task(app.service.reply(said("count to three"), on_progress))
        await gate.wait_entered()  # the model has the prompt and has written nothing yet
        waiting = await scrape(port)
        gate.opened.set()
        assert (await replying).ok
        done = await scrape(port)
    finally:
        gate.opened.set()
        await app.close()
    assert (waiting["smolbot_queue_depth"], waiting["smolbot_active_generations"]) == (1, 0)
    assert waiting["smolbot_replies_in_progress"] == 1
    [writing] = seen_while_writing
    assert (writing["smolbot_queue_depth"], writing["smolbot_active_generations"]) == (0, 1)
    assert (done["smolbot_queue_depth"], done["smolbot_active_generations"], done["smolbot_replies_in_progress"]) == (
        0, 0, 0)


async def test_metrics_are_off_by_default_and_nothing_listens(tmp_path):
    assert load_settings(REPO_ROOT / "config.toml", environ={}).metrics.enabled is False
    port = free_port()
    settings = settings_for(tmp_path / "bot.db").with_overrides("metrics", port=port)
    app = await open_app(settings, ModelWorker(ScriptedBackend()), serve_metrics=True)
    try:
        assert (await app.service.reply(said("hi"))).ok
        with pytest.raises(urllib.error.URLError):
            await scrape(port)
    finally:
        await app.close()


async def test_a_port_in_use_is_one_clear_line_before_anything_else_starts(tmp_path):
    worker = ModelWorker(ScriptedBackend())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as caught:
            await open_app(metrics_on(tmp_path, port), worker, serve_metrics=True)
    worker.close()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "[metrics] port" in message and "\n" not in message
    assert _is_user_fixable(caught.value)  # so `python -m bot run` prints it as one line, no traceback
    assert not (tmp_path / "bot.db").exists()  # it failed first: no database opened, no model loaded


async def test_python_m_bot_run_serves_metrics_while_it_chats(tmp_path):
    port = free_port()
    async with FakeDiscord() as fake:
        world = build_world(fake)
        settings = dataclasses.replace(metrics_on(tmp_path, port), discord_token=fake.token)
        with point_discord_py_at(fake):
            running = asyncio.create_task(run_on_discord(settings, model=ModelWorker(ScriptedBackend())))
            try:
                await fake.wait_until_connected(timeout=5)
                fake.fail_next("POST", MESSAGES, 503)  # Discord loses the first answer (no retry on a 503)
                await fake.send_message(world.general, world.alice, f"{fake.bot.mention} hi")
                await fake.wait_for_request("POST", MESSAGES, predicate=lambda r: r.status == 503, timeout=5)
                message = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} again")
                await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=5)
                samples = await scrape(port)
            finally:
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
    assert samples["smolbot_replies_total"] == 2
    assert samples['smolbot_errors_total{kind="post_failed"}'] == 1
    with pytest.raises(urllib.error.URLError):  # stopped with the bot
        await scrape(port)
