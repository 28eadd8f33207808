"""A fair share of the model: one busy server does not make every other server wait behind it.

The chat service is real (SQLite file, channel order, the fair share) and the model is the
scripted one behind the real one-at-a-time worker, held by a gate so the test decides when
the model may go on, with no guess at how long anything takes."""

from __future__ import annotations

import asyncio
import threading

from bot.fair_share import FairShare
from bot.llm.worker import ModelWorker
from bot.service import ChatService
from tests.support.conversation import said
from tests.support.scripted import ScriptedBackend
from tests.support.waiting import until

SERVER_A, SERVER_B = 100, 200


def recording_backend(started: list[str], gate: threading.Event) -> ScriptedBackend:
    def reply(messages) -> str:
        started.append(messages[-1]["content"])  # the order the model takes replies in
        return "ok"

    return ScriptedBackend(reply=reply, gate=gate)


async def flood_then_one(settings, store, max_share: float) -> tuple[list[str], list[str]]:
    """Server A sends 100 messages at once over 20 channels; then server B sends one."""
    started: list[str] = []
    gate = threading.Event()
    settings = settings.with_overrides("engine", max_share=max_share)
    service = ChatService(store, ModelWorker(recording_backend(started, gate), timeout_s=60), settings)
    flood = [asyncio.create_task(service.reply(said(f"A{channel}-{n}", channel=channel, guild=SERVER_A)))
             for n in range(5) for channel in range(1, 21)]
    await until(lambda: service.replies_waiting_for_model() == 19)  # one being written, one per other channel waiting
    lone = asyncio.create_task(service.reply(said("B", channel=99, guild=SERVER_B, author_id=77)))
    await until(lambda: service.replies_waiting_for_model() == 20)
    gate.set()
    replies = await asyncio.gather(*flood, lone)
    assert all(reply.ok for reply in replies)
    return started, [f"A{channel}-{n}" for n in range(5) for channel in range(1, 21)]


async def test_one_servers_flood_does_not_hold_up_another_server(store, settings):
    started, _ = await flood_then_one(settings, store, max_share=0.5)
    # A's first reply was already being written when B asked; B's goes in next, not 20th.
    assert started.index("Ann: B") == 1


async def test_each_channel_keeps_its_order_under_fair_sharing(store, settings):
    started, sent = await flood_then_one(settings, store, max_share=0.5)
    for channel in range(1, 21):
        mine = [text for text in started if text.startswith(f"Ann: A{channel}-")]
        assert mine == [f"Ann: A{channel}-{n}" for n in range(5)]
    assert len(started) == len(sent) + 1


async def test_a_server_alone_may_use_every_place():
    places = FairShare(places=4, max_share=0.25)
    async with places.turn(SERVER_A), places.turn(SERVER_A), places.turn(SERVER_A):
        assert places.place_in_line() == 0  # nobody else waits: the cap does not leave places idle


async def test_a_server_over_its_share_waits_while_another_goes_first():
    places = FairShare(places=4, max_share=0.5)
    order: list[str] = []
    done = {name: asyncio.Event() for name in ("A0", "A1", "A2", "A3", "A4", "B0")}

    async def reply(tenant, name):
        async with places.turn(tenant):
            order.append(name)
            await done[name].wait()

    tasks = [asyncio.create_task(reply(SERVER_A, f"A{n}")) for n in range(4)]  # A alone: every place
    await until(lambda: len(order) == 4)
    tasks += [asyncio.create_task(reply(SERVER_A, "A4")), asyncio.create_task(reply(SERVER_B, "B0"))]
    await until(lambda: places.waiting() == 2)
    done["A0"].set()  # a place frees: B gets it, though A asked first (A holds 3, over its half)
    await until(lambda: len(order) == 5)
    assert order[-1] == "B0"
    for event in done.values():
        event.set()
    await asyncio.gather(*tasks)
    assert order[-1] == "A4"
