"""/forget-me: a person erases everything the bot stored of what they wrote."""

from __future__ import annotations

from bot import messages
from tests.support.conversation import said as said_in_service
from tests.support.store_queries import audit_entries

ANN, BOB = 30, 31
ANN_DM, BOB_DM = 900, 901


def said(text: str, *, channel: int, author_id: int, guild: int | None = 20, message_id: int | None = None):
    return said_in_service(text, channel=channel, guild=guild, author_id=author_id,
                           author={ANN: "Ann", BOB: "Bob"}[author_id], message_id=message_id)


async def contents(store, channel: int) -> list[str]:
    return [turn.content for turn in await store.recent_turns(channel, 100)]


async def test_forget_me_erases_their_words_everywhere_and_their_dms_whole(scripted_service, scripted, store):
    await scripted_service.reply(said("ann in general", channel=1, author_id=ANN))
    await scripted_service.reply(said("bob in general", channel=1, author_id=BOB))
    await scripted_service.reply(said("ann in another server", channel=2, author_id=ANN, guild=21))
    await scripted_service.reply(said("ann's secret", channel=ANN_DM, author_id=ANN, guild=None))
    await scripted_service.reply(said("bob's secret", channel=BOB_DM, author_id=BOB, guild=None))

    answer = await scripted_service.privacy.forget_user(ANN, guild_id=20, channel_id=1)

    # 3 of her turns in servers + her DM's answer: 4. The bot's answers in servers stay.
    assert answer == messages.counted(messages.FORGOT_YOU, 4)
    assert await contents(store, 1) == ["echo: Ann: ann in general", "bob in general", "echo: Bob: bob in general"]
    assert await contents(store, 2) == ["echo: Ann: ann in another server"]
    assert await contents(store, ANN_DM) == []
    assert await contents(store, BOB_DM) == ["bob's secret", "echo: Bob: bob's secret"]  # others untouched
    # The audit log says who and how many, never what nor the person's name.
    [entry] = await audit_entries(store)
    assert (entry.action, entry.actor_id, entry.actor_name, entry.guild_id, entry.channel_id, entry.detail) == (
        "user.forget", ANN, None, 20, 1, "4 turns")

    # Her next message starts afresh: nothing of hers is left in the prompt.
    await scripted_service.reply(said("hello again", channel=ANN_DM, author_id=ANN, guild=None))
    assert [m["content"] for m in scripted.prompts[-1][1:]] == ["Ann: hello again"]


async def test_forget_me_with_nothing_stored_says_zero(scripted_service):
    assert await scripted_service.privacy.forget_user(BOB) == messages.counted(messages.FORGOT_YOU, 0)


async def test_forget_me_drops_their_waiting_messages_and_what_was_being_answered(store, settings):
    """Asked while one of her DMs is being answered and another waits behind it: the waiting one
    is not answered, and nothing of the DM conversation is left once the answer is written (the
    answer is still given). Bob, waiting for the model, and what she writes after asking, stay."""
    import asyncio
    import threading

    from bot.llm.worker import ModelWorker
    from bot.service import ChatService
    from tests.support.scripted import ScriptedBackend
    from tests.support.waiting import until

    opened = threading.Event()
    backend = ScriptedBackend(gate=opened, gate_after_words=1)
    worker = ModelWorker(backend, timeout_s=30)
    service = ChatService(store, worker, settings)
    started = asyncio.Event()

    async def progress(_text):
        started.set()

    def in_dm(text: str, message_id: int):
        return said(text, channel=ANN_DM, author_id=ANN, guild=None, message_id=message_id)

    try:
        being_answered = asyncio.create_task(service.reply(in_dm("ann asks", 501), on_progress=progress))
        await started.wait()
        waiting = [asyncio.create_task(service.reply(in_dm("ann again", 502))),
                   asyncio.create_task(service.reply(said("bob asks", channel=1, author_id=BOB, message_id=503)))]
        await until(lambda: service.load().waiting_turn == 1 and service.load().waiting == 1)
        assert await service.privacy.forget_user(ANN) == messages.counted(messages.FORGOT_YOU, 1)
        later = asyncio.create_task(service.reply(said("ann, afterwards", channel=1, author_id=ANN, message_id=504)))
        await until(lambda: service.load().waiting_turn == 2)  # behind Bob's, in channel 1
        opened.set()
        first, ann_again, bob, afterwards = await asyncio.gather(being_answered, *waiting, later)
    finally:
        worker.close()
    assert first.ok and first.text == "echo: Ann: ann asks"  # given, not kept
    assert not ann_again.ok and ann_again.text == messages.WIPED_BEFORE_ANSWER
    assert bob.ok and afterwards.ok
    assert await contents(store, ANN_DM) == []
    assert await contents(store, 1) == ["bob asks", "echo: Bob: bob asks", "ann, afterwards",
                                        "echo: Ann: ann, afterwards"]
