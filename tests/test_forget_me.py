"""/forget-me: a person erases everything the bot stored of what they wrote."""

from __future__ import annotations

from bot import messages
from tests.support.conversation import said as said_in_service
from tests.support.store_queries import audit_entries

ANN, BOB = 30, 31
ANN_DM, BOB_DM = 900, 901


def said(text: str, *, channel: int, author_id: int, guild: int | None = 20):
    return said_in_service(text, channel=channel, guild=guild, author_id=author_id,
                           author={ANN: "Ann", BOB: "Bob"}[author_id])


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
    assert answer == messages.FORGOT_YOU.format(count=4)
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
    assert await scripted_service.privacy.forget_user(BOB) == messages.FORGOT_YOU.format(count=0)
