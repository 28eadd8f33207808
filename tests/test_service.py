"""The conversation flow as a user meets it: memory, personas, limits, failures, order."""

import asyncio
import contextlib
import dataclasses
import logging
import threading

import pytest

from bot import messages
from bot.config import ModelSettings
from bot.core.types import Delivered
from bot.llm.worker import ModelWorker
from bot.service import Actor, ChatService, UserError
from tests.support.conversation import said, stored
from tests.support.scripted import ScriptedBackend
from tests.support.waiting import until
from tests.support.settings import settings_for
from tests.support.store_queries import audit_entries, count_turns

ADMIN = Actor(id=1, name="Admin")


async def test_the_real_model_remembers_the_first_turn(tmp_path, store, embedded_engine):
    service = ChatService(store, embedded_engine, settings_for(tmp_path / "bot.db", do_sample=False,
                                                               max_new_tokens=40))
    first = await service.reply(said("My favourite fruit is mango."))
    second = await service.reply(said("What is my favourite fruit?"))
    assert first.ok and second.ok
    assert "mango" in second.text
    assert [role for role, _ in await stored(store)] == ["user", "assistant", "user", "assistant"]
    # The control: asked in a fresh channel, the model does not come up with the name.
    fresh = await service.reply(said("What is my favourite fruit?", channel=11))
    assert "mango" not in fresh.text


async def test_thinking_switched_on_for_a_model_that_cannot_think_changes_nothing(tmp_path, store, embedded_engine):
    """SmolLM2 has no thought markers: the thought's allowance went to its answers, 3.5 times as
    long, and /persona show did not say why."""
    service = ChatService(store, embedded_engine, settings_for(tmp_path / "bot.db", do_sample=False,
                                                               max_new_tokens=10))
    said_on = await service.servers.set_thinking(20, ADMIN, True)
    assert messages.THINKING_CANNOT_NOW in said_on
    reply = await service.reply(said("Tell me a long story about a dragon."))
    assert reply.ok and embedded_engine.output_tokens(reply.text) <= 10
    assert (await service.servers.show_persona(20)).endswith(messages.THINKING_CANNOT)


async def test_the_model_is_given_persona_speakers_and_history(scripted_service, scripted):
    await scripted_service.servers.set_persona(20, ADMIN, "You are a pirate.")
    await scripted_service.reply(said("hello", author="Ann"))
    await scripted_service.reply(said("hi all", author="Bob", author_id=31))
    assert scripted.prompts[-1] == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Ann: hello"},
        {"role": "assistant", "content": "echo: Ann: hello"},
        {"role": "user", "content": "Bob: hi all"},
    ]


async def test_channels_never_see_each_others_history(scripted_service, scripted):
    await scripted_service.reply(said("secret of channel one", channel=1))
    await scripted_service.reply(said("hello from channel two", channel=2))
    assert not any("secret" in m["content"] for m in scripted.prompts[-1])


@pytest.mark.parametrize("text, expected", [
    ("", messages.EMPTY_MESSAGE),
    ("   \n\t ", messages.EMPTY_MESSAGE),
    ("x" * 20_000, "Your message is 20,000 characters; the limit is 4,000."),
])
async def test_bad_messages_get_a_clear_answer_and_lose_nothing(scripted_service, scripted, store, text, expected):
    await scripted_service.reply(said("an earlier message"))
    before = await stored(store)
    reply = await scripted_service.reply(said(text))
    assert not reply.ok and expected in reply.text
    assert await stored(store) == before
    assert len(scripted.prompts) == 1  # the model was never bothered
    assert (await scripted_service.reply(said("still here?"))).ok


async def test_a_4000_character_message_is_answered(scripted_service):
    assert (await scripted_service.reply(said("word " * 800))).ok


async def test_an_oversized_persona_is_refused_with_the_limit_and_the_old_one_kept(scripted_service):
    await scripted_service.servers.set_persona(20, ADMIN, "Be brief.")
    with pytest.raises(UserError, match="100,000 characters; the limit is 4,000"):
        await scripted_service.servers.set_persona(20, ADMIN, "p" * 100_000)
    with pytest.raises(UserError, match="needs some text"):
        await scripted_service.servers.set_persona(20, ADMIN, "  ")
    assert "Be brief." in await scripted_service.servers.show_persona(20)


async def test_persona_reset_goes_back_to_the_default_and_is_audited(scripted_service, store, settings):
    await scripted_service.servers.set_persona(20, ADMIN, "Be brief.")
    await scripted_service.servers.reset_persona(20, ADMIN)
    assert settings.persona.default in await scripted_service.servers.show_persona(20)
    assert [e.action for e in await audit_entries(store, 20)] == ["persona.set", "persona.reset"]


async def test_reset_forgets_the_channel_and_writes_the_audit_log(scripted_service, store):
    await scripted_service.reply(said("one"))
    await scripted_service.reply(said("two"))
    answer = await scripted_service.reset_channel(20, 10, ADMIN)
    assert "4 messages" in answer
    assert await stored(store) == []
    [entry] = await audit_entries(store, 20)
    assert (entry.action, entry.actor_id, entry.channel_id, entry.detail) == ("history.reset", 1, 10, "4 turns")


async def test_think_blocks_and_mass_mentions_never_reach_the_database_or_the_user(scripted_service, scripted, store):
    scripted.reply = lambda m: "<think>my secret plan</think>Hello @everyone!"
    reply = await scripted_service.reply(said("hi"))
    assert "secret" not in reply.text and "@everyone" not in reply.text
    assert all("secret" not in content and "@everyone" not in content for _, content in await stored(store))


async def test_a_failing_model_is_reported_and_the_question_is_kept(scripted_service, scripted, store):
    scripted.reply = RuntimeError("CUDA out of memory")
    reply = await scripted_service.reply(said("are you there?"))
    assert not reply.ok and "could not write a reply" in reply.text
    assert await stored(store) == [("user", "are you there?")]
    scripted.reply = lambda m: "back"
    assert (await scripted_service.reply(said("now?"))).text == "back"


async def test_history_beyond_the_context_is_cut_and_the_user_is_told(tmp_path, store):
    backend = ScriptedBackend(context_tokens=150)
    settings = settings_for(tmp_path / "bot.db", max_new_tokens=30)
    service = ChatService(store, ModelWorker(backend, timeout_s=5), settings)
    replies = [await service.reply(said(f"message number {i} with some words in it")) for i in range(12)]
    assert all(r.ok for r in replies)
    assert any(r.dropped_turns and r.notes for r in replies)
    assert all(backend.count_tokens(p) <= 120 for p in backend.prompts)
    assert backend.prompts[-1][-1]["content"] == "Ann: message number 11 with some words in it"
    assert await count_turns(store, 10) == 24  # cut from the prompt, never from the database


async def test_a_message_too_long_for_the_context_is_refused_and_not_stored(tmp_path, store):
    service = ChatService(store, ModelWorker(ScriptedBackend(context_tokens=100), timeout_s=5),
                          settings_for(tmp_path / "bot.db", max_new_tokens=30))
    reply = await service.reply(said("word " * 200))
    assert not reply.ok and "too long for the model's context" in reply.text
    assert await stored(store) == []


async def test_turns_in_one_channel_are_answered_in_arrival_order(store, settings):
    backend = ScriptedBackend(delay_s=0.05)
    service = ChatService(store, ModelWorker(backend, timeout_s=5), settings)
    replies = await asyncio.gather(*(service.reply(said(f"msg {i}")) for i in range(3)))
    assert [r.text for r in replies] == ["echo: Ann: msg 0", "echo: Ann: msg 1", "echo: Ann: msg 2"]
    # Each later turn saw the earlier answers.
    assert {"role": "assistant", "content": "echo: Ann: msg 1"} in backend.prompts[2]
    assert [c for _, c in await stored(store)] == [
        "msg 0", "echo: Ann: msg 0", "msg 1", "echo: Ann: msg 1", "msg 2", "echo: Ann: msg 2"]


@pytest.mark.parametrize("thinking", [False, True])
async def test_smollm3_thinking_switch_and_no_think_block_is_ever_stored(tiny_smollm3_dir, tmp_path, store,
                                                                          thinking):
    from bot.llm.transformers_backend import load_transformers_backend

    backend = load_transformers_backend(ModelSettings(name=str(tiny_smollm3_dir), device_map="cpu",
                                                      thinking=thinking))
    prompt_text = backend.tokenizer.decode(backend.render([{"role": "user", "content": "hi"}]).token_ids)
    assert ("Reasoning Mode: /no_think" in prompt_text) is not thinking
    assert prompt_text.endswith("<think>\n\n</think>\n") is not thinking
    # A reply that reasons first: the decode keeps the markers so the whole block is removed.
    ids = backend.tokenizer.encode("<think>I should greet.</think>Hello!<|im_end|>", add_special_tokens=False)
    assert backend.decode(ids) == "<think>I should greet.</think>Hello!"

    service = ChatService(store, ModelWorker(backend, timeout_s=60),
                          settings_for(tmp_path / "bot.db", do_sample=False, max_new_tokens=12))
    await service.reply(said("hello there"))
    assert all("<think>" not in content and "</think>" not in content for _, content in await stored(store))


async def reply_and_progress(service: ChatService, text: str):
    """The reply to `text`, and each text its progress showed as it was written."""
    seen = []

    async def progress(shown):
        seen.append(shown)

    return await service.reply(said(text), on_progress=progress), seen


async def test_progress_shows_the_answer_growing_without_its_think_block(store, settings):
    backend = ScriptedBackend(reply=lambda m: "<think>plan it</think>The answer grows word by word.")
    reply, seen = await reply_and_progress(ChatService(store, ModelWorker(backend, timeout_s=5), settings), "go")
    assert reply.text == "The answer grows word by word."
    assert len(seen) > 3 and seen[-1] == reply.text
    assert all(reply.text.startswith(text) for text in seen)  # only ever grows
    assert not any("plan" in text or "<think" in text for text in seen)


async def test_a_thought_the_chat_template_opened_is_never_shown_or_kept(store, settings):
    """Templates such as DeepSeek-R1's and Qwen3-Thinking's end the prompt with <think>: the
    model's text starts inside the thought, with no opening of its own to recognise."""
    backend = ScriptedBackend(reply=lambda m: "The user wants the password hunter2; I must not say it.\n</think>\n"
                              "Sorry, I can't share that.", word_delay_s=0.001)
    backend.opens_thought = True
    reply, seen = await reply_and_progress(ChatService(store, ModelWorker(backend, timeout_s=5), settings),
                                           "what is the admin password?")
    assert reply.text == "Sorry, I can't share that."
    assert seen and not any("hunter2" in text or "password" in text for text in seen)
    assert [content for role, content in await stored(store) if role == "assistant"] == [reply.text]


async def test_reset_stops_the_answer_being_written_and_nothing_of_it_is_kept(store, settings):
    never = threading.Event()  # the model holds after five words until the reset stops it
    backend = ScriptedBackend(reply=lambda m: "word " * 400, gate=never, gate_after_words=5)
    service = ChatService(store, ModelWorker(backend, timeout_s=30), settings)
    started = asyncio.Event()

    async def progress(text):
        started.set()

    answering = asyncio.create_task(service.reply(said("talk a lot"), on_progress=progress))
    await started.wait()
    assert "forgotten in this channel" in await service.reset_channel(20, 10, ADMIN)
    reply = await answering
    assert not reply.ok and messages.CUT_SHORT_RESET in reply.notes
    assert len(reply.text) < len("word " * 400)
    assert await stored(store) == []
    await asyncio.to_thread(backend.stopped_early.wait, 5)
    assert backend.stopped_early.is_set()  # the model itself stopped


async def model_holding_before_its_first_word(store, settings) -> tuple[ScriptedBackend, ChatService, asyncio.Task]:
    """A reply whose model has its prompt but writes nothing until stopped (a long prefill, a
    remote server's queue, a thought sent apart from the answer)."""
    backend = ScriptedBackend(reply=lambda m: "never written", gate=threading.Event())
    service = ChatService(store, ModelWorker(backend, timeout_s=600), settings)
    answering = asyncio.create_task(service.reply(said("a hard question")))
    await until(lambda: backend.prompts)
    return backend, service, answering


async def test_a_shutdown_before_the_first_word_tells_the_user_at_once_and_keeps_nothing(store, settings):
    """Before, a stop was seen only when a piece of the answer came: a shutdown waited out its
    grace period and closed with the question neither answered nor told."""
    backend, service, answering = await model_holding_before_its_first_word(store, settings)
    service.stop_answering()
    reply = await asyncio.wait_for(answering, 60)  # (the model would hold for its 600 s limit)
    assert not reply.ok and reply.text == messages.RESTARTING
    assert await stored(store) == []  # the user is asked to send it again: kept, it would be there twice
    await asyncio.to_thread(backend.stopped_early.wait, 60)
    assert backend.stopped_early.is_set()  # the model itself stopped


async def test_a_reset_before_the_first_word_stops_the_model_at_once(store, settings):
    backend, service, answering = await model_holding_before_its_first_word(store, settings)
    assert "forgotten in this channel" in await service.reset_channel(20, 10, ADMIN)
    reply = await asyncio.wait_for(answering, 60)
    assert not reply.ok and reply.text == "" and messages.CUT_SHORT_RESET in reply.notes
    assert await stored(store) == []
    # Nothing left waiting for a piece that will never come (it would be destroyed pending).
    assert not [task for task in asyncio.all_tasks() if "Queue.get" in repr(task.get_coro())]
    await asyncio.to_thread(backend.stopped_early.wait, 60)
    assert backend.stopped_early.is_set()


async def test_an_answer_cut_by_the_time_limit_keeps_what_was_written_and_says_so(store, settings):
    never = threading.Event()  # ten words, then the model holds until the time limit stops it
    backend = ScriptedBackend(reply=lambda m: "slow " * 200, gate=never, gate_after_words=10)
    service = ChatService(store, ModelWorker(backend, timeout_s=2), settings)
    reply = await service.reply(said("take your time"))
    assert reply.text == ("slow " * 10).strip()
    assert reply.ok and reply.text.startswith("slow slow") and messages.CUT_SHORT_TIMEOUT in reply.notes
    assert await stored(store) == [("user", "take your time"), ("assistant", reply.text)]


async def test_status_counts_every_reply_waiting_not_channels(store, settings):
    """Mid-burst, /status counts the messages queued behind their channel's earlier ones too."""
    opened = threading.Event()
    backend = ScriptedBackend(reply=lambda m: "one two three four", gate=opened, gate_after_words=1)
    service = ChatService(store, ModelWorker(backend, timeout_s=60), settings)
    burst = [asyncio.create_task(service.reply(said(f"msg {i}", channel=channel)))
             for channel in (10, 11) for i in range(3)]
    await until(lambda: service.load().waiting_turn == 4 and service.load().writing + service.load().waiting == 2)
    queue_line = (await service.status()).splitlines()[2]
    assert queue_line.startswith("Queue: 6 (4 waiting for their channel's turn, ")
    opened.set()
    assert all(reply.ok for reply in await asyncio.gather(*burst))
    assert service.load().queue == 0


async def test_thinking_is_chosen_per_server_and_the_thought_gets_its_own_allowance(store, settings):
    from bot.service import Actor

    backend = ScriptedBackend(reply=lambda m: "fine")
    service = ChatService(store, ModelWorker(backend, timeout_s=30), settings)
    admin = Actor(1, "admin")
    assert await service.servers.set_thinking(20, admin, True) == messages.THINKING_ON
    assert (await service.reply(said("think about it", guild=20))).ok
    assert (await service.reply(said("and you?", guild=21, channel=11))).ok
    assert backend.thinking[-2:] == [True, None]  # server 20 thinks; 21 keeps [model] thinking
    generation = settings.generation
    assert backend.answer_limits == [generation.max_new_tokens + generation.max_thinking_tokens,
                                     generation.max_new_tokens]
    assert await service.servers.set_thinking(20, admin, False) == messages.THINKING_OFF
    assert (await service.reply(said("now quickly", guild=20))).ok
    assert backend.thinking[-1] is False and backend.answer_limits[-1] == generation.max_new_tokens


async def test_a_server_removed_and_invited_back_notes_its_threads_again(scripted_service, store):
    """Removing the server deleted the notes of its threads: after it comes back, a thread is
    noted again, so deleting its channel still forgets it."""
    scripted_service.servers.parent_of = lambda guild_id, channel_id: 1 if channel_id == 11 else None
    await scripted_service.reply(said("before", channel=11, guild=5))
    await scripted_service.forget_server(5)
    await scripted_service.reply(said("after the invite", channel=11, guild=5))
    assert await scripted_service.forget_channel(1) == 2
    assert await stored(store, channel=11) == []


async def test_a_removed_servers_waiting_messages_are_dropped_and_its_answer_in_progress_not_kept(store, settings):
    """The bot was removed from server 5 while one answer there was being written and another
    message waited behind it: nothing of server 5 is stored afterwards. Server 6 goes on."""
    opened = threading.Event()
    backend = ScriptedBackend(gate=opened, gate_after_words=1)
    service = ChatService(store, ModelWorker(backend, timeout_s=30), settings)
    started = asyncio.Event()

    async def progress(_text):
        started.set()

    in_progress = asyncio.create_task(service.reply(said("first", channel=1, guild=5, message_id=601),
                                                    on_progress=progress))
    await started.wait()
    waiting = [asyncio.create_task(service.reply(said("second", channel=1, guild=5, message_id=602))),
               asyncio.create_task(service.reply(said("elsewhere", channel=2, guild=6, message_id=603)))]
    await until(lambda: service.load().waiting_turn == 1 and service.load().waiting == 1)
    assert await service.forget_server(5) == 1  # the first message's turn, stored before its answer
    opened.set()
    first, second, elsewhere = await asyncio.gather(in_progress, *waiting)
    assert first.ok and not second.ok and second.text == messages.WIPED_BEFORE_ANSWER and elsewhere.ok
    assert await stored(store, channel=1) == []
    assert await stored(store, channel=2) == [("user", "elsewhere"), ("assistant", "echo: Ann: elsewhere")]


def to_the_bot(text: str):
    return dataclasses.replace(said(text), mentions_bot=True)


class Reports:
    """A front end (the Delivery of ChatService.respond) that reports `delivered` for an answer:
    say, a final post refused, leaving only what its preview had shown."""

    def __init__(self, delivered: Delivered) -> None:
        self.delivered = delivered

    async def progress(self, text: str) -> None:
        pass

    @contextlib.asynccontextmanager
    async def writing(self):
        yield

    async def deliver(self, reply) -> Delivered:
        return self.delivered

    async def withdraw(self) -> None:
        raise AssertionError("no question here is deleted")


async def test_an_answer_shown_only_as_its_place_in_line_notice_is_not_kept_as_that_notice(store, settings):
    backend = ScriptedBackend(reply=lambda m: "The whole answer, which nobody saw.")
    service = ChatService(store, ModelWorker(backend, timeout_s=5), settings)
    # The answer came before any of it showed: its preview showed only its place in line.
    await service.respond(to_the_bot("first"), Reports(refused_after(messages.QUEUED.format(place=2))))
    assert await stored(store) == [("user", "first")]  # the answer nobody saw is not remembered
    await service.respond(to_the_bot("second"), Reports(refused_after("The whole")))
    assert (await stored(store))[-1] == ("assistant", "The whole")  # what showed of it


def refused_after(preview: str) -> Delivered:
    return Delivered((900,), complete=False, shown=preview)


def fails_with(monkeypatch, store, method: str, reason: str) -> None:
    """The store's `method` fails as the database driver would, saying `reason`."""
    from sqlalchemy.exc import OperationalError

    async def failing(*_args, **_kwargs):
        raise OperationalError(method, {}, Exception(reason))

    monkeypatch.setattr(store, method, failing)


async def test_a_database_failing_once_the_answer_is_posted_is_one_log_line(store, settings, caplog, monkeypatch):
    """The user has the answer by then: before, the error escaped to discord.py's handler as a
    traceback."""
    service = ChatService(store, ModelWorker(ScriptedBackend(), timeout_s=5), settings)
    fails_with(monkeypatch, store, "record_answer_parts", "disk I/O error")
    with caplog.at_level(logging.ERROR, logger="bot.service"):
        await service.respond(to_the_bot("hello"), Reports(Delivered((901,))))
    assert "was posted, but the database could not record which messages show it" in caplog.text
    assert "disk I/O error" in caplog.text and service.observer.errors["storage"] == 1


async def test_a_database_failing_while_deciding_is_one_log_line(store, settings, caplog, monkeypatch):
    """Reading whether a channel answers every message failed: logged, the message left alone,
    no traceback in discord.py's handler."""
    service = ChatService(store, ModelWorker(ScriptedBackend(), timeout_s=5), settings)
    fails_with(monkeypatch, store, "channel_auto_reply", "database is locked")
    with caplog.at_level(logging.ERROR, logger="bot.service"):
        await service.respond(said("just chatting"), Reports(Delivered((902,))))
    assert "could not read channel 10's settings to decide on a message: database is locked" in caplog.text
    assert await stored(store) == [] and service.observer.errors["storage"] == 1
