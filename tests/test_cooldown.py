"""Per-user cooldowns: the token bucket with a fake clock, and the refusal a user sees."""

import contextlib
import dataclasses

import pytest

from bot import messages
from bot.core.cooldown import UserCooldowns, whole_seconds
from bot.core.types import Delivered
from bot.service import ChatService
from tests.support.conversation import said as said_in
from tests.support.settings import settings_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_the_rate_applies():
    clock = FakeClock()
    cooldowns = UserCooldowns(per_minute=6, burst=3, clock=clock)
    assert [cooldowns.wait_before("ann") for _ in range(3)] == [0, 0, 0]
    assert cooldowns.wait_before("ann") == 10.0  # one message every 10 s refills
    clock.now += 4
    assert cooldowns.wait_before("ann") == pytest.approx(6.0)  # refused attempts cost nothing
    clock.now += 6
    assert cooldowns.wait_before("ann") == 0
    assert cooldowns.wait_before("ann") == 10.0


def test_one_person_waiting_does_not_slow_anyone_else():
    cooldowns = UserCooldowns(per_minute=6, burst=1, clock=FakeClock())
    assert cooldowns.wait_before(1) == 0 and cooldowns.wait_before(1) > 0
    assert cooldowns.wait_before(2) == 0


def test_a_long_pause_refills_only_up_to_the_burst():
    clock = FakeClock()
    cooldowns = UserCooldowns(per_minute=60, burst=2, clock=clock)
    clock.now += 3600
    assert [cooldowns.wait_before("ann") for _ in range(3)] == [0, 0, 1.0]


def test_zero_per_minute_switches_cooldowns_off():
    cooldowns = UserCooldowns(per_minute=0, burst=1, clock=FakeClock())
    assert not cooldowns.enabled
    assert all(cooldowns.wait_before("ann") == 0 for _ in range(1000))


def test_people_whose_bucket_refilled_are_forgotten():
    clock = FakeClock()
    cooldowns = UserCooldowns(per_minute=60, burst=1, clock=clock, prune_every=10)
    for user in range(9):
        cooldowns.wait_before(user)
    clock.now += 5  # everyone's single token is back after 1 s
    cooldowns.wait_before("last")  # the tenth call prunes
    assert len(cooldowns) == 1


def test_the_wait_told_is_whole_seconds_and_never_zero():
    assert (whole_seconds(0.2), whole_seconds(9.01), whole_seconds(12.0)) == (1, 10, 12)


async def test_past_the_limit_the_user_is_told_when_to_retry_and_nothing_is_stored(tmp_path, store, scripted):
    from bot.llm.worker import ModelWorker

    settings = settings_for(tmp_path / "bot.db").with_overrides("limits", user_messages_per_minute=6, user_burst=2)
    worker = ModelWorker(scripted, timeout_s=5)
    service = ChatService(store, worker, settings)
    try:
        def said(text: str, author_id: int = 1):
            return said_in(text, channel=10, guild=20, author_id=author_id)

        assert (await service.reply(said("one"))).ok and (await service.reply(said("two"))).ok
        refused = await service.reply(said("three"))
        assert not refused.ok
        assert refused.text == messages.counted(messages.SLOW_DOWN, 10, "seconds")
        assert "three" not in [t.content for t in await store.recent_turns(10, 100)]
        assert len(scripted.prompts) == 2  # the model was not asked
        assert (await service.reply(said("someone else", author_id=2))).ok
    finally:
        worker.close()


def test_after_telling_a_person_to_slow_down_they_are_passed_over_until_a_token_is_back():
    clock = FakeClock()
    cooldowns = UserCooldowns(per_minute=6, burst=1, clock=clock)
    assert cooldowns.wait_before("ann") == 0 and not cooldowns.silenced("ann")
    assert cooldowns.wait_before("ann") == 10  # refused: the service tells her once ...
    assert not cooldowns.silenced("ann")  # (not before she was told)
    cooldowns.mark_told("ann")
    assert cooldowns.silenced("ann") and not cooldowns.silenced("bob")  # ... then passes her over
    clock.now += 10
    assert not cooldowns.silenced("ann")  # a token is back: her next message is answered
    assert cooldowns.wait_before("ann") == 0
    assert cooldowns.wait_before("ann") == 10 and not cooldowns.silenced("ann")  # a new refusal is told again


class RecordedDelivery:
    """A front end that records what it was asked to show (the Delivery of ChatService.respond)."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.typing = 0

    async def progress(self, text: str) -> None:
        pass

    @contextlib.asynccontextmanager
    async def writing(self):
        self.typing += 1
        yield

    async def deliver(self, reply) -> Delivered:
        self.shown.append(reply.text)
        return Delivered((len(self.shown),), complete=True)

    async def withdraw(self) -> None:
        raise AssertionError("no question here is deleted")


async def test_a_flood_gets_one_slow_down_message_not_one_per_message(tmp_path, store, scripted):
    from bot.llm.worker import ModelWorker

    settings = settings_for(tmp_path / "bot.db").with_overrides("limits", user_messages_per_minute=6, user_burst=2)
    worker = ModelWorker(scripted, timeout_s=5)
    service = ChatService(store, worker, settings)
    delivery = RecordedDelivery()
    try:
        def mention(text: str, author_id: int):
            return dataclasses.replace(said_in(text, channel=10, guild=20, author_id=author_id), mentions_bot=True)

        for n in range(6):
            await service.respond(mention(f"message {n}", author_id=1), delivery)
        await service.respond(mention("hello", author_id=2), delivery)
    finally:
        worker.close()
    slow_down = messages.counted(messages.SLOW_DOWN, 10, "seconds")
    assert [text == slow_down for text in delivery.shown] == [False, False, True, False]  # the last: person 2
    assert delivery.typing == 4  # nothing at all for the messages passed over
