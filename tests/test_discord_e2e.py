"""End to end: the real discord.py client, our ChatBot, against the local fake Discord.

Each test builds its own world (a server, members, channels), its own database
and its own bot, and asserts on what the bot sent to "Discord" (the recorded
requests) and on what it stored (the database). The model is scripted where
the words do not matter (tests/support/scripted.py, run inside the real
ModelWorker); the memory test uses the real embedded model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from bot import messages
from bot.core.cleaning import ZERO_WIDTH_SPACE
from bot.core.split import split_message
from bot.discord_bot import posting
from bot.discord_bot.client import required_intents
from bot.discord_bot.launch import DiscordSetupError, run_on_discord
from bot.core.types import TERMINAL_CHANNEL_ID, TERMINAL_GUILD_ID
from bot.llm.worker import ModelWorker
from tests.fakediscord import payloads
from tests.fakediscord import messages as fake_messages
from tests.fakediscord import (FakeChannel, FakeDiscord, build_world, permissions,
                               point_discord_py_at)
from tests.support.discord_scene import EPHEMERAL, MESSAGES, TYPING, Scene, pings_no_one, replying_to, running_bot
from tests.support.scripted import Gate, ScriptedBackend
from tests.support.settings import REPO_ROOT, settings_for
from tests.support.store_queries import audit_entries
from tests.support.waiting import until

# The scene (running_bot, Scene, the `scene` fixture in conftest.py): tests/support/discord_scene.py.


def last_prompt(scene: Scene) -> list[dict]:
    return scene.model.prompts[-1]


# --------------------------------------------------------------------------- answering


async def test_a_mention_gets_typing_then_a_reply_that_pings_no_one(scene: Scene):
    message = await scene.say(f"{scene.fake.bot.mention} hello there")
    reply = await scene.reply_to(message)

    typing = scene.fake.requests_to("POST", TYPING)
    assert typing and typing[0].path == f"/channels/{scene.general.id}/typing"
    assert scene.fake.requests.index(typing[0]) < scene.fake.requests.index(reply)
    assert pings_no_one(reply)
    assert reply.json["message_reference"]["message_id"] == int(message["id"])
    assert reply.json["message_reference"]["fail_if_not_exists"] is False
    # The bot's mention is gone from what the model read; the speaker's name is there.
    assert reply.json["content"] == "echo: Alice: hello there"
    posted = scene.fake.messages[int(reply.response["id"])]
    assert posted["mentions"] == [] and posted["referenced_message"]["id"] == message["id"]

    assert await scene.turns() == [("user", "hello there"), ("assistant", "echo: Alice: hello there")]
    [user_turn, _] = await scene.store.recent_turns(scene.general.id, 10)
    assert (user_turn.author_id, user_turn.author_name, user_turn.message_id) == (
        scene.world.alice.id, "Alice", int(message["id"]))


async def test_mentions_reach_the_model_as_names(scene: Scene):
    world = scene.world
    await scene.ask(f"say hi to {world.mod.mention} in {world.general.mention}")
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: say hi to @mod in #general"}


async def test_a_reply_to_the_bot_is_answered_without_a_mention(scene: Scene):
    first = await scene.ask("hi")
    follow_up = await scene.say("and another thing", referenced_message_id=int(first.response["id"]),
                                ping_reply=False)
    await scene.reply_to(follow_up)
    assert last_prompt(scene)[-1]["content"] == "Alice: and another thing"


async def test_ignores_bots_and_messages_not_meant_for_it(scene: Scene):
    fake, world = scene.fake, scene.world
    other_bot = fake.add_user("otherbot", bot=True)
    fake.add_member(world.guild, other_bot)
    await scene.say(f"{fake.bot.mention} beep boop", author=other_bot)
    await scene.say("just chatting among humans")
    await scene.say(fake.bot.mention)  # a bare mention: nothing to answer
    # The channel's events are handled in order, so once this is answered, the ones above were seen.
    last = await scene.ask("are you there?")

    assert [r.json["message_reference"]["message_id"] for r in scene.posted()] == [
        last.json["message_reference"]["message_id"]]
    assert await scene.turns() == [("user", "are you there?"), ("assistant", "echo: Alice: are you there?")]


async def test_ignores_system_messages_even_with_auto_reply_on(scene: Scene):
    fake, world = scene.fake, scene.world
    await scene.store.set_auto_reply(world.general.id, world.guild.id, True, world.mod.id)
    thread_created = 18  # a system message whose content is the new thread's name
    notice = fake_messages.build_message(fake.state, channel=world.general, author=world.alice,
                                         content="Weekend plans", message_type=thread_created)
    fake.state.store_message(notice)
    await fake.dispatch("MESSAGE_CREATE", fake_messages.gateway_form(fake.state, notice))
    last = await scene.say("hello everyone")
    await scene.reply_to(last)
    assert len(scene.posted()) == 1 and await scene.turns() == [
        ("user", "hello everyone"), ("assistant", "echo: Alice: hello everyone")]


async def test_attachments_alone_get_a_note_that_only_text_is_read(scene: Scene):
    message = await scene.say(scene.fake.bot.mention, attachments=[("cat.png", b"\x89PNG...", "image/png")])
    reply = await scene.reply_to(message)
    assert reply.json["content"] == messages.ATTACHMENTS_ONLY
    assert pings_no_one(reply)
    assert scene.model.prompts == [] and await scene.turns() == []


async def test_text_with_an_attachment_is_answered_with_the_attachment_named_as_unread(scene: Scene):
    """The model is told a file came that it cannot see (else it would describe a picture it
    never saw), and so is the person, under the answer."""
    message = await scene.say(f"{scene.fake.bot.mention} what is in this picture?",
                              attachments=[("cat.png", b"\x89PNG...", "image/png")])
    reply = await scene.reply_to(message)
    asked = "what is in this picture?\n[attached, not readable by the bot: cat.png]"
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: " + asked}
    assert reply.json["content"] == f"echo: Alice: {asked}\n-# {messages.ATTACHMENTS_NOT_READ}"
    # Stored as typed: the note is not the person's words, nor counted against their message's length.
    assert await scene.turns() == [("user", "what is in this picture?"), ("assistant", f"echo: Alice: {asked}")]


async def test_a_reply_to_someone_elses_message_shows_the_model_what_it_replies_to(scene: Scene):
    """For this answer only: the stored turn keeps the person's own words, so deleting the message
    replied to leaves nothing of it in the history."""
    fake, world = scene.fake, scene.world
    rules = await scene.say("Rules: no spam, be kind. <@&1> ask @everyone first.", author=world.mod)
    question = await scene.say(f"{fake.bot.mention} what does this mean?", referenced_message_id=int(rules["id"]))
    await scene.reply_to(question)
    shown = last_prompt(scene)[-1]["content"]
    assert shown.startswith('Alice: (replying to mod: "Rules: no spam, be kind.')
    assert shown.endswith('")\nwhat does this mean?') and "@everyone" not in shown  # mentions broken, as recalled text
    assert await scene.turns() == [("user", "what does this mean?"), ("assistant", "echo: " + shown)]
    thanks = await scene.say(f"{fake.bot.mention} thanks", referenced_message_id=int(question["id"]))
    answer = await scene.reply_to(thanks)
    assert last_prompt(scene)[-1]["content"].startswith('Alice: (replying to Alice: "what does this mean?")')
    follow_up = await scene.say("and this?", referenced_message_id=int(answer.response["id"]))
    await scene.reply_to(follow_up)  # a reply to the bot's own answer: that is in the history already
    assert last_prompt(scene)[-1]["content"] == "Alice: and this?"


async def test_two_channels_never_see_each_others_history(scene: Scene):
    fake, world = scene.fake, scene.world
    random = fake.add_text_channel(world.guild, "random")
    await scene.ask("the password is swordfish")
    await scene.ask("what is the password?", channel=random, author=world.mod)

    assert not any("swordfish" in m["content"] for m in last_prompt(scene))
    assert await scene.turns(random) == [("user", "what is the password?"),
                                         ("assistant", "echo: mod: what is the password?")]
    assert [role for role, _ in await scene.turns()] == ["user", "assistant"]


async def test_a_dm_is_answered_and_server_commands_are_refused_there(scene: Scene):
    fake, alice = scene.fake, scene.world.alice
    dm = fake.dm_channel(alice)
    message = await scene.say("hello in private", channel=dm)  # no mention needed in a DM
    reply = await scene.reply_to(message)
    assert reply.path == f"/channels/{dm.id}/messages" and reply.json["content"] == "echo: Alice: hello in private"
    assert await scene.turns(dm) == [("user", "hello in private"), ("assistant", "echo: Alice: hello in private")]

    for command, options in [("persona set", {"text": "a pirate"}), ("persona show", None), ("autoreply on", None)]:
        answer = await scene.command(alice, command, channel=dm, options=options)
        assert answer["content"] == messages.SERVER_ONLY and answer["flags"] & EPHEMERAL
    assert await audit_entries(scene.store) == []

    # /reset is not server-only: in a DM it forgets the user's own conversation.
    answer = await scene.command(alice, "reset", channel=dm)
    assert answer["content"] == messages.counted(messages.HISTORY_RESET, 2)
    assert await scene.turns(dm) == []


# --------------------------------------------------------------------------- what is posted


async def test_a_5000_character_answer_arrives_in_order_with_code_fences_intact(tmp_path):
    paragraphs = [f"Paragraph {n:02d}. " + " ".join(["words"] * 60) for n in range(1, 8)]
    code = "```python\n" + "\n".join(f"line_{n:03d} = {n}  # a comment to make it longer" for n in range(60)) + "\n```"
    answer = "\n\n".join(paragraphs[:3] + [code] + paragraphs[3:])
    assert len(answer) > 5000

    async with running_bot(tmp_path, reply=lambda _: answer) as scene:
        message = await scene.say(f"{scene.fake.bot.mention} tell me everything")
        first = await scene.reply_to(message)
        count = len(split_message(answer))
        await scene.fake.wait_for_request("POST", MESSAGES, count=count)
        parts = scene.posted()
        assert count >= 3 and len(parts) == count and parts[0] is first
        assert all("message_reference" not in p.json for p in parts[1:])  # one reply, then the rest in order
        contents = [p.json["content"] for p in parts]
        assert all(len(c) <= 2000 and c.count("```") % 2 == 0 for c in contents)
        assert all(pings_no_one(p) for p in parts)

        text = "\n".join(contents)
        numbers = [int(n) for n in re.findall(r"Paragraph (\d+)", text)]
        lines = [int(n) for n in re.findall(r"line_(\d+) =", text)]
        assert numbers == list(range(1, 8)) and lines == list(range(60))
        # Every cut inside the code block is closed and reopened with its language.
        assert text.count("```python") >= 2
        assert await scene.turns() == [("user", "tell me everything"), ("assistant", answer)]


async def test_mass_mentions_in_model_output_ping_no_one(scene: Scene):
    role = scene.fake.add_role(scene.world.guild, "Moderators", mentionable=True)
    scene.model.reply = lambda _: f"@everyone and @here, ask {role.mention} or {scene.world.mod.mention}"
    reply = await scene.ask("ping everybody please")

    assert pings_no_one(reply)
    content = reply.json["content"]
    assert "@everyone" not in content and f"@{ZERO_WIDTH_SPACE}everyone" in content and "@here" not in content
    assert role.mention not in content
    posted = scene.fake.messages[int(reply.response["id"])]
    assert (posted["mention_everyone"], posted["mentions"], posted["mention_roles"]) == (False, [], [])


async def test_a_note_about_forgotten_turns_is_shown_as_subtext(tmp_path):
    # A context of a few dozen "tokens" (the scripted model counts words) fills up quickly.
    async with running_bot(tmp_path, generation={"max_new_tokens": 8}) as scene:
        scene.model.context_tokens = 60
        for n in range(4):
            reply = await scene.ask(f"message number {n} with a few extra words in it")
    assert "\n-# " in reply.json["content"]
    note = reply.json["content"].split("\n-# ")[1]
    assert re.fullmatch(r"To fit my memory, I left (1 older message|\d+ older messages) out of this answer\.", note)


# --------------------------------------------------------------------------- order and concurrency


@pytest.mark.parametrize("addressed_by", ["mention", "auto-reply"])
async def test_three_messages_sent_at_once_are_answered_in_order(tmp_path, addressed_by):
    async with running_bot(tmp_path) as scene:
        scene.model.delay_s = 0.05  # each answer takes a moment, so the three overlap
        prefix = f"{scene.fake.bot.mention} " if addressed_by == "mention" else ""
        if addressed_by == "auto-reply":  # each message then reads the channel's setting first
            await scene.store.set_auto_reply(scene.general.id, scene.world.guild.id, True, scene.world.mod.id)
        sent = [await scene.say(f"{prefix}question {n}") for n in (1, 2, 3)]
        for message in sent:
            await scene.reply_to(message)
        posted = scene.posted()
        prompts = scene.model.prompts

    assert [str(r.json["message_reference"]["message_id"]) for r in posted] == [m["id"] for m in sent]
    # Each turn saw the ones before it.
    assert [len(p) for p in prompts] == [2, 4, 6]
    assert prompts[2][1:] == [
        {"role": "user", "content": "Alice: question 1"}, {"role": "assistant", "content": "echo: Alice: question 1"},
        {"role": "user", "content": "Alice: question 2"}, {"role": "assistant", "content": "echo: Alice: question 2"},
        {"role": "user", "content": "Alice: question 3"}]


async def test_a_message_arriving_while_an_answer_is_written_waits_and_sees_it(tmp_path):
    gate = Gate()
    async with running_bot(tmp_path) as scene:
        scene.model.reply = gate.wrap(lambda m: "first answer" if len(m) == 2 else "second answer")
        first = await scene.say(f"{scene.fake.bot.mention} first")
        await gate.wait_entered()
        second = await scene.say(f"{scene.fake.bot.mention} second")
        gate.opened.set()
        await scene.reply_to(first)
        await scene.reply_to(second)
        assert scene.model.prompts[1][-2:] == [{"role": "assistant", "content": "first answer"},
                                               {"role": "user", "content": "Alice: second"}]
        assert [r.json["content"] for r in scene.posted()] == ["first answer", "second answer"]


async def test_channels_do_not_wait_for_each_other(tmp_path):
    gate = Gate()
    async with running_bot(tmp_path) as scene:
        random = scene.fake.add_text_channel(scene.world.guild, "random")
        scene.model.reply = gate.wrap(lambda m: "done")
        await scene.say(f"{scene.fake.bot.mention} a long question", channel=scene.general)
        await gate.wait_entered()
        # While general's answer is being written, random's message is taken in at once:
        # its typing indicator and its stored turn do not wait for general.
        await scene.say(f"{scene.fake.bot.mention} meanwhile", channel=random)
        await scene.fake.wait_for_request("POST", f"/channels/{random.id}/typing")
        await until(lambda: has_turns(scene, random, 1))
        assert scene.posted() == [] and scene.posted(random) == []
        gate.opened.set()
        await scene.fake.wait_for_request("POST", MESSAGES, count=2)


async def has_turns(scene: Scene, channel: FakeChannel, count: int) -> bool:
    return len(await scene.turns(channel)) == count


async def test_a_direct_message_is_not_kept_waiting_behind_a_servers_flood(tmp_path):
    """The model writes one reply at a time here; six channels of one server are all waiting
    when Alice writes to the bot in private. Her DM (a tenant of its own) goes in next."""
    import threading

    async with running_bot(tmp_path, reply=lambda chat: "ok") as scene:
        fake, alice = scene.fake, scene.world.alice
        scene.model.gate = held = threading.Event()
        rooms = [fake.add_text_channel(scene.world.guild, f"room-{n}") for n in range(6)]
        await until(lambda: all(scene.bot.get_channel(room.id) for room in rooms))
        for room in rooms:
            for n in range(2):
                await scene.say(f"{fake.bot.mention} question {n}", channel=room)
        await until(lambda: scene.service.replies_waiting_for_model() == 5)  # one being written, five channels waiting
        private = await scene.say("a quick one in private", channel=fake.dm_channel(alice))
        await until(lambda: scene.service.replies_waiting_for_model() == 6)
        held.set()
        await scene.reply_to(private)
        await until(lambda: len(scene.posted(None)) + sum(len(scene.posted(room)) for room in rooms) >= 12)
    answered = [r.path for r in fake.requests_to("POST", MESSAGES) if r.status == 200]
    assert answered.index(f"/channels/{fake.dm_channel(alice).id}/messages") == 1  # right after the first


async def test_the_gateway_heartbeats_while_the_model_works(tmp_path):
    gate = Gate()
    async with running_bot(tmp_path, heartbeat_interval_ms=20) as scene:
        scene.model.reply = gate.wrap(lambda m: "done")
        message = await scene.say(f"{scene.fake.bot.mention} think hard")
        await gate.wait_entered()
        before = heartbeats(scene.fake)
        await until(lambda: heartbeats(scene.fake) >= before + 3)
        gate.opened.set()
        await scene.reply_to(message)


def heartbeats(fake: FakeDiscord) -> int:
    return sum(1 for payload in fake.gateway_received if payload["op"] == 1)


# --------------------------------------------------------------------------- memory (real model)


async def test_the_second_turn_remembers_the_first_with_the_embedded_model(tmp_path, embedded_engine):
    # Greedy decoding makes the small model's words repeatable; this exchange shows memory with it.
    generation = {"do_sample": False, "max_new_tokens": 40}
    async with running_bot(tmp_path, worker=embedded_engine, generation=generation) as scene:
        sam = scene.fake.add_user("sam", global_name="Sam")
        scene.fake.add_member(scene.world.guild, sam)
        random = scene.fake.add_text_channel(scene.world.guild, "random")
        await scene.ask("My favourite fruit is mango.", author=sam, timeout=180)
        remembered = await scene.ask("What is my favourite fruit?", author=sam, timeout=180)
        # The same question where nobody said it: the model has no way to know.
        control = await scene.ask("What is my favourite fruit?", channel=random, author=sam, timeout=180)
        assert len(await scene.turns()) == 4
    assert "mango" in remembered.json["content"]
    assert "mango" not in control.json["content"]


# --------------------------------------------------------------------------- slash commands


async def test_commands_are_registered_with_both_guards(scene: Scene):
    registered = {c["name"]: c for c in scene.fake.registered_commands()}
    assert set(registered) == {"persona", "reset", "autoreply", "forget-me", "export", "optout", "optin", "status"}
    # /persona's scopes need different permissions (Manage Server, Manage Channels), which
    # Discord's default permissions cannot express: the bot checks each at runtime.
    assert registered["persona"]["default_member_permissions"] is None
    assert registered["reset"]["default_member_permissions"] == str(permissions.MANAGE_MESSAGES)
    assert registered["autoreply"]["default_member_permissions"] == str(permissions.MANAGE_CHANNELS)
    assert registered["persona"]["dm_permission"] is False and registered["autoreply"]["dm_permission"] is False
    assert registered["persona"]["contexts"] == [0] and registered["autoreply"]["contexts"] == [0]
    assert all(command["integration_types"] == [0] for command in registered.values())  # server installs only
    [channel] = [o for o in registered["export"]["options"] if o["name"] == "channel"]
    # Channels that hold messages, threads included (10-12); not categories (4) or forums (15).
    assert sorted(channel["channel_types"]) == [0, 2, 5, 10, 11, 12, 13]
    # /forget-me is for everyone, in servers and DMs: no permission asked for.
    assert registered["forget-me"]["default_member_permissions"] is None
    assert sorted(registered["forget-me"]["contexts"]) == [0, 1]
    # /export is for moderators, in servers only; /optout and /optin for everyone, anywhere.
    assert registered["export"]["default_member_permissions"] == str(permissions.MANAGE_GUILD)
    assert registered["export"]["contexts"] == [0] and registered["export"]["dm_permission"] is False
    for name in ("optout", "optin"):
        assert registered[name]["default_member_permissions"] is None
        assert sorted(registered[name]["contexts"]) == [0, 1]
    persona_set = next(o for o in registered["persona"]["options"] if o["name"] == "set")
    text, scope = persona_set["options"]
    assert text["max_length"] == 4000 and "4,000" in persona_set["description"]
    assert scope["name"] == "scope" and not scope["required"]
    assert [choice["value"] for choice in scope["choices"]] == ["server", "channel"]


async def test_commands_sync_to_the_development_server_when_configured(tmp_path):
    async with running_bot(tmp_path, in_dev_guild=True) as scene:
        guild = scene.world.guild
        assert scene.fake.requests_to("PUT", f"/applications/{{app}}/guilds/{guild.id}/commands")
        assert {c["name"] for c in scene.fake.registered_commands(guild)} == {
            "persona", "reset", "autoreply", "forget-me", "export", "optout", "optin", "status"}


async def test_an_admin_sets_the_persona_and_a_member_cannot(scene: Scene):
    world = scene.world
    # The bot refuses members without Manage Server (Discord shows /persona to every member: its
    # channel scope needs Manage Channels instead).
    refused = await scene.command(world.alice, "persona set", options={"text": "a cat"})
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")
    assert refused["flags"] & EPHEMERAL
    shown = await scene.command(world.alice, "persona show")
    assert shown["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server or Manage Channels")
    assert await scene.store.persona(world.guild.id) is None and await audit_entries(scene.store) == []

    answer = await scene.command(world.mod, "persona set", options={"text": "You are a pirate. Say arr."})
    assert answer["content"] == messages.PERSONA_SET.format(length=26) and answer["flags"] & EPHEMERAL
    assert await scene.store.persona(world.guild.id) == "You are a pirate. Say arr."
    [entry] = await audit_entries(scene.store)
    assert (entry.action, entry.actor_id, entry.guild_id) == ("persona.set", world.mod.id, world.guild.id)

    await scene.ask("hello")
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate. Say arr."}

    shown = await scene.command(world.mod, "persona show")
    assert shown["content"] == messages.PERSONA_SHOW_CUSTOM.format(persona="You are a pirate. Say arr.")
    reset = await scene.command(world.mod, "persona reset")
    assert reset["content"] == messages.PERSONA_RESET and await scene.store.persona(world.guild.id) is None


async def test_an_admin_turns_thinking_on_for_the_server_and_a_member_cannot(scene: Scene):
    world = scene.world
    refused = await scene.command(world.alice, "persona thinking", options={"mode": "on"})
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")
    assert await scene.store.thinking(world.guild.id) is None

    answer = await scene.command(world.mod, "persona thinking", options={"mode": "on"})
    assert answer["content"] == messages.THINKING_ON and answer["flags"] & EPHEMERAL
    await scene.ask("hello")
    assert scene.model.thinking[-1] is True  # this server's prompts are rendered thinking
    [entry] = await audit_entries(scene.store)
    assert (entry.action, entry.actor_id, entry.detail) == ("thinking.set", world.mod.id, "on")


async def test_a_channel_persona_overrides_the_servers_in_that_channel_only(scene: Scene):
    fake, world = scene.fake, scene.world
    general, random = world.general, fake.add_text_channel(world.guild, "random")
    chan = fake.add_user("chan")  # may manage channels, not the server
    fake.add_member(world.guild, chan, permissions=permissions.MANAGE_CHANNELS)
    await scene.command(world.mod, "persona set", options={"text": "You are a pirate."})

    # Manage Channels alone: the channel scope yes, the server's no.
    refused = await scene.command(chan, "persona set", options={"text": "You are a cat."})
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")
    answer = await scene.command(chan, "persona set", options={"text": "You are a cat.", "scope": "channel"},
                                 channel=random)
    assert answer["content"] == messages.PERSONA_SET_CHANNEL.format(length=14) and answer["flags"] & EPHEMERAL
    # Without Manage Channels (nor Manage Server), neither scope.
    refused = await scene.command(world.alice, "persona set", options={"text": "a dog", "scope": "channel"})
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Channels")
    refused = await scene.command(world.alice, "persona reset", options={"scope": "channel"}, channel=random)
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Channels")
    assert await scene.store.channel_persona(general.id) is None

    await scene.ask("hello", channel=random)
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a cat."}
    await scene.ask("hello")
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate."}

    # /persona show says which applies here, and whence.
    shown = await scene.command(chan, "persona show", channel=random)
    assert shown["content"] == messages.PERSONA_SHOW_CHANNEL.format(persona="You are a cat.")
    shown = await scene.command(chan, "persona show")
    assert shown["content"] == messages.PERSONA_SHOW_CUSTOM.format(persona="You are a pirate.")

    # Resetting the channel scope falls back to the server's persona there; the server's stays.
    reset = await scene.command(chan, "persona reset", options={"scope": "channel"}, channel=random)
    assert reset["content"] == messages.PERSONA_RESET_CHANNEL.format(applies=messages.APPLIES_SERVER)
    again = await scene.command(chan, "persona reset", options={"scope": "channel"}, channel=random)
    assert again["content"] == messages.PERSONA_CHANNEL_NONE.format(applies=messages.APPLIES_SERVER)
    await scene.ask("hello again", channel=random)
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate."}
    shown = await scene.command(world.mod, "persona show", channel=random)
    assert shown["content"] == messages.PERSONA_SHOW_CUSTOM.format(persona="You are a pirate.")
    await scene.command(world.mod, "persona reset")
    shown = await scene.command(chan, "persona show", channel=random)
    assert shown["content"] == messages.PERSONA_SHOW_DEFAULT.format(persona=scene.service.servers.default_persona)

    entries = [(e.action, e.actor_id, e.guild_id, e.channel_id, e.detail) for e in await audit_entries(scene.store)]
    assert entries == [
        ("persona.set", world.mod.id, world.guild.id, None, "server: 17 characters"),
        ("persona.set", chan.id, world.guild.id, random.id, "channel: 14 characters"),
        ("persona.reset", chan.id, world.guild.id, random.id, "channel"),
        ("persona.reset", world.mod.id, world.guild.id, None, "server"),
    ]


async def test_a_persona_over_the_limit_is_refused_with_the_limit_stated(scene: Scene):
    too_long = "x" * 4001
    answer = await scene.command(scene.world.mod, "persona set", options={"text": too_long})
    assert answer["content"] == messages.PERSONA_TOO_LONG.format(length=4001, limit=4000)
    assert await scene.store.persona(scene.world.guild.id) is None


async def test_a_long_persona_is_shown_in_parts_that_fit(scene: Scene):
    persona = " ".join(["Always answer like a patient teacher."] * 80)  # about 3,000 characters
    await scene.command(scene.world.mod, "persona set", options={"text": persona})
    expected = messages.PERSONA_SHOW_CUSTOM.format(persona=persona)
    interaction = await scene.fake.send_interaction(scene.general, scene.world.mod, "persona show")
    await scene.fake.wait_for_request("POST", f"/webhooks/{{app}}/{interaction.token}",
                                      count=len(split_message(expected)))
    shown = [scene.fake.original_response(interaction)] + [
        scene.fake.messages[i] for i in interaction.followup_message_ids]
    assert len(shown) > 1 and all(len(m["content"]) <= 2000 and m["flags"] & EPHEMERAL for m in shown)
    assert " ".join(m["content"] for m in shown).split() == expected.split()  # all of it, in order


async def test_a_failing_command_says_so_and_logs_why(scene: Scene, caplog, monkeypatch):
    async def broken(*_where):
        raise RuntimeError("the database is on fire")
    monkeypatch.setattr(scene.service.servers, "show_persona", broken)
    with caplog.at_level(logging.ERROR, logger="bot.discord_bot"):
        answer = await scene.command(scene.world.mod, "persona show")
    assert answer["content"] == messages.COMMAND_FAILED and answer["flags"] & EPHEMERAL
    assert any("event=command command=\"persona show\"" in r.getMessage() and "outcome=failed" in r.getMessage()
               and r.exc_info for r in caplog.records)


async def test_a_moderator_resets_the_channel_and_it_is_audited(scene: Scene):
    world = scene.world
    await scene.ask("remember this")
    await scene.ask("and this")

    refused = await scene.command(world.alice, "reset", enforce_default_permissions=False)
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Messages")
    assert len(await scene.turns()) == 4 and await audit_entries(scene.store) == []

    answer = await scene.command(world.mod, "reset")
    assert answer["content"] == messages.counted(messages.HISTORY_RESET, 4) and answer["flags"] & EPHEMERAL
    assert await scene.turns() == []
    [entry] = await audit_entries(scene.store)
    assert (entry.action, entry.actor_id, entry.actor_name, entry.guild_id, entry.channel_id, entry.detail) == (
        "history.reset", world.mod.id, "mod", world.guild.id, world.general.id, "4 turns")
    assert entry.created_at is not None

    await scene.ask("what did I say?")
    assert len(last_prompt(scene)) == 2  # the persona and this message: nothing older


async def test_reset_stops_the_answer_being_written_drops_those_waiting_and_keeps_none_of_it(tmp_path):
    gate = Gate()
    async with running_bot(tmp_path) as scene:
        scene.model.reply = gate.wrap(lambda m: "an answer")
        message = await scene.say(f"{scene.fake.bot.mention} a question")
        await gate.wait_entered()
        # Two more wait for their turn behind it: asked before the reset, they are not answered after it.
        waiting = [await scene.say(f"{scene.fake.bot.mention} and {n}") for n in ("this", "that")]
        await until(lambda: scene.service.load().waiting_turn == 2)
        interaction = await scene.fake.send_interaction(scene.general, scene.world.mod, "reset")
        # Acknowledged at once (Discord allows three seconds), answered once the turn is done.
        callback = await scene.fake.wait_for_interaction_response(interaction)
        assert callback["type"] == 5 and callback["data"]["flags"] & EPHEMERAL
        gate.opened.set()
        cut = await scene.reply_to(message)
        assert messages.CUT_SHORT_RESET in cut.json["content"]  # the asker is told why the answer stopped
        await scene.fake.wait_for_request("POST", f"/webhooks/{{app}}/{interaction.token}")
        # Only the question was there to forget: the interrupted answer was never stored.
        assert scene.fake.original_response(interaction)["content"] == (
            "History cleared: 1 message forgotten in this channel.")
        assert await scene.turns() == []
        assert [prompt[-1]["content"] for prompt in scene.model.prompts] == ["Alice: a question"]
        after = await scene.ask("after the reset")  # what comes after the reset is answered as ever
        assert [r for r in scene.posted() if any(replying_to(m)(r) for m in waiting)] == []
        assert after.json["content"] == "an answer"


async def test_forget_me_erases_a_members_words_and_dms_and_answers_privately(scene: Scene):
    world = scene.world
    await scene.ask("alice says something")
    await scene.ask("mod says something", author=world.mod)
    dm = scene.fake.dm_channel(world.alice)
    await scene.reply_to(await scene.say("a private chat", channel=dm))

    answer = await scene.command(world.alice, "forget-me")  # a plain member: no permission needed
    assert answer["content"] == messages.counted(messages.FORGOT_YOU, 3) and answer["flags"] & EPHEMERAL
    assert await scene.turns() == [("assistant", "echo: Alice: alice says something"),
                                   ("user", "mod says something"), ("assistant", "echo: mod: mod says something")]
    assert await scene.turns(dm) == []
    [entry] = await audit_entries(scene.store)
    assert (entry.action, entry.actor_id, entry.actor_name, entry.detail) == (
        "user.forget", world.alice.id, None, "3 turns")
    # It works in a DM too.
    again = await scene.command(world.alice, "forget-me", channel=dm)
    assert again["content"] == messages.counted(messages.FORGOT_YOU, 0)


async def test_auto_reply_answers_every_message_in_that_channel_only(scene: Scene):
    fake, world = scene.fake, scene.world
    channel_mod = fake.add_user("chanmod")
    fake.add_member(world.guild, channel_mod, permissions=permissions.MANAGE_CHANNELS)

    refused = await scene.command(world.alice, "autoreply on", enforce_default_permissions=False)
    assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Channels")
    assert (await scene.command(channel_mod, "autoreply on"))["content"] == messages.AUTOREPLY_ON

    message = await scene.say("no mention needed now")
    assert (await scene.reply_to(message)).json["content"] == "echo: Alice: no mention needed now"
    elsewhere = fake.add_text_channel(world.guild, "quiet")
    await scene.say("not here though", channel=elsewhere)

    assert (await scene.command(channel_mod, "autoreply off"))["content"] == messages.AUTOREPLY_OFF
    await scene.say("and not any more here")
    await scene.ask("but a mention still works")
    assert scene.posted(elsewhere) == [] and len(scene.posted()) == 2
    assert [entry.action for entry in await audit_entries(scene.store)] == ["autoreply.on", "autoreply.off"]


# --------------------------------------------------------------------------- history follows Discord


async def test_a_fact_from_before_the_window_is_recalled_until_its_message_is_deleted(tmp_path):
    async with running_bot(tmp_path, reply=lambda chat: "Noted.") as scene:
        fake = scene.fake
        boat = await scene.say(f"{fake.bot.mention} my boat is called Marigold")
        await scene.reply_to(boat)
        for n in range(21):  # 42 turns: past the 40-turn window
            await scene.ask(f"filler message number {n}")
        await scene.ask("what is my boat called?")
        prompt = last_prompt(scene)
        assert not any("Marigold" in m["content"] for m in prompt[:-1])  # out of the window
        assert "Earlier in this channel (recalled" in prompt[-1]["content"]
        assert "Alice: my boat is called Marigold" in prompt[-1]["content"]

        await fake.delete_message(scene.general, int(boat["id"]))  # forgets the message and the answer to it
        await scene.ask("what is my boat called, do you know?")
        assert not any("Marigold" in m["content"] for m in last_prompt(scene))


async def test_edits_and_deletes_reach_the_history(scene: Scene):
    fake = scene.fake
    colour = await scene.say(f"{fake.bot.mention} my favourite colour is blue")
    await scene.reply_to(colour)
    pet = await scene.say(f"{fake.bot.mention} my pet is a hamster")
    await scene.reply_to(pet)

    await fake.edit_message(scene.general, int(colour["id"]), content=f"{fake.bot.mention} my favourite colour is green")
    await fake.delete_message(scene.general, int(pet["id"]))
    # Edits and deletes are applied in order with the channel's messages, before this is answered.
    await scene.ask("what do you know about me?")

    # Deleting a message forgets the answer written to it too; an edit changes only the text.
    assert await scene.turns() == [
        ("user", "my favourite colour is green"), ("assistant", "echo: Alice: my favourite colour is blue"),
        ("user", "what do you know about me?"), ("assistant", "echo: Alice: what do you know about me?")]
    assert not [r for r in fake.requests if r.method == "DELETE"]  # what people see stays: only memory changes
    assert [m["content"] for m in last_prompt(scene) if m["role"] == "user"] == [
        "Alice: my favourite colour is green", "Alice: what do you know about me?"]


async def test_a_question_deleted_before_its_answer_is_posted_is_not_answered(tmp_path):
    """The first question is deleted while its answer is being written, the second while it waits
    for that: neither is answered on Discord nor kept, and the channel goes on."""
    gate = Gate()
    async with running_bot(tmp_path) as scene:
        fake = scene.fake
        scene.model.reply = gate.wrap(lambda m: "echo: " + m[-1]["content"])
        first = await scene.say(f"{fake.bot.mention} first")
        await gate.wait_entered()
        second = await scene.say(f"{fake.bot.mention} second")
        await fake.delete_message(scene.general, int(second["id"]))
        await fake.delete_message(scene.general, int(first["id"]))
        # Gateway events are handled in order: once a later message elsewhere is seen, so are the deletes.
        random = fake.add_text_channel(scene.world.guild, "random")
        await until(lambda: scene.bot.get_channel(random.id))
        await scene.say(f"{fake.bot.mention} meanwhile", channel=random)
        await fake.wait_for_request("POST", f"/channels/{random.id}/typing")
        gate.opened.set()

        async def forgotten() -> bool:
            return await scene.turns() == []
        await until(forgotten)
        await until(lambda: scene.posted(random))
        assert scene.posted() == []
        assert [p[-1]["content"] for p in scene.model.prompts] == ["Alice: first", "Alice: meanwhile"]
        await scene.ask("still there?")
        assert await scene.turns() == [("user", "still there?"), ("assistant", "echo: Alice: still there?")]


async def test_an_edit_that_leaves_nothing_to_read_forgets_the_message_and_its_answer(scene: Scene):
    """Taking the words back (only the mention, or only an attachment, left) is a delete of them:
    the answer goes too, which quoted them (and which no later delete could reach any more)."""
    fake = scene.fake
    secret = await scene.say(f"{fake.bot.mention} my password is hunter2")
    await scene.reply_to(secret)
    await fake.edit_message(scene.general, int(secret["id"]), content=fake.bot.mention)
    await scene.ask("and now?")  # handled after the edit: the channel's events keep their order
    assert await scene.turns() == [("user", "and now?"), ("assistant", "echo: Alice: and now?")]
    assert not any("hunter2" in m["content"] for m in last_prompt(scene))


async def test_a_server_that_removed_the_bot_while_it_was_offline_is_forgotten_at_the_next_session(
        scene: Scene, caplog):
    """Discord sends no GUILD_DELETE afterwards for a removal the bot missed (offline, or between
    two sessions): at each new session it reads Discord's list of its servers instead."""
    fake, world = scene.fake, scene.world
    other = fake.add_guild("Other Guild")
    lounge = fake.add_text_channel(other, "lounge")
    fake.add_member(other, world.alice)
    await until(lambda: scene.bot.get_channel(lounge.id))
    await scene.ask("remember me", channel=lounge)
    await scene.ask("and me")
    # The terminal chat's history, in the same database: no Discord server, never in Discord's list.
    await scene.store.add_turn(channel_id=TERMINAL_CHANNEL_ID, guild_id=TERMINAL_GUILD_ID, role="user",
                               content="a chat in the terminal")
    other.bot_is_member = False  # kicked while the bot was not listening: no event reaches it
    with caplog.at_level(logging.INFO, logger="bot.discord_bot"):
        await fake.invalidate_session(resumable=False)  # a new session: READY again, without that server
        await until(lambda: fake.identify_count == 2)

        async def forgotten() -> bool:
            return await scene.turns(lounge) == []
        await until(forgotten)
    assert await scene.turns() == [("user", "and me"), ("assistant", "echo: Alice: and me")]  # still in this one
    assert [turn.content for turn in await scene.store.recent_turns(TERMINAL_CHANNEL_ID, 10)] == [
        "a chat in the terminal"]
    assert any(f"server {other.id} removed the bot while it was offline" in r.getMessage() for r in caplog.records)


async def test_a_list_of_servers_that_lacks_one_the_bot_is_connected_to_deletes_nothing(scene: Scene, caplog):
    """A broken answer (an empty list, a lost page) must not read as "removed from every server"."""
    await scene.ask("keep me")
    with caplog.at_level(logging.WARNING, logger="bot.discord_bot"):
        await scene.bot.events.servers_listed({scene.world.guild.id}, set(), [scene.world.guild.id])
    assert await scene.turns() == [("user", "keep me"), ("assistant", "echo: Alice: keep me")]
    assert any("no server's data was deleted" in r.getMessage() for r in caplog.records)


async def test_deleting_the_bots_answer_forgets_that_answer_and_keeps_the_question(scene: Scene):
    secret = await scene.say(f"{scene.fake.bot.mention} my password is hunter2")
    answer = await scene.reply_to(secret)
    await scene.ask("hello")
    await scene.fake.delete_message(scene.general, int(answer.response["id"]))
    await scene.ask("and now?")  # handled after the delete: the channel's events keep their order
    assert await scene.turns() == [
        ("user", "my password is hunter2"),
        ("user", "hello"), ("assistant", "echo: Alice: hello"),
        ("user", "and now?"), ("assistant", "echo: Alice: and now?")]


async def test_deleting_any_part_of_a_long_answer_forgets_it_and_bulk_deletes_forget_all(scene: Scene):
    scene.model.reply = lambda messages: "\n\n".join(f"Paragraph {n}: " + "words " * 60 for n in range(12))
    question = await scene.say(f"{scene.fake.bot.mention} tell me everything")
    await scene.reply_to(question)
    await until(lambda: len(scene.posted()) >= 2)
    assert len(await scene.turns()) == 2
    scene.model.reply = lambda messages: "echo: " + messages[-1]["content"]
    second_part = scene.posted()[-1].response["id"]
    await scene.fake.delete_message(scene.general, int(second_part))
    first = await scene.say(f"{scene.fake.bot.mention} one")
    await scene.reply_to(first)
    second = await scene.say(f"{scene.fake.bot.mention} two")
    await scene.reply_to(second)
    assert await scene.turns() == [
        ("user", "tell me everything"),
        ("user", "one"), ("assistant", "echo: Alice: one"), ("user", "two"), ("assistant", "echo: Alice: two")]
    # A moderator's bulk delete of a question and another answer: both exchanges are forgotten.
    await scene.fake.bulk_delete_messages(scene.general, [int(first["id"]), int(question["id"])])
    await scene.ask("three")
    assert await scene.turns() == [("user", "two"), ("assistant", "echo: Alice: two"),
                                   ("user", "three"), ("assistant", "echo: Alice: three")]


async def test_removal_from_a_server_deletes_its_data(scene: Scene):
    world = scene.world
    await scene.ask("remember me")
    await scene.command(world.mod, "persona set", options={"text": "You are terse."})
    dm = scene.fake.dm_channel(world.alice)
    await scene.reply_to(await scene.say("a private chat", channel=dm))

    await scene.fake.remove_bot_from_guild(world.guild)

    async def forgotten() -> bool:
        return await scene.turns() == [] and await scene.store.persona(world.guild.id) is None
    await until(forgotten)
    assert len(await scene.turns(dm)) == 2  # other conversations are untouched


async def test_removal_keeps_the_data_when_so_configured(tmp_path, caplog):
    async with running_bot(tmp_path, delete_data_on_guild_remove=False) as scene:
        await scene.ask("remember me")
        with caplog.at_level(logging.INFO, logger="bot.discord_bot"):
            await scene.fake.remove_bot_from_guild(scene.world.guild)
            await until(lambda: any("data is kept" in r.getMessage() for r in caplog.records))
        assert len(await scene.turns()) == 2


async def test_a_bulk_delete_reaches_the_history(scene: Scene):
    first, second = await scene.ask("one"), await scene.ask("two")
    user_ids = [str(r.json["message_reference"]["message_id"]) for r in (first, second)]
    await scene.fake.dispatch("MESSAGE_DELETE_BULK", {"ids": user_ids, "channel_id": str(scene.general.id),
                                                      "guild_id": str(scene.world.guild.id)})
    await scene.ask("three")
    assert [content for role, content in await scene.turns() if role == "user"] == ["three"]


# --------------------------------------------------------------------------- when Discord misbehaves


async def test_a_429_is_waited_out_and_the_answer_arrives(scene: Scene):
    scene.fake.fail_next("POST", TYPING, 429, retry_after=0.05)
    scene.fake.fail_next("POST", MESSAGES, 429, retry_after=0.05)
    reply = await scene.ask("still there?")
    assert reply.json["content"] == "echo: Alice: still there?"
    assert [r.status for r in scene.fake.requests_to("POST", MESSAGES)] == [429, 200]


async def test_a_429_without_cloudflares_via_header_is_waited_out_too(scene: Scene):
    """Discord documents a 429 by its body and headers; discord.py alone gives up on one without
    `Via` (it takes it for a Cloudflare ban): the answer, its preview and its edits are sent again."""
    scene.fake.fail_next("POST", MESSAGES, 429, retry_after=0.05, via=False)
    reply = await scene.ask("still there?")
    assert reply.json["content"] == "echo: Alice: still there?"
    assert [r.status for r in scene.fake.requests_to("POST", MESSAGES)] == [429, 200]
    assert await scene.turns() == [("user", "still there?"), ("assistant", "echo: Alice: still there?")]


async def test_a_failed_post_is_logged_forgotten_and_the_channel_carries_on(scene: Scene, caplog):
    scene.fake.fail_next("POST", MESSAGES, 503)  # discord.py does not retry a 503
    scene.fake.fail_next("POST", TYPING, 403, body={"message": "Missing Permissions", "code": 50013})
    with caplog.at_level(logging.INFO, logger="bot.discord_bot"):
        lost = await scene.say(f"{scene.fake.bot.mention} first")
        await scene.fake.wait_for_request("POST", MESSAGES, predicate=lambda r: r.status == 503)
        reply = await scene.ask("second")
    assert reply.json["content"] == "echo: Alice: second"
    assert any("event=post_failed" in r.getMessage() and "part=1/1" in r.getMessage() and "HTTP 503" in r.getMessage()
               for r in caplog.records)
    assert any("no typing indicator" in r.getMessage() for r in caplog.records)
    assert lost["id"] not in [str(r.json["message_reference"]["message_id"]) for r in scene.posted()]
    # The answer nobody saw is not remembered as said: the question stays, as asked.
    assert await scene.turns() == [("user", "first"), ("user", "second"), ("assistant", "echo: Alice: second")]


async def test_after_the_gateway_drops_the_bot_resumes_and_answers(scene: Scene):
    fake = scene.fake
    await scene.ask("before the drop")
    await fake.drop_gateway()
    message = await scene.say(f"{fake.bot.mention} while reconnecting")  # replayed on resume
    await fake.wait_for_resume()
    await scene.reply_to(message)
    after = await scene.ask("after the drop")
    assert after.json["content"] == "echo: Alice: after the drop"
    assert (fake.identify_count, fake.resume_count) == (1, 1)
    assert [content for _, content in await scene.turns()][::2] == [
        "before the drop", "while reconnecting", "after the drop"]


# --------------------------------------------------------------------------- running it


def test_run_without_a_token_says_how_to_get_one(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    environment["BOT_CONFIG"] = str(REPO_ROOT / "config.toml")
    result = subprocess.run([sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {messages.DISCORD_TOKEN_MISSING}"]
    assert result.stdout == ""


async def test_a_rejected_token_fails_before_the_model_loads(tmp_path):
    settings = dataclasses.replace(settings_for(tmp_path / "bot.db"), discord_token="not-the-token")
    async with FakeDiscord() as fake:
        with point_discord_py_at(fake):
            with pytest.raises(DiscordSetupError) as error:
                await run_on_discord(settings)  # would load the 3B model next, if the token were good
    assert str(error.value) == messages.DISCORD_TOKEN_REJECTED


async def test_a_refused_message_content_intent_is_one_line(tmp_path, caplog):
    # The portal's switch off: the application's flags lack both message-content bits.
    async with FakeDiscord(application_flags=payloads.APPLICATION_COMMAND_BADGE) as fake:
        settings = dataclasses.replace(settings_for(tmp_path / "bot.db"), discord_token=fake.token)
        worker = ModelWorker(ScriptedBackend())
        with point_discord_py_at(fake), caplog.at_level(logging.WARNING, logger="bot.discord_bot"):
            running = asyncio.create_task(run_on_discord(settings, model=worker))
            await fake.wait_until_connected(timeout=5)
            # Warned of at login, before the model loads (minutes, for a first download).
            assert [r.getMessage() for r in caplog.records] == [messages.DISCORD_INTENT_LOOKS_OFF]
            await fake.drop_gateway(4014)  # what Discord does when a privileged intent is not enabled
            with pytest.raises(DiscordSetupError) as error:
                await asyncio.wait_for(running, 5)
    assert str(error.value) == messages.DISCORD_INTENT_MISSING


async def test_an_unreachable_discord_is_one_line_too(tmp_path):
    settings = dataclasses.replace(settings_for(tmp_path / "bot.db"), discord_token="any")
    async with FakeDiscord() as fake:
        pass  # started and stopped: nothing listens at its address any more
    with point_discord_py_at(fake), pytest.raises(DiscordSetupError) as error:
        await run_on_discord(settings)
    assert str(error.value).startswith("Could not reach Discord (")


async def test_run_connects_and_chats(tmp_path):
    async with FakeDiscord() as fake:
        world = build_world(fake)
        settings = dataclasses.replace(settings_for(tmp_path / "bot.db"), discord_token=fake.token)
        worker = ModelWorker(ScriptedBackend())
        with point_discord_py_at(fake):
            running = asyncio.create_task(run_on_discord(settings, model=worker))
            try:
                await fake.wait_until_connected(timeout=5)
                message = await fake.send_message(world.general, world.alice, f"{fake.bot.mention} hi")
                reply = await fake.wait_for_request("POST", MESSAGES, predicate=replying_to(message), timeout=5)
            finally:
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await running
    assert reply.json["content"] == "echo: Alice: hi"
    identify = next(p for p in fake.gateway_received if p["op"] == 2)
    assert identify["d"]["intents"] == required_intents().value
    assert not required_intents().members  # the privileged members intent is not needed


# --------------------------------------------------------------------------- streaming


async def test_a_slow_answer_appears_early_and_grows_by_throttled_edits(tmp_path):
    long_answer = " ".join(f"word{i}" for i in range(60))
    async with running_bot(tmp_path, stream_edit_interval=0.1) as scene:
        scene.model.reply = lambda m: long_answer
        scene.model.word_delay_s = 0.02  # about 1.2 s of writing
        message = await scene.say(f"{scene.fake.bot.mention} tell me a long story")
        first = await scene.reply_to(message)
        assert first.json["content"].endswith("\u2026") and len(first.json["content"]) < len(long_answer)
        assert first.json["allowed_mentions"]["parse"] == []
        sent_id = first.response["id"]
        edit_path = f"/channels/{scene.general.id}/messages/{sent_id}"
        await scene.fake.wait_for_request("PATCH", edit_path, predicate=lambda r: r.json["content"] == long_answer)
        edits = [r.json["content"] for r in scene.fake.requests_to("PATCH", edit_path)]
        assert 2 <= len(edits) <= 20  # grew in steps, throttled: never one edit per word
        assert all(long_answer.startswith(e.removesuffix(" \u2026")) for e in edits)
        assert all(r.json["allowed_mentions"]["parse"] == [] for r in scene.fake.requests_to("PATCH", edit_path))
        assert len(scene.posted()) == 1  # one message, edited, not a new one per step
        assert (await scene.turns())[-1] == ("assistant", long_answer)


async def test_previews_of_answers_in_all_channels_together_keep_to_the_edit_budget(tmp_path):
    """Discord allows a bot 50 requests a second in all: previews share [discord]
    stream_edits_per_second, however many channels are answered. Finished answers do not wait."""
    long_answer = " ".join(f"word{i}" for i in range(40))
    async with running_bot(tmp_path, stream_edit_interval=0.05, stream_edits_per_second=5) as scene:
        scene.model.reply = lambda m: long_answer
        scene.model.word_delay_s = 0.02  # about 0.8 s of writing each: 16 previews a second wanted
        channels = [scene.general] + [scene.fake.add_text_channel(scene.world.guild, f"room-{n}") for n in (1, 2)]
        await scene.ask("warm-up")  # the new channels have reached the bot
        started = time.monotonic()
        for channel in channels:
            await scene.say(f"{scene.fake.bot.mention} tell me a story", channel=channel)
        for channel in channels:
            await scene.fake.wait_for_request(
                "PATCH", f"/channels/{channel.id}/messages/{{id}}", predicate=lambda r: r.json["content"] == long_answer,
                timeout=60)
        elapsed = time.monotonic() - started
    previews = [r for r in scene.fake.requests_to("POST", MESSAGES) + scene.fake.requests_to("PATCH", f"{MESSAGES}/{{id}}")
                if r.json and r.json.get("content", "").endswith(" \u2026")]
    # Every answer showed early (its first post), and never more than 5 previews a second in all:
    # a bound a slow machine only makes easier to keep.
    assert 3 <= len(previews) <= 5 * elapsed + 1


async def test_edit_echoes_and_link_previews_touch_neither_the_queue_nor_the_database(tmp_path, monkeypatch):
    long_answer = " ".join(f"word{i}" for i in range(60))
    async with running_bot(tmp_path, stream_edit_interval=0.1) as scene:
        edits_seen = []
        original = scene.service.message_edited

        async def recording(channel_id, message_id, text):
            edits_seen.append((message_id, text))
            await original(channel_id, message_id, text)

        monkeypatch.setattr(scene.service, "message_edited", recording)
        scene.model.reply = lambda m: long_answer
        scene.model.word_delay_s = 0.02
        question = await scene.say(f"{scene.fake.bot.mention} tell me a long story")
        answer = await scene.reply_to(question)
        edit_path = f"/channels/{scene.general.id}/messages/{answer.response['id']}"
        await scene.fake.wait_for_request("PATCH", edit_path, predicate=lambda r: r.json["content"] == long_answer)
        assert scene.fake.requests_to("PATCH", edit_path)  # the answer grew by edits, each echoed to the bot
        # A link preview added to the question: Discord sends the whole message again, text unchanged.
        await scene.fake.edit_message(scene.general, int(question["id"]),
                                      embeds=[{"type": "link", "url": "https://example.com/story"}])
        # A person's edit after them: once it reaches the service, the echoes before it were handled.
        await scene.fake.edit_message(scene.general, int(question["id"]), content=f"{scene.fake.bot.mention} a tale")
        await until(lambda: (int(question["id"]), "a tale") in edits_seen)
        assert edits_seen == [(int(question["id"]), "a tale")]
        assert (await scene.turns())[-1] == ("assistant", long_answer)


@pytest.mark.parametrize("denied, label", [(permissions.SEND_MESSAGES, "Send Messages"),
                                           (permissions.READ_MESSAGE_HISTORY, "Read Message History")])
async def test_where_the_bot_cannot_post_it_spends_no_model_time_and_stores_nothing(scene: Scene, caplog, denied,
                                                                                     label):
    quiet = scene.fake.add_text_channel(scene.world.guild, "announcements")
    rules = scene.fake.add_text_channel(scene.world.guild, "rules")
    for channel in (quiet, rules):
        scene.fake.set_channel_overwrite(channel, scene.fake.bot, deny=denied)
    await scene.ask("warm-up")  # the channel update has reached the bot before what follows
    with caplog.at_level(logging.WARNING, logger="bot.discord_bot"):
        await scene.say("read the rules, everyone", channel=rules)  # not to the bot: nothing to warn of
        for text in ("are you there?", "hello?"):
            await scene.say(f"{scene.fake.bot.mention} {text}", channel=quiet)
        await until(lambda: [r for r in caplog.records if "cannot_post" in r.getMessage()])
        scene.fake.set_channel_overwrite(quiet, scene.fake.bot)  # the permission comes back
        await scene.ask("now?", channel=quiet)
    assert await scene.turns(quiet) == [("user", "now?"), ("assistant", "echo: Alice: now?")]
    assert [prompt[-1]["content"] for prompt in scene.model.prompts] == ["Alice: warm-up", "Alice: now?"]
    warned = [r.getMessage() for r in caplog.records if "cannot_post" in r.getMessage()]
    assert len(warned) == 1 and str(quiet.id) in warned[0] and label in warned[0]  # once a channel
    assert "#announcements" in warned[0] and f"give the bot's role {label}" in warned[0]


async def test_a_quick_answer_is_posted_once_whole(tmp_path):
    async with running_bot(tmp_path, stream_edit_interval=1.0) as scene:  # the production default
        message = await scene.say(f"{scene.fake.bot.mention} hi")
        reply = await scene.reply_to(message)
        assert reply.json["content"] == "echo: Alice: hi"
        await scene.ask("and again")
        assert scene.fake.requests_to("PATCH", f"/channels/{scene.general.id}/messages/{{id}}") == []


async def test_typing_stops_once_the_answer_shows_and_is_not_sent_while_it_grows(tmp_path, monkeypatch):
    # Discord shows typing for 10 s after each signal, or until the bot posts; an edit does not
    # clear it. Sent while the answer grows by edits, it would linger after the answer is done.
    monkeypatch.setattr(posting, "TYPING_REFRESH_S", 0.05)  # discord.py's 5 s pace, faster
    held = threading.Event()
    async with running_bot(tmp_path, stream_edit_interval=0.1) as scene:
        scene.model.reply = lambda m: " ".join(f"word{i}" for i in range(20))
        scene.model.gate, scene.model.gate_after_words = held, 5  # still writing once it shows
        elsewhere = scene.fake.add_text_channel(scene.world.guild, "random")
        await until(lambda: scene.bot.get_channel(elsewhere.id))
        question = await scene.say(f"{scene.fake.bot.mention} tell me a story")
        shown = await scene.reply_to(question)
        # A clock: an indicator in another channel, refreshed at the same pace. Three of its
        # refreshes after the answer showed span three periods of this answer's indicator.
        async with posting.typing_in(scene.bot.get_channel(elsewhere.id)):
            await scene.fake.wait_for_request("POST", f"/channels/{elsewhere.id}/typing", count=4, timeout=30)
        held.set()
        edit_path = f"/channels/{scene.general.id}/messages/{shown.response['id']}"
        await scene.fake.wait_for_request("PATCH", edit_path, predicate=lambda r: "word19" in r.json["content"])
        requests = scene.fake.requests
        typing = [r for r in requests if r.matches("POST", f"/channels/{scene.general.id}/typing")]
        assert typing and all(requests.index(r) < requests.index(shown) for r in typing)


LONG_STORY = "\n\n".join(f"Paragraph {n}: " + "words " * 60 for n in range(8))  # two messages' worth


async def a_story_held_after_its_start(scene: Scene, held: threading.Event):
    """The bot asked for LONG_STORY, its model held after five words until `held` is set: the
    answer's start (its first post), which shows meanwhile."""
    scene.model.reply = lambda m: LONG_STORY
    scene.model.gate, scene.model.gate_after_words = held, 5
    return await scene.reply_to(await scene.say(f"{scene.fake.bot.mention} tell me a story"))


async def test_a_refused_final_edit_posts_the_answer_anew_and_takes_the_preview_down(tmp_path):
    """Discord refused the edit that turns the preview into the answer (a 503, which discord.py
    does not retry): the answer is posted as new messages, not left as a start ending in "…"."""
    held = threading.Event()
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake = scene.fake
        preview = await a_story_held_after_its_start(scene, held)
        fake.fail_next("PATCH", "/channels/{id}/messages/{id}", 503, count=10_000)  # every edit from now
        held.set()
        await fake.wait_for_request("DELETE", f"/channels/{scene.general.id}/messages/{preview.response['id']}")
        shown = [m["content"] for m in fake.state.channel_history(scene.general.id)[1:]]
        turns = await scene.turns()
        assert turns == [("user", "tell me a story"), ("assistant", LONG_STORY.strip())]
        assert shown == split_message(LONG_STORY.strip()) and len(shown) == 2
        # The new messages show the answer: deleting one forgets it.
        await fake.delete_message(scene.general, int(fake.state.channel_history(scene.general.id)[-1]["id"]))
        fake.faults.rules.clear()
        await scene.ask("still there?")
        assert (await scene.turns())[:2] == [("user", "tell me a story"), ("user", "still there?")]


async def test_an_answer_shown_only_in_part_is_kept_only_as_far_as_it_shows(tmp_path):
    """Its first message posted, the second refused (a 503, which discord.py does not retry): the
    channel shows the answer's first half, so that is what the bot remembers saying."""
    held = threading.Event()
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake = scene.fake
        await a_story_held_after_its_start(scene, held)
        fake.fail_next("POST", MESSAGES, 503)  # the answer's second message
        held.set()
        await fake.wait_for_request("POST", MESSAGES, predicate=lambda r: r.status == 503)
        await until(lambda: scene.service.observer.errors["post_failed"] == 1)
        first_half = split_message(LONG_STORY.strip())[0]
        assert [m["content"] for m in fake.state.channel_history(scene.general.id)[1:]] == [first_half]
        assert await scene.turns() == [("user", "tell me a story"), ("assistant", first_half)]
        answer = (await scene.store.recent_turns(scene.general.id, 1))[0]
        assert answer.cut_short == "post_failed"  # left out of training exports, as cut short


async def test_an_answer_deleted_while_it_is_written_is_left_deleted_and_forgotten(tmp_path, caplog):
    held = threading.Event()
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        scene.model.reply = lambda m: LONG_STORY if m[-1]["content"].endswith("story") else "I am."
        scene.model.gate, scene.model.gate_after_words = held, 5
        scene.model.word_delay_s = 0.002  # about a second of writing after the delete: many edit turns
        with caplog.at_level(logging.INFO, logger="bot"):
            question = await scene.say(f"{scene.fake.bot.mention} tell me a story")
            shown = await scene.reply_to(question)
            deleted_at = len(scene.fake.requests)
            await scene.fake.delete_message(scene.general, int(shown.response["id"]))
            held.set()
            await scene.ask("still there?")  # handled after that answer and the delete: the channel's order
        edit_path = f"/channels/{scene.general.id}/messages/{shown.response['id']}"
        edits = [r for r in scene.fake.requests[deleted_at:] if r.matches("PATCH", edit_path)]
        assert [r.status for r in edits] == [404]  # found gone once, then left alone
        assert len(scene.posted()) == 2  # the story's first message (deleted), and the next answer
        assert scene.service.observer.errors["post_failed"] == 0
        assert not [r for r in caplog.records if r.name.startswith("bot.discord") and r.levelno >= logging.WARNING]
        assert await scene.turns() == [("user", "tell me a story"), ("user", "still there?"),
                                       ("assistant", "I am.")]  # the deleted answer is forgotten


async def test_a_question_deleted_while_it_waits_for_the_model_never_reaches_it(tmp_path):
    """The model is busy with another channel's answer; the question waiting for it is deleted:
    the model is never asked (it was asked, and stopped at its first word, before)."""
    gate = Gate()
    async with running_bot(tmp_path) as scene:
        fake = scene.fake
        scene.model.reply = gate.wrap(lambda m: "echo: " + m[-1]["content"])
        random = fake.add_text_channel(scene.world.guild, "random")
        await until(lambda: scene.bot.get_channel(random.id))
        first = await scene.say(f"{fake.bot.mention} first")
        await gate.wait_entered()
        waiting = await scene.say(f"{fake.bot.mention} second", channel=random)
        await fake.wait_for_request("POST", f"/channels/{random.id}/typing")
        await fake.delete_message(random, int(waiting["id"]))
        # Gateway events are handled in order: once a later message elsewhere is seen, so is the delete.
        elsewhere = fake.add_text_channel(scene.world.guild, "elsewhere")
        await until(lambda: scene.bot.get_channel(elsewhere.id))
        gate.opened.set()
        await scene.reply_to(first)
        await scene.ask("third", channel=random)
        assert [p[-1]["content"] for p in scene.model.prompts] == ["Alice: first", "Alice: third"]
        assert [r.json["content"] for r in scene.posted(random)] == ["echo: Alice: third"]


async def test_a_question_deleted_while_its_answer_shows_stops_it_and_takes_the_start_down(tmp_path):
    """The answer's start is already showing when its question is deleted: writing stops, what
    showed of it is deleted (a half answer under a deleted question would stay for good), and
    nothing of either is kept."""
    held = threading.Event()
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake = scene.fake
        scene.model.reply = lambda m: LONG_STORY if m[-1]["content"].endswith("story") else "I am."
        scene.model.gate, scene.model.gate_after_words = held, 5
        scene.model.word_delay_s = 0.01  # once let go, some five seconds to the story's end
        question = await scene.say(f"{fake.bot.mention} tell me a story")
        shown = await scene.reply_to(question)  # the start, while the model is held
        await fake.delete_message(scene.general, int(question["id"]))
        # Gateway events are handled in order: once a later message elsewhere is seen, so is the delete.
        random = fake.add_text_channel(scene.world.guild, "random")
        await until(lambda: scene.bot.get_channel(random.id))
        await scene.say(f"{fake.bot.mention} meanwhile", channel=random)
        await fake.wait_for_request("POST", f"/channels/{random.id}/typing")
        held.set()
        await fake.wait_for_request("DELETE", f"/channels/{scene.general.id}/messages/{shown.response['id']}")
        assert fake.state.channel_history(scene.general.id) == []  # neither the question nor its answer's start
        await until(scene.model.stopped_early.is_set)  # not written to its end
        await scene.ask("still there?")
        await until(lambda: [m["content"] for m in fake.state.channel_history(scene.general.id)] == [
            f"{fake.bot.mention} still there?", "I am."])  # (shown at once, or its start first)
        assert await scene.turns() == [("user", "still there?"), ("assistant", "I am.")]


async def test_a_preview_past_a_messages_length_is_not_sent_again_unchanged(tmp_path):
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        scene.model.reply = lambda m: LONG_STORY
        scene.model.word_delay_s = 0.002  # about a second of writing: many edit turns past the first part
        question = await scene.say(f"{scene.fake.bot.mention} tell me a story")
        shown = await scene.reply_to(question)
        await scene.fake.wait_for_request("POST", MESSAGES, count=2)  # the second part: the answer is done
        edit_path = f"/channels/{scene.general.id}/messages/{shown.response['id']}"
        edits = [r.json["content"] for r in scene.fake.requests_to("PATCH", edit_path)]
        assert edits and all(before != after for before, after in zip(edits, edits[1:]))
        assert edits[-1] == split_message(LONG_STORY)[0]


async def test_auto_reply_switched_on_where_the_bot_cannot_post_says_so(scene: Scene):
    """The command's own answer needs no channel permission; the answers it promises do."""
    quiet = scene.fake.add_text_channel(scene.world.guild, "announcements")
    scene.fake.set_channel_overwrite(quiet, scene.fake.bot, deny=permissions.SEND_MESSAGES)
    answer = await scene.command(scene.world.mod, "autoreply on", channel=quiet, permissions=permissions.MANAGE_CHANNELS)
    assert answer["content"] == messages.AUTOREPLY_ON + " " + messages.CANNOT_ANSWER_HERE.format(
        permission="Send Messages", where=messages.IN_THIS_CHANNEL)
    assert (await scene.command(scene.world.mod, "autoreply on", permissions=permissions.MANAGE_CHANNELS)
            )["content"] == messages.AUTOREPLY_ON  # where it can post, nothing more


async def test_a_refused_preview_is_not_sent_again_every_interval(tmp_path):
    """Discord refusing the answer's start for good (403: the permission went mid-answer, a
    thread locked): before, each interval sent it again, about one refusal a second per answer,
    and refusals count towards the invalid requests that get a bot's address banned."""
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake = scene.fake
        scene.model.reply = lambda m: "word " * 300
        scene.model.word_delay_s = 0.002  # about a second of writing: some twenty preview turns
        fake.fail_next("POST", MESSAGES, 403, count=10_000, body={"message": "Missing Permissions", "code": 50013})
        await scene.say(f"{fake.bot.mention} talk a while")
        await until(lambda: scene.service.observer.errors["post_failed"] == 1)  # the answer itself, once
        refused = [r for r in fake.requests_to("POST", MESSAGES) if r.status == 403]
        assert len(refused) == 2  # the preview's first post, and the answer's own post


async def test_every_request_an_answer_makes_takes_a_turn_of_the_process_pace(tmp_path):
    """All of a process's answers keep under Discord's 50 requests a second together: 64 answers
    ending on the same step sent their final edits at once, past 100 in a second. So each
    request of an answer (typing, its preview's post and edits, its parts) waits for its turn."""
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        pace = scene.bot.events.request_pace
        turns = []
        take_turn = pace.turn

        async def counted_turn():
            turns.append(pace)
            await take_turn()

        pace.turn = counted_turn
        scene.model.reply = lambda m: LONG_STORY
        scene.model.word_delay_s = 0.002  # about a second of writing: previews on the way
        before = len(scene.fake.requests)
        await scene.say(f"{scene.fake.bot.mention} tell me a story")
        await scene.fake.wait_for_request("POST", MESSAGES, count=2)  # its second part: the answer is done
        made = [r for r in scene.fake.requests[before:] if r.path.startswith(f"/channels/{scene.general.id}/")
                and r.method in ("POST", "PATCH", "DELETE")]
        assert {r.method for r in made} == {"POST", "PATCH"} and len(made) >= 5  # typing, preview, edits, parts
        assert len(turns) == len(made)
