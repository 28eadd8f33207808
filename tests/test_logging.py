"""Structured logs: one line per event with ids, timings and outcome, and never what people or
the model wrote unless debug logging is asked for."""

import json
import logging

from sqlalchemy import text

from bot.llm.worker import ModelWorker
from bot.service import ChatService
from bot.telemetry import JsonLinesFormatter
from tests.support.conversation import said
from tests.support.discord_scene import running_bot
from tests.support.scripted import ScriptedBackend

SECRET = "my locker code is pineapple-4417"
ANSWER = "noted, I will remember mango-9921"


def everything_logged(caplog) -> str:
    """Every record as the handlers would write it, tracebacks included."""
    formatter = logging.Formatter("%(name)s %(message)s")
    return "\n".join(formatter.format(record) for record in caplog.records)


def event_lines(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"event={event} ")]


async def test_a_reply_is_one_line_with_ids_and_timings_and_no_content(store, settings, caplog):
    worker = ModelWorker(ScriptedBackend(ANSWER, word_delay_s=0.005), timeout_s=5)
    service = ChatService(store, worker, settings)
    try:
        with caplog.at_level(logging.INFO):
            reply = await service.reply(said(SECRET, channel=10, guild=20, author_id=30))
            await service.reply(said("x" * 5000, channel=10, guild=20, author_id=30))
    finally:
        worker.close()
    assert reply.text == ANSWER
    [answered, refused] = event_lines(caplog, "reply")
    assert answered.startswith("event=reply guild=20 channel=10 user=30 ")
    assert "outcome=answered" in answered and "ttft_ms=" in answered and "total_ms=" in answered
    assert "outcome=refused reason=too_long" in refused
    logged = everything_logged(caplog)
    assert "pineapple" not in logged and "mango" not in logged and "xxxxx" not in logged


async def test_a_database_failure_is_logged_without_the_message_it_was_storing(store, settings, caplog):
    async with store.engine.begin() as connection:  # the database refuses every new message
        await connection.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON messages "
                                      "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"))
    worker = ModelWorker(ScriptedBackend(ANSWER), timeout_s=5)
    try:
        # Our own debug lines too: the traceback they carry leaves the statement's parameters out.
        with caplog.at_level(logging.DEBUG, logger="bot"):
            reply = await ChatService(store, worker, settings).reply(said(SECRET))
    finally:
        worker.close()
    assert not reply.ok
    [line] = event_lines(caplog, "reply")
    assert "outcome=failed reason=storage" in line and "the disk is full" in line
    assert "pineapple" not in everything_logged(caplog)


async def test_debug_logging_may_show_the_answer(store, settings, caplog):
    worker = ModelWorker(ScriptedBackend(ANSWER), timeout_s=5)
    try:
        with caplog.at_level(logging.DEBUG, logger="bot"):
            await ChatService(store, worker, settings).reply(said(SECRET))
    finally:
        worker.close()
    assert "mango-9921" in everything_logged(caplog)


async def test_json_lines_carry_the_same_fields(store, settings):
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonLinesFormatter())
    logger = logging.getLogger("bot")
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    worker = ModelWorker(ScriptedBackend(ANSWER), timeout_s=5)
    try:
        await ChatService(store, worker, settings).reply(said(SECRET, channel=10, guild=20, author_id=30))
    finally:
        worker.close()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    entries = [json.loads(line) for line in lines]
    [reply] = [entry for entry in entries if entry.get("event") == "reply"]
    assert (reply["guild"], reply["channel"], reply["user"], reply["outcome"]) == (20, 10, 30, "answered")
    assert reply["level"] == "info" and reply["logger"] == "bot.service" and isinstance(reply["ttft_ms"], int)
    assert "pineapple" not in "\n".join(lines) and "mango" not in "\n".join(lines)


async def test_commands_are_logged_with_who_and_where_but_not_their_text(tmp_path, caplog):
    async with running_bot(tmp_path) as scene:
        world = scene.world
        with caplog.at_level(logging.INFO, logger="bot"):
            await scene.command(world.mod, "persona set", options={"text": f"You are a pirate. {SECRET}"})
            await scene.command(world.alice, "reset", enforce_default_permissions=False)
    [done, refused] = event_lines(caplog, "command")
    assert done.startswith(f'event=command command="persona set" guild={world.guild.id} '
                           f"channel={scene.general.id} user={world.mod.id} outcome=ok ms=")
    assert f"user={world.alice.id} outcome=refused" in refused
    assert "pineapple" not in everything_logged(caplog)
