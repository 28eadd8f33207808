"""Exporting conversations as a training set: what goes in, what never does, and the file's shape.

The export runs on a real SQLite file; its lines go through the real chat templates (the
embedded SmolLM2's and SmolLM3's) and through TRL's own dataset check, and the Discord
command is driven through the fake Discord like the other commands."""

from __future__ import annotations

import json
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bot import messages
from bot.export import ExportFilter, ExportSummary, export_lines, jsonl_bytes, pseudonymised
from bot.core.types import Turn
from bot.llm.adapters import NO_ADAPTERS
from bot.server_settings import ServerSettings
from bot.service import Actor
from bot.store.models import Message
from tests.fakediscord import CommandNotPermitted
from tests.support.cli import run_bot
from tests.support.discord_scene import EPHEMERAL, Scene
from tests.support.settings import REPO_ROOT
from tests.support.store_queries import audit_entries
from tests.support.waiting import until

GUILD, OTHER_GUILD = 100, 200
GENERAL, RANDOM, DM = 11, 12, 13
ALICE, BOB, CAROL = 1, 2, 3
START = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


async def put(store, channel: int, role: str, content: str, *, author: int | None = None,
              name: str | None = None, guild: int | None = GUILD, at: datetime = START) -> None:
    """A stored turn with its own time (the repository always stamps 'now')."""
    async with AsyncSession(store.engine) as session, session.begin():
        session.add(Message(guild_id=guild, channel_id=channel, role=role, content=content,
                            author_id=author, author_name=name, created_at=at))


async def exported(store, settings, **filters) -> tuple[list[dict], ExportSummary]:
    summary = ExportSummary()
    lines = export_lines(store, ServerSettings(store, settings, NO_ADAPTERS).persona_for, ExportFilter(**filters), summary)
    return [line async for line in lines], summary


def minutes(n: float) -> datetime:
    return START + timedelta(minutes=n)


async def a_server_day(store) -> None:
    """Alice and Bob talk with the bot in #general; Carol in #random; Alice in a DM."""
    await put(store, GENERAL, "user", "hi, I am Alice", author=ALICE, name="Alice", at=minutes(0))
    await put(store, GENERAL, "assistant", "Hello Alice!", at=minutes(1))
    await put(store, GENERAL, "user", "@Alice is my friend", author=BOB, name="Bob", at=minutes(2))
    await put(store, GENERAL, "assistant", "Nice to meet you, Bob.", at=minutes(3))
    await put(store, RANDOM, "user", "what is 2+2?", author=CAROL, name="Carol", at=minutes(0))
    await put(store, RANDOM, "assistant", "4", at=minutes(1))
    await put(store, DM, "user", "a secret", author=ALICE, name="Alice", guild=None, at=minutes(0))
    await put(store, DM, "assistant", "kept secret", guild=None, at=minutes(1))


async def test_each_conversation_is_one_chat_line_with_the_servers_persona(store, settings):
    await a_server_day(store)
    await store.set_persona(GUILD, "You are a pirate.", ALICE)
    lines, summary = await exported(store, settings)
    assert lines == [
        {"messages": [{"role": "system", "content": "You are a pirate."},
                      {"role": "user", "content": "User 1: hi, I am User 1"},
                      {"role": "assistant", "content": "Hello User 1!"},
                      {"role": "user", "content": "User 2: User 1 is my friend"},
                      {"role": "assistant", "content": "Nice to meet you, User 2."}]},
        {"messages": [{"role": "system", "content": "You are a pirate."},
                      {"role": "user", "content": "User 1: what is 2+2?"},
                      {"role": "assistant", "content": "4"}]},
    ]
    assert (summary.conversations, summary.turns, len(summary.channels)) == (2, 6, 2)


async def test_names_are_kept_only_when_asked_and_dms_only_when_asked(store, settings):
    await a_server_day(store)
    lines, _ = await exported(store, settings, pseudonymise=False, include_dms=True)
    contents = [m["content"] for line in lines for m in line["messages"]]
    assert "Alice: hi, I am Alice" in contents and "Bob: @Alice is my friend" in contents
    assert "Alice: a secret" in contents  # the DM, asked for
    assert settings.persona.default in contents  # DMs and servers without a persona get the default


async def test_people_who_opted_out_and_the_answers_to_them_are_never_exported(store, settings, scripted_service):
    await a_server_day(store)
    await store.opt_out(BOB, reason="optout")
    await scripted_service.privacy.forget_user(CAROL)  # /forget-me: gone now, and left out of every export after
    await put(store, RANDOM, "user", "I am back", author=CAROL, name="Carol", at=minutes(5))
    await put(store, RANDOM, "assistant", "Welcome back, Carol", at=minutes(6))
    lines, summary = await exported(store, settings, include_dms=True, pseudonymise=False)
    text = json.dumps(lines)
    assert "Bob" not in text and "Nice to meet you" not in text  # Bob's turn and the answer to him
    assert "Carol" not in text and "I am back" not in text
    assert "hi, I am Alice" in text  # everyone else stays
    assert summary.left_out_opted_out == 4
    # /optin undoes /optout.
    assert await scripted_service.privacy.opt_in_to_export(BOB) == messages.OPTED_IN
    assert "Nice to meet you" in json.dumps((await exported(store, settings))[0])
    assert await scripted_service.privacy.opt_in_to_export(BOB) == messages.NOT_OPTED_OUT


async def test_filters_by_server_channel_and_days(store, settings):
    await a_server_day(store)
    await put(store, 21, "user", "other server", author=ALICE, name="Alice", guild=OTHER_GUILD, at=minutes(0))
    await put(store, 21, "assistant", "yes", guild=OTHER_GUILD, at=minutes(1))
    await put(store, GENERAL, "user", "next day", author=ALICE, name="Alice", at=minutes(24 * 60))
    await put(store, GENERAL, "assistant", "tomorrow", at=minutes(24 * 60 + 1))

    def firsts(lines):
        return [line["messages"][1]["content"] for line in lines]

    assert firsts((await exported(store, settings, guild_id=OTHER_GUILD))[0]) == ["User 1: other server"]
    assert firsts((await exported(store, settings, channel_id=RANDOM))[0]) == ["User 1: what is 2+2?"]
    day_two = date(2026, 11, 2)
    assert firsts((await exported(store, settings, guild_id=GUILD, since=day_two))[0]) == ["User 1: next day"]
    assert firsts((await exported(store, settings, guild_id=GUILD, until=day_two - timedelta(days=1)))[0]) == [
        "User 1: hi, I am User 1", "User 1: what is 2+2?"]


async def test_a_long_pause_starts_a_new_conversation_and_unanswered_ends_are_cut(store, settings):
    await put(store, GENERAL, "assistant", "a greeting nobody asked for", at=minutes(0))
    await put(store, GENERAL, "user", "first sitting", author=ALICE, name="Alice", at=minutes(1))
    await put(store, GENERAL, "assistant", "answer one", at=minutes(2))
    await put(store, GENERAL, "user", "no answer came", author=ALICE, name="Alice", at=minutes(3))
    await put(store, GENERAL, "user", "second sitting", author=ALICE, name="Alice", at=minutes(200))
    await put(store, GENERAL, "assistant", "answer two", at=minutes(201))
    await put(store, GENERAL, "user", "lonely question", author=ALICE, name="Alice", at=minutes(500))
    lines, summary = await exported(store, settings)
    assert [[m["content"] for m in line["messages"][1:]] for line in lines] == [
        ["User 1: first sitting", "answer one"], ["User 1: second sitting", "answer two"]]
    assert summary.left_out_short == 0  # the lonely question has no answer: nothing to learn from
    lines, summary = await exported(store, settings, min_turns=3)
    assert lines == [] and summary.left_out_short == 2


def test_pseudonyms_replace_whole_names_only():
    turns = pseudonymised([Turn("user", "Annabel and Ann met Annie", author_name="Ann"),
                           Turn("user", "hello ann, @Annabel", author_name="Annabel"),
                           Turn("assistant", "Hi Ann and Annabel!")])
    assert [(t.author_name, t.content) for t in turns] == [
        ("User 1", "User 2 and User 1 met Annie"), ("User 2", "hello User 1, User 2"),
        (None, "Hi User 1 and User 2!")]


async def test_a_large_history_is_read_in_pages_without_losing_a_turn(store, settings):
    for n in range(25):
        await put(store, GENERAL + n % 3, "user", f"q{n}", author=ALICE, name="Alice", at=minutes(n))
        await put(store, GENERAL + n % 3, "assistant", f"a{n}", at=minutes(n))
    rows = [turn.content async for _, _, turn in store.turns_in_order(page=4)]
    assert len(rows) == 50 and sorted(rows) == sorted(f"{k}{n}" for k in "qa" for n in range(25))


async def test_the_export_goes_through_the_chat_templates_and_trls_dataset_check(
        store, settings, embedded_backend, tiny_smollm3_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational

    await a_server_day(store)
    data = await jsonl_bytes(export_lines(store, ServerSettings(store, settings, NO_ADAPTERS).persona_for,
                                          ExportFilter(include_dms=True), ExportSummary()))
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert len(lines) == 3
    smollm3 = AutoTokenizer.from_pretrained(tiny_smollm3_dir)
    for line in lines:
        assert is_conversational(line)
        for tokenizer in (embedded_backend.tokenizer, smollm3):
            text = tokenizer.apply_chat_template(line["messages"], tokenize=False)
            assert line["messages"][-1]["content"] in text and line["messages"][0]["content"] in text


# --------------------------------------------------------------------------- the command line


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_bot("--config", str(REPO_ROOT / "config.toml"), *args, cwd=cwd, timeout=120,
                   env={"PATH": "/usr/bin:/bin", "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{cwd}/bot.db",
                        "PYTHONPATH": str(REPO_ROOT)})


async def test_the_cli_writes_the_file_and_says_what_it_holds(store, settings, tmp_path):
    await a_server_day(store)
    done = run_cli("export", "--out", "data/train.jsonl", "--server", str(GUILD), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Wrote data/train.jsonl: 2 conversations, 6 turns from 2 channels" in done.stderr
    lines = (tmp_path / "data/train.jsonl").read_text().splitlines()
    assert [json.loads(line)["messages"][1]["content"] for line in lines] == [
        "User 1: hi, I am User 1", "User 1: what is 2+2?"]


def test_the_cli_explains_an_empty_export_and_bad_dates(tmp_path):
    (tmp_path / "old.jsonl").write_text("kept\n")
    done = run_cli("export", "--out", "old.jsonl", cwd=tmp_path)
    assert done.returncode == 1 and "Nothing to export" in done.stderr and "old.jsonl was not written" in done.stderr
    assert (tmp_path / "old.jsonl").read_text() == "kept\n"  # an empty export never clobbers a file
    done = run_cli("export", "--since", "2026-13-01", cwd=tmp_path)
    assert done.returncode == 2 and "is not a date; write it as YYYY-MM-DD" in done.stderr
    done = run_cli("export", "--since", "2026-11-02", "--until", "2026-11-01", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --since 2026-11-02 is after --until 2026-11-01: nothing would be exported"]
    done = run_cli("export", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --out {tmp_path} is a folder: give a file name, such as {tmp_path / 'export.jsonl'}"]
    done = run_cli("export", "--out", "old.jsonl/new.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --out old.jsonl/new.jsonl cannot be written: old.jsonl is a file, not a folder"]


# --------------------------------------------------------------------------- Discord


async def test_a_moderator_gets_the_export_as_a_private_file(scene: Scene):
    world = scene.world
    await scene.ask("hello there")
    await scene.ask("and again", author=world.mod)
    interaction = await scene.fake.send_interaction(world.general, world.mod, "export")
    await scene.fake.wait_for_request("POST", f"/webhooks/{{app}}/{interaction.token}", timeout=5)
    [request] = scene.fake.requests_to("POST", f"/webhooks/{{app}}/{interaction.token}")
    [attached] = request.files
    assert attached.filename == f"export-{world.guild.id}.jsonl"
    [line] = [json.loads(row) for row in attached.data.decode().splitlines()]
    assert [m["content"] for m in line["messages"][1:]] == [
        "User 1: hello there", "echo: User 1: hello there", "User 2: and again", "echo: User 2: and again"]
    answer = scene.fake.original_response(interaction)
    assert answer["flags"] & EPHEMERAL and "1 conversation, 4 turns" in answer["content"]
    [entry] = await audit_entries(scene.store)
    assert (entry.action, entry.actor_id) == ("data.export", world.mod.id)


async def test_an_archived_thread_can_be_exported_by_itself(scene: Scene):
    """discord.py's cache no longer holds an archived thread; Discord still offers it and sends it."""
    world, fake = scene.world, scene.fake
    thread = fake.add_thread(world.general, "old talk", owner=world.alice)
    await scene.ask("in the thread", channel=thread)
    await scene.ask("in the channel")
    await fake.archive_thread(thread)
    await until(lambda: scene.bot.get_channel(thread.id) is None)
    interaction = await fake.send_interaction(world.general, world.mod, "export", options={"channel": thread})
    await fake.wait_for_request("POST", f"/webhooks/{{app}}/{interaction.token}", timeout=5)
    [attached] = fake.requests_to("POST", f"/webhooks/{{app}}/{interaction.token}")[0].files
    [line] = [json.loads(row) for row in attached.data.decode().splitlines()]
    assert [m["content"] for m in line["messages"][1:]] == ["User 1: in the thread", "echo: User 1: in the thread"]


async def test_a_member_cannot_export_but_can_opt_out(scene: Scene):
    world = scene.world
    with pytest.raises(CommandNotPermitted):
        await scene.fake.send_interaction(world.general, world.alice, "export")
    refused = await scene.command(world.alice, "export", enforce_default_permissions=False)
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")

    await scene.ask("alice speaks")
    answer = await scene.command(world.alice, "optout")
    assert answer["content"] == messages.OPTED_OUT and answer["flags"] & EPHEMERAL
    empty = await scene.command(world.mod, "export")
    assert empty["content"] == messages.EXPORT_EMPTY.format(scope="")
    assert (await scene.command(world.alice, "optin"))["content"] == messages.OPTED_IN
    assert (await scene.command(world.alice, "optout", channel=scene.fake.dm_channel(world.alice)))[
        "content"] == messages.OPTED_OUT  # it works in a DM too


async def test_export_refuses_a_bad_date_with_the_format(scene: Scene):
    answer = await scene.command(scene.world.mod, "export", options={"since": "yesterday"})
    assert answer["content"] == messages.EXPORT_BAD_DATE.format(
        problem="'yesterday' is not a date; write it as YYYY-MM-DD, e.g. 2026-11-29")


async def test_the_service_refuses_reversed_dates(scripted_service):
    from bot.service import UserError

    with pytest.raises(UserError, match="is after the end date"):
        await scripted_service.privacy.export_server(GUILD, Actor(ALICE, "alice"), since=date(2026, 11, 2),
                                             until=date(2026, 11, 1))


# --------------------------------------------------------------------------- unanswered questions


async def test_questions_that_never_got_an_answer_are_left_out(store, settings):
    """A failed generation stores the question and nothing after it; asked again and again, the
    same line piled up before the one answer. Only the answered exchanges go out, in order."""
    await put(store, GENERAL, "user", "hello", author=ALICE, name="Alice", at=minutes(0))
    await put(store, GENERAL, "assistant", "Hi!", at=minutes(1))
    for n in range(7):
        await put(store, GENERAL, "user", "Write a long story about a dragon.", author=ALICE, name="Alice",
                  at=minutes(2 + n / 10))
    await put(store, GENERAL, "assistant", "Once upon a time, a dragon...", at=minutes(3))
    await put(store, GENERAL, "user", "did anyone see this?", author=BOB, name="Bob", at=minutes(4))
    await put(store, GENERAL, "user", "thanks for the story", author=ALICE, name="Alice", at=minutes(5))
    await put(store, GENERAL, "assistant", "You're welcome.", at=minutes(6))
    await put(store, GENERAL, "user", "one more?", author=ALICE, name="Alice", at=minutes(7))  # never answered
    lines, summary = await exported(store, settings, pseudonymise=False)
    assert [[(m["role"], m["content"]) for m in line["messages"][1:]] for line in lines] == [[
        ("user", "Alice: hello"), ("assistant", "Hi!"),
        ("user", "Alice: Write a long story about a dragon."), ("assistant", "Once upon a time, a dragon..."),
        ("user", "Alice: thanks for the story"), ("assistant", "You're welcome."),
    ]]
    assert (summary.turns, summary.left_out_unanswered) == (6, 8)
    assert "8 unanswered questions left out" in summary.describe()


async def test_a_sitting_of_only_unanswered_questions_exports_nothing(store, settings):
    for n in range(3):
        await put(store, GENERAL, "user", "anyone?", author=ALICE, name="Alice", at=minutes(n))
    lines, summary = await exported(store, settings)
    assert lines == [] and summary.left_out_unanswered == 3 and summary.left_out_short == 0


async def test_answers_cut_short_are_left_out_with_their_questions(store, settings):
    """An answer the time limit stopped stays in the conversation (with its note) but is a
    fragment: exported, it would teach the model to stop mid-sentence."""
    import threading

    from bot.llm.worker import ModelWorker
    from bot.service import ChatService
    from tests.support.conversation import said
    from tests.support.scripted import ScriptedBackend

    held = threading.Event()  # long answers hold after three words until the time limit stops them
    backend = ScriptedBackend(reply=lambda chat: ("slow " * 50) if "story" in chat[-1]["content"] else "Sure.",
                              gate=held, gate_after_words=3)
    service = ChatService(store, ModelWorker(backend, timeout_s=2), settings)
    assert (await service.reply(said("hello", guild=GUILD, channel=GENERAL))).ok
    cut = await service.reply(said("tell me a long story", guild=GUILD, channel=GENERAL))
    assert messages.CUT_SHORT_TIMEOUT in cut.notes
    assert (await service.reply(said("thanks", guild=GUILD, channel=GENERAL))).ok
    assert [turn.cut_short for turn in await service.history(GENERAL)] == [None, None, None, "timeout", None, None]

    lines, summary = await exported(store, settings, pseudonymise=False)
    contents = [message["content"] for message in lines[0]["messages"][1:]]
    assert len(contents) == 4 and not any("story" in text or "slow" in text for text in contents)
    assert summary.left_out_cut_short == 1
    assert "1 answer cut short left out, with their questions" in summary.describe()


async def test_each_conversation_is_labelled_with_the_persona_it_was_held_under(store, settings):
    """The persona is recorded with each answer: a conversation held before a change keeps its
    persona in the export; a channel's own persona labels that channel's conversations."""
    from sqlalchemy import update

    from bot.llm.worker import ModelWorker
    from bot.server_settings import CHANNEL
    from bot.service import ChatService
    from tests.support.conversation import said
    from tests.support.scripted import ScriptedBackend

    admin = Actor(ALICE, "alice")
    service = ChatService(store, ModelWorker(ScriptedBackend(), timeout_s=5), settings)
    await service.servers.set_persona(GUILD, admin, "You are X.")
    assert (await service.reply(said("first", guild=GUILD, channel=GENERAL))).ok
    async with AsyncSession(store.engine) as session, session.begin():  # that sitting ended hours ago
        await session.execute(update(Message).values(created_at=START))
    await service.servers.set_persona(GUILD, admin, "You are Y.")
    assert (await service.reply(said("second", guild=GUILD, channel=GENERAL))).ok
    await service.servers.set_persona(GUILD, admin, "You are Z.", scope=CHANNEL, channel_id=RANDOM)
    assert (await service.reply(said("third", guild=GUILD, channel=RANDOM))).ok
    await service.servers.set_persona(GUILD, admin, "You are W.")  # after all of them: labels none

    lines, _ = await exported(store, settings)
    assert [(line["messages"][0]["content"], line["messages"][1]["content"]) for line in lines] == [
        ("You are X.", "User 1: first"), ("You are Y.", "User 1: second"), ("You are Z.", "User 1: third")]


async def test_answers_stored_without_a_persona_get_their_channels_persona_now(store, settings):
    """Answers stored before personas were recorded: the channel's own persona, else the server's."""
    await a_server_day(store)
    await store.set_persona(GUILD, "You are a pirate.", ALICE)
    await store.set_channel_persona(RANDOM, GUILD, "You are a calculator.", ALICE)
    lines, _ = await exported(store, settings)
    assert [line["messages"][0]["content"] for line in lines] == ["You are a pirate.", "You are a calculator."]


async def test_a_persona_is_stored_once_however_many_answers_use_it(any_store):
    from sqlalchemy import func, select

    from bot.store.models import AnswerPersona, Persona

    long_persona = "Always answer like a patient teacher. " * 100
    for n in range(3):
        await any_store.add_turn(channel_id=GENERAL, guild_id=GUILD, role="assistant", content=f"answer {n}",
                                 persona=long_persona)
    await any_store.add_turn(channel_id=GENERAL, guild_id=GUILD, role="assistant", content="other", persona="Terse.")
    async with AsyncSession(any_store.engine) as session:
        assert await session.scalar(select(func.count()).select_from(Persona)) == 2
        assert await session.scalar(select(func.count()).select_from(AnswerPersona)) == 4
    turns = [turn async for _, _, turn in any_store.turns_in_order()]
    assert [turn.persona for turn in turns] == [long_persona] * 3 + ["Terse."]
    # Forgetting the server forgets its channels' personas and the persona texts no answer uses.
    await any_store.set_channel_persona(RANDOM, GUILD, "You are a calculator.", ALICE)
    await any_store.delete_guild_data(GUILD)
    assert await any_store.channel_persona(RANDOM) is None
    async with AsyncSession(any_store.engine) as session:
        assert await session.scalar(select(func.count()).select_from(Persona)) == 0
