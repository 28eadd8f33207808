"""A burst of messages through the fake Discord into the real bot, and an account of what came back.

Shared by tests/test_load.py (counts only) and bench/load_bench.py (counts and latencies).
Every message mentions the bot, so each is owed exactly one answer: the model's, or the
"busy, try again" message when the model's queue is full.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bot import messages
from bot.discord_bot.client import ChatBot, required_intents
from bot.llm.worker import ModelWorker
from bot.service import ChatService
from bot.store import Store
from tests.fakediscord import FakeDiscord, build_world, make_client, running_client
from tests.support.scripted import ScriptedBackend
from tests.support.settings import settings_for
from tests.support.waiting import until

MESSAGES = "/channels/{id}/messages"
BUSY_START = messages.BUSY.split("{")[0]


@dataclass
class Sent:
    channel_id: int
    message_id: int
    text: str
    at: float


@dataclass
class LoadReport:
    sent: int = 0
    answered: int = 0
    busy: int = 0
    other: int = 0  # any other refusal (there should be none)
    lost: int = 0  # owed an answer that never came
    duplicated: int = 0  # answered more than once
    out_of_order: int = 0  # replies posted before the reply to an earlier message of their channel
    stored_lost: int = 0  # a user turn, or the answer to an answered message, missing from the database
    stored_duplicated: int = 0
    stored_out_of_order: int = 0
    stored_refused: int = 0  # a busy-refused message kept anyway (it would be there twice once sent again)
    latencies: list[float] = field(default_factory=list)
    answered_ids: set[int] = field(default_factory=set)

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")

    def lines(self) -> list[str]:
        return [f"messages sent:      {self.sent}", f"answered:           {self.answered}",
                f"busy-refused:       {self.busy}", f"other refusals:     {self.other}",
                f"lost:               {self.lost}", f"duplicated:         {self.duplicated}",
                f"out-of-order:       {self.out_of_order}",
                f"stored lost / duplicated / out-of-order / refused but kept: {self.stored_lost} / "
                f"{self.stored_duplicated} / {self.stored_out_of_order} / {self.stored_refused}",
                f"message to reply p50: {self.percentile(0.5) * 1000:.0f} ms, "
                f"p99: {self.percentile(0.99) * 1000:.0f} ms, "
                f"mean: {statistics.fmean(self.latencies or [0]) * 1000:.0f} ms"]


async def run_burst(database: Path, *, channels: int = 50, per_channel: int = 10, users: int = 10,
                    max_waiting: int = 20, model_delay_s: float = 0.0, settle_s: float = 30.0,
                    hold_answers_until_busy: bool = False) -> LoadReport:
    """Send channels x per_channel messages as fast as the fake takes them; wait until each is
    answered (or nothing has moved for `settle_s`); report what reached Discord and the database.

    With `hold_answers_until_busy`, the model writes nothing until a first "busy" refusal is
    posted (there are more channels than places in the model's queue): both answers and
    refusals are then sure to happen, however fast or slow this machine is."""
    settings = settings_for(database).with_overrides("discord", stream_edit_interval=0.0)
    answers_may_start = threading.Event() if hold_answers_until_busy else None
    worker = ModelWorker(ScriptedBackend(delay_s=model_delay_s, gate=answers_may_start), timeout_s=60,
                         max_waiting=max_waiting)
    try:
        async with FakeDiscord() as fake:
            world = build_world(fake)
            rooms = [fake.add_text_channel(world.guild, f"load-{n}") for n in range(channels)]
            people = [fake.add_user(f"user{n}") for n in range(users)]
            for person in people:
                fake.add_member(world.guild, person)
            store = await Store.open(settings.database.url)
            try:
                bot = make_client(ChatBot, intents=required_intents(), service=ChatService(store, worker, settings),
                                  settings=settings.discord)
                async with running_client(fake, bot):
                    sent = await send_burst(fake, rooms, people, per_channel)
                    if answers_may_start is not None:
                        await until(lambda: busy_posted(fake), limit_s=settle_s)
                        answers_may_start.set()
                    await wait_for_replies(fake, sent, settle_s)
                    # Until nothing is being answered: a second answer to a message would be posted by then.
                    await bot.events.wait_until_answered(settle_s)
                    report = account_for_posts(fake, sent)
                    await account_for_storage(store, sent, report)
            finally:
                await store.close()
    finally:
        if answers_may_start is not None:
            answers_may_start.set()
        worker.close()
    return report


async def send_burst(fake: FakeDiscord, rooms: list, people: list, per_channel: int) -> list[Sent]:
    sent = []
    loop = asyncio.get_running_loop()
    for round_number in range(per_channel):
        for index, room in enumerate(rooms):
            text = f"room {index} message {round_number}"
            author = people[(index + round_number) % len(people)]
            message = await fake.send_message(room, author, f"{fake.bot.mention} {text}")
            sent.append(Sent(room.id, int(message["id"]), text, loop.time()))
    return sent


def replies_by_trigger(fake: FakeDiscord, sent: list[Sent]) -> dict[int, list]:
    """Successful posts that reply to one of the sent messages, in the order they were posted."""
    wanted = {s.message_id for s in sent}
    replies = defaultdict(list)
    for request in fake.requests_to("POST", MESSAGES):
        reference = (request.json or {}).get("message_reference") or {}
        trigger = int(reference.get("message_id") or 0)
        if request.status == 200 and trigger in wanted:
            replies[trigger].append(request)
    return replies


async def wait_for_replies(fake: FakeDiscord, sent: list[Sent], settle_s: float) -> None:
    """Until every message has a reply, or nothing new came for `settle_s` (then some are lost)."""
    loop = asyncio.get_running_loop()
    seen, last_change = -1, loop.time()
    while True:
        count = len(replies_by_trigger(fake, sent))
        if count == len(sent):
            break
        if count != seen:
            seen, last_change = count, loop.time()
        elif loop.time() - last_change > settle_s:
            break
        await asyncio.sleep(0.05)


def busy_posted(fake: FakeDiscord) -> bool:
    return any(request.status == 200 and (request.json or {}).get("content", "").startswith(BUSY_START)
               for request in fake.requests_to("POST", MESSAGES))


def account_for_posts(fake: FakeDiscord, sent: list[Sent]) -> LoadReport:
    report = LoadReport(sent=len(sent))
    replies = replies_by_trigger(fake, sent)
    for message in sent:
        posts = replies.get(message.message_id, [])
        if not posts:
            report.lost += 1
            continue
        report.duplicated += len(posts) - 1
        content = posts[0].json["content"]
        if content.startswith("echo: "):
            report.answered += 1
            report.answered_ids.add(message.message_id)
        elif content.startswith(BUSY_START):
            report.busy += 1
        else:
            report.other += 1
        report.latencies.append(posts[0].time - message.at)
    report.out_of_order = count_out_of_order(fake, sent, replies)
    return report


def count_out_of_order(fake: FakeDiscord, sent: list[Sent], replies: dict[int, list]) -> int:
    """Per channel: replies whose trigger was sent before the trigger of a reply posted earlier."""
    position = {s.message_id: n for n, s in enumerate(sent)}
    channel_of = {s.message_id: s.channel_id for s in sent}
    posted = sorted(((r.time, trigger) for trigger, posts in replies.items() for r in posts[:1]))
    latest: dict[int, int] = {}
    wrong = 0
    for _, trigger in posted:
        channel = channel_of[trigger]
        if position[trigger] < latest.get(channel, -1):
            wrong += 1
        latest[channel] = max(latest.get(channel, -1), position[trigger])
    return wrong


async def account_for_storage(store: Store, sent: list[Sent], report: LoadReport) -> None:
    """Each answered message's user turn stored once and in order; each answer posted is stored
    once, right after the message it answers. A busy-refused message is rightly not stored at all:
    its author is asked to send it again."""
    by_channel: defaultdict[int, list[Sent]] = defaultdict(list)
    for message in sent:
        by_channel[message.channel_id].append(message)
    for channel_id, expected in by_channel.items():
        turns = await store.recent_turns(channel_id, 10 * len(expected) + 10)
        answered = [m.message_id for m in expected if m.message_id in report.answered_ids]
        check_user_turns(turns, answered, report)
        report.stored_refused += sum(1 for t in turns if t.role == "user" and t.message_id not in answered)
        check_answers(turns, set(answered), report)


def check_user_turns(turns: list, expected_ids: list[int], report: LoadReport) -> None:
    stored_ids = [t.message_id for t in turns if t.role == "user"]
    counts = Counter(stored_ids)
    report.stored_lost += sum(1 for m in expected_ids if not counts[m])
    report.stored_duplicated += sum(n - 1 for n in counts.values() if n > 1)
    if list(dict.fromkeys(stored_ids)) != [m for m in expected_ids if counts[m]]:
        report.stored_out_of_order += 1


def check_answers(turns: list, answered_ids: set[int], report: LoadReport) -> None:
    answers_to: Counter[int] = Counter()
    for previous, turn in zip([None, *turns], turns):
        if turn.role != "assistant":
            continue
        if previous is None or previous.role != "user" or not turn.content.endswith(previous.content):
            report.stored_out_of_order += 1  # an answer that is not right after its message
        else:
            answers_to[previous.message_id] += 1
    report.stored_lost += sum(1 for m in answered_ids if not answers_to[m])
    report.stored_duplicated += sum(n - 1 for n in answers_to.values() if n > 1)
