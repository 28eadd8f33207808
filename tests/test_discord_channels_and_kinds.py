"""End to end, on the fake Discord: messages that are not a member's plain message (webhooks',
Discord's own, forwards, replies Discord sent without the message they answer), threads,
deleted channels and threads, and channels or servers discord.py has not cached.

The scene is tests/support/discord_scene.py. A message that must not be answered is followed
by one that must, in the same channel: the channel's events are handled in order, so once the
second is answered the first was seen (and no answer to it can come later).
"""

from __future__ import annotations

import logging
import threading


from bot import messages
from tests.fakediscord import FakeChannel, permissions
from tests.fakediscord import messages as fake_messages
from tests.support.discord_scene import Scene, running_bot
from tests.support.waiting import until


def last_prompt(scene: Scene) -> list[dict]:
    return scene.model.prompts[-1]


async def answered_once(scene: Scene, channel: FakeChannel, text: str) -> None:
    """A member's plain message to `channel` is answered, and it is the only answer there."""
    await scene.reply_to(await scene.say(text, channel=channel))
    assert await scene.turns(channel) == [("user", text), ("assistant", f"echo: Alice: {text}")]
    assert len(scene.posted(channel)) == 1


async def channel_manager(scene: Scene):
    manager = scene.fake.add_user("chanmod")
    scene.fake.add_member(scene.world.guild, manager, permissions=permissions.MANAGE_CHANNELS)
    return manager


# --------------------------------------------------------------------------- who wrote it


async def test_a_webhooks_messages_are_never_answered_even_with_auto_reply_on(scene: Scene):
    fake, world = scene.fake, scene.world
    await scene.store.set_auto_reply(world.general.id, world.guild.id, True, world.mod.id)
    feed = fake.add_webhook(world.general, "News feed")  # or a bridge relaying another bot's chat
    await fake.send_webhook_message(feed, "Markets are up today")
    await fake.send_webhook_message(feed, f"{fake.bot.mention} relayed: what do you think?")
    await answered_once(scene, world.general, "hello everyone")


async def test_discords_own_system_account_is_not_answered(scene: Scene):
    fake, world = scene.fake, scene.world
    notices = fake.add_user("Discord")
    notices.system = True
    await scene.say("Your account was flagged", channel=fake.dm_channel(notices), author=notices)
    await scene.reply_to(await scene.say("hi", channel=fake.dm_channel(world.alice)))
    assert scene.posted(fake.dm_channel(notices)) == [] and await scene.turns(fake.dm_channel(notices)) == []


async def test_a_forwarded_message_is_read_as_quoted_text(scene: Scene):
    fake, world = scene.fake, scene.world
    source = await scene.say("The meeting moved to Friday.")  # in #general, not for the bot
    forward = await fake.forward_message(fake.dm_channel(world.alice), world.alice, source)
    assert forward["content"] == "" and forward["message_snapshots"]
    await scene.reply_to(forward)
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: (forwarded) The meeting moved to Friday."}


async def test_a_forwards_mentions_are_read_by_name(scene: Scene):
    """A forward's snapshot carries only ids in its text: names come from the original message,
    which the bot saw here."""
    fake, world = scene.fake, scene.world
    await scene.store.set_auto_reply(world.general.id, world.guild.id, True, world.mod.id)
    source = await scene.say(f"Ask <@{world.mod.id}> in <#{world.general.id}>.", author=world.mod)
    await scene.reply_to(source)
    forward = await fake.forward_message(world.general, world.alice, source)
    await scene.reply_to(forward)
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: (forwarded) Ask @mod in #general."}


async def test_a_forward_of_a_message_the_bot_never_saw_reads_its_mentions_without_raw_ids(scene: Scene):
    """The original is not in discord.py's cache (posted before a restart, or where the bot cannot
    read) and, without the members intent, neither are the people it mentions: they read as
    Discord's client shows people it cannot resolve, never as raw ids; channels keep their names."""
    fake, world = scene.fake, scene.world
    source = fake_messages.build_message(fake.state, channel=world.general, author=world.mod,
                                         content=f"Ask <@{world.mod.id}> in <#{world.general.id}>.")
    fake.state.store_message(source)  # on Discord, but never sent to the bot
    await scene.store.set_auto_reply(world.general.id, world.guild.id, True, world.mod.id)
    forward = await fake.forward_message(world.general, world.alice, source)
    await scene.reply_to(forward)
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: (forwarded) Ask @unknown-user in #general."}


async def test_a_reply_to_an_answer_discord_left_out_and_the_cache_lacks_is_answered(scene: Scene):
    fake, world, store = scene.fake, scene.world, scene.store
    # Posted before a restart: Discord has them, the database knows the answer, discord.py's
    # cache has neither (they are stored on the fake without a MESSAGE_CREATE).
    answer = fake_messages.build_message(fake.state, channel=world.general, author=fake.bot, content="Noted.")
    someones = fake_messages.build_message(fake.state, channel=world.general, author=world.mod, content="hi all")
    for message in (answer, someones):
        fake.state.store_message(message)
    turn = await store.add_turn(channel_id=world.general.id, guild_id=world.guild.id, role="assistant",
                                content="Noted.")
    await store.record_answer_parts(turn, [int(answer["id"])])

    # Replies without a ping, and without referenced_message ("the backend did not attempt to fetch").
    await scene.say("not for the bot", referenced_message_id=int(someones["id"]), ping_reply=False,
                    with_referenced_message=False)
    follow_up = await scene.say("and another thing", referenced_message_id=int(answer["id"]), ping_reply=False,
                                with_referenced_message=False)
    await scene.reply_to(follow_up)
    assert len(scene.posted()) == 1
    assert last_prompt(scene)[-1] == {"role": "user", "content": "Alice: and another thing"}
    # A picture alone, in reply to that answer: told that only text is read, as any picture sent to the bot.
    picture = await scene.say("", referenced_message_id=int(answer["id"]), ping_reply=False,
                              with_referenced_message=False, attachments=[("cat.png", b"\x89PNG...", "image/png")])
    assert (await scene.reply_to(picture)).json["content"] == messages.ATTACHMENTS_ONLY


# --------------------------------------------------------------------------- threads


async def test_a_thread_takes_its_channels_auto_reply_and_persona_until_it_has_its_own(scene: Scene):
    fake, world = scene.fake, scene.world
    manager = await channel_manager(scene)
    await scene.command(manager, "autoreply on")
    await scene.command(manager, "persona set", options={"text": "You are a pirate.", "scope": "channel"})
    thread = fake.add_thread(world.general, "Weekend plans", owner=world.alice)

    await scene.reply_to(await scene.say("no mention needed here either", channel=thread))
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate."}
    # A thread is a conversation of its own.
    assert [role for role, _ in await scene.turns(thread)] == ["user", "assistant"]
    assert await scene.turns() == []

    # Set inside the thread, the thread's own settings win there.
    await scene.command(manager, "autoreply off", channel=thread)
    await scene.command(manager, "persona set", options={"text": "You are a cat.", "scope": "channel"},
                        channel=thread)
    await scene.say("not answered now", channel=thread)
    await scene.ask("but a mention is", channel=thread)
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a cat."}
    assert len(scene.posted(thread)) == 2
    assert await scene.store.channel_auto_reply(world.general.id) is True  # the channel's stay as they were

    # /persona show and reset in the thread say where its persona comes from once its own is gone.
    reset = await scene.command(manager, "persona reset", options={"scope": "channel"}, channel=thread)
    assert reset["content"] == messages.PERSONA_RESET_CHANNEL.format(applies=messages.APPLIES_THREADS_CHANNEL)
    shown = await scene.command(manager, "persona show", channel=thread)
    assert shown["content"].startswith(messages.PERSONA_SHOW_THREADS_CHANNEL.format(persona="You are a pirate."))
    again = await scene.command(manager, "persona reset", options={"scope": "channel"}, channel=thread)
    assert again["content"] == messages.PERSONA_CHANNEL_NONE.format(applies=messages.APPLIES_THREADS_CHANNEL)
    await scene.ask("arr?", channel=thread)
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate."}


async def test_a_thread_out_of_discord_pys_cache_still_follows_its_channel(scene: Scene):
    """An archived thread leaves discord.py's cache; a message there may come before the event
    that brings it back. Its channel is then read from the store's note: before, auto-reply and
    the persona fell back to the server's (the message went unanswered)."""
    fake, world = scene.fake, scene.world
    manager = await channel_manager(scene)
    await scene.command(manager, "autoreply on")
    await scene.command(manager, "persona set", options={"text": "You are a pirate.", "scope": "channel"})
    thread = fake.add_thread(world.general, "old talk", owner=world.alice)
    await scene.reply_to(await scene.say("first", channel=thread))  # kept: its channel is noted
    await fake.archive_thread(thread)
    await until(lambda: scene.bot.get_guild(world.guild.id).get_thread(thread.id) is None)
    await scene.reply_to(await scene.say("no mention needed, still", channel=thread))
    assert last_prompt(scene)[0] == {"role": "system", "content": "You are a pirate."}


async def _without_the_answer(scene: Scene) -> bool:
    return "echo: Alice: my cat is called Tiberius" not in [content for _, content in await scene.turns()]


async def test_a_thread_started_from_an_exchange_goes_on_from_it(scene: Scene):
    """People open a thread on an answer (or on their question) to go on about it: Discord gives
    the thread that message's id, and the exchange it was started from opens the thread's prompt."""
    fake, world = scene.fake, scene.world
    question = await scene.say(f"{fake.bot.mention} my cat is called Tiberius")
    answer = await scene.reply_to(question)
    exchange = [{"role": "user", "content": "Alice: my cat is called Tiberius"},
                {"role": "assistant", "content": "echo: Alice: my cat is called Tiberius"}]
    await scene.ask("and the weather?")  # said later in the channel: not part of the thread's start

    on_answer = fake.add_thread(world.general, "cats", owner=world.alice, from_message=int(answer.response["id"]))
    await scene.ask("what was my cat called?", channel=on_answer)
    assert last_prompt(scene)[1:] == [*exchange, {"role": "user", "content": "Alice: what was my cat called?"}]
    await scene.ask("and again?", channel=on_answer)
    assert last_prompt(scene)[1:3] == exchange  # it stays the thread's start
    assert [role for role, _ in await scene.turns(on_answer)] == ["user", "assistant"] * 2  # copied nowhere

    on_question = fake.add_thread(world.general, "more cats", owner=world.alice, from_message=int(question["id"]))
    await scene.ask("tell me more", channel=on_question)
    assert last_prompt(scene)[1:3] == exchange

    await fake.delete_message(world.general, int(answer.response["id"]))  # the answer is forgotten ...
    await until(lambda: _without_the_answer(scene))
    await scene.ask("still?", channel=on_answer)
    assert "Tiberius" not in last_prompt(scene)[1]["content"]  # ... so the thread no longer starts from it


async def test_in_a_thread_a_missing_permission_is_set_on_its_channel_and_a_lock_is_seen_before_answering(
        scene: Scene, caplog):
    """A thread has no permissions of its own: the fix names its channel. In a locked thread only
    Manage Threads may post (discord.py's permissions_for does not count the lock): an answer
    would be written for nothing and refused (160005)."""
    fake, world = scene.fake, scene.world
    thread = fake.add_thread(world.general, "side talk", owner=world.alice)
    await scene.ask("hello", channel=thread)
    fake.set_channel_overwrite(world.general, fake.bot, deny=permissions.SEND_MESSAGES_IN_THREADS)
    await scene.ask("warm-up")  # the overwrite has reached the bot
    with caplog.at_level(logging.WARNING, logger="bot.discord_bot"):
        await scene.say(f"{fake.bot.mention} still here?", channel=thread)
        await until(lambda: "cannot_post" in caplog.text)
    assert "thread side talk in #general" in caplog.text
    assert "give the bot's role Send Messages in Threads in #general" in caplog.text

    fake.set_channel_overwrite(world.general, fake.bot)
    await scene.ask("back", channel=thread)
    await fake.lock_thread(thread)
    await scene.ask("warm-up again")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot.discord_bot"):
        await scene.say(f"{fake.bot.mention} and now?", channel=thread)
        await until(lambda: "cannot_post" in caplog.text)
    assert "unlock the thread, or give the bot's role Manage Threads in #general" in caplog.text
    manager = await channel_manager(scene)
    answer = await scene.command(manager, "autoreply on", channel=thread)
    assert answer["content"] == messages.AUTOREPLY_ON + " " + messages.CANNOT_ANSWER_LOCKED
    assert [prompt[-1]["content"] for prompt in scene.model.prompts] == [
        "Alice: hello", "Alice: warm-up", "Alice: back", "Alice: warm-up again"]  # none where it cannot post
    assert not [r for r in fake.requests_to("POST", f"/channels/{thread.id}/messages") if r.status == 403]

    await fake.lock_thread(thread, locked=False)
    await scene.ask("unlocked", channel=thread)


# --------------------------------------------------------------------------- deleted channels


async def test_deleting_a_channel_forgets_its_history_its_threads_and_its_settings(scene: Scene, caplog):
    fake, world, store = scene.fake, scene.world, scene.store
    doomed = fake.add_text_channel(world.guild, "doomed")
    thread = fake.add_thread(doomed, "side talk", owner=world.alice)
    archived = fake.add_thread(doomed, "old talk", owner=world.alice)
    manager = await channel_manager(scene)
    await scene.command(manager, "autoreply on", channel=doomed)
    await scene.command(manager, "persona set", options={"text": "You are a cat.", "scope": "channel"},
                        channel=doomed)
    await scene.command(manager, "autoreply on", channel=archived)
    for channel in (doomed, thread, archived, world.general):
        await scene.ask("remember this", channel=channel)
    await fake.archive_thread(archived)  # out of discord.py's cache: no event will name it again
    await until(lambda: scene.bot.get_channel(archived.id) is None)

    with caplog.at_level(logging.INFO, logger="bot.discord_bot"):
        await fake.delete_channel(doomed)  # CHANNEL_DELETE only: no MESSAGE_DELETE, no THREAD_DELETE

        async def forgotten() -> bool:
            return (await scene.turns(doomed) == [] and await scene.turns(thread) == []
                    and await scene.turns(archived) == [] and await store.channel_auto_reply(archived.id) is None
                    and await store.channel_auto_reply(doomed.id) is None
                    and await store.channel_persona(doomed.id) is None)
        await until(forgotten)
        await until(lambda: any(f"channel {thread.id} of server" in r.getMessage() for r in caplog.records))
    assert any(f"channel {doomed.id} of server {world.guild.id} was deleted" in r.getMessage()
               and "6 stored message(s)" in r.getMessage() for r in caplog.records)  # its own and its threads'
    assert len(await scene.turns()) == 2  # other channels keep theirs


async def test_deleting_a_thread_forgets_its_history_and_settings_only(scene: Scene):
    fake, world, store = scene.fake, scene.world, scene.store
    thread = fake.add_thread(world.general, "side talk", owner=world.alice)
    await scene.command(await channel_manager(scene), "autoreply on", channel=thread)
    await scene.ask("remember this", channel=thread)
    await scene.ask("and this")

    await fake.delete_channel(thread)  # THREAD_DELETE

    async def forgotten() -> bool:
        return await scene.turns(thread) == [] and await store.channel_auto_reply(thread.id) is None
    await until(forgotten)
    assert len(await scene.turns()) == 2


async def shown_until_the_model_holds(scene: Scene, thread: FakeChannel) -> None:
    """The bot asked in `thread` for an answer its model holds after five words, shown that far
    (no edit of it is still on its way)."""
    scene.model.reply = lambda m: "word " * 200
    scene.model.gate, scene.model.gate_after_words = threading.Event(), 5
    await scene.reply_to(await scene.say(f"{scene.fake.bot.mention} talk to me", channel=thread))
    await until(lambda: scene.fake.state.channel_history(thread.id)[-1]["content"] == "word word word word word …")


async def test_a_thread_deleted_while_its_answer_is_written_gets_nothing_posted(tmp_path):
    """Before, the answer was stopped, then posted (with "cut short: the history was reset") into
    the thread that no longer existed: a 404, logged and counted as a failed post."""
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake, world = scene.fake, scene.world
        thread = fake.add_thread(world.general, "side talk", owner=world.alice)
        await shown_until_the_model_holds(scene, thread)
        posted_before = len(fake.requests)
        await fake.delete_channel(thread)
        await until(scene.model.stopped_early.is_set)  # the model was stopped ...
        scene.model.gate.set()
        await scene.ask("still there?")  # (the delete has been handled: later events are)
        to_thread = [r for r in fake.requests[posted_before:] if f"/channels/{thread.id}/" in r.path]
        assert to_thread == []  # ... and nothing was sent to the thread after it went
        assert scene.service.observer.errors["post_failed"] == 0
        assert await scene.turns(thread) == []


async def test_a_channel_deleted_while_an_answer_is_written_in_its_thread_gets_nothing_posted_there(tmp_path):
    """Discord deletes a channel's threads with it, without a word for them (discord.py tells of
    those in its cache; an archived one is not): the answer being written in one stops, is not
    stored, and is not posted into the thread that went."""
    async with running_bot(tmp_path, stream_edit_interval=0.05) as scene:
        fake, world = scene.fake, scene.world
        doomed = fake.add_text_channel(world.guild, "doomed")
        thread = fake.add_thread(doomed, "side talk", owner=world.alice)
        await shown_until_the_model_holds(scene, thread)
        await fake.archive_thread(thread)  # archived meanwhile: out of discord.py's cache
        await until(lambda: scene.bot.get_guild(world.guild.id).get_thread(thread.id) is None)
        posted_before = len(fake.requests)
        await fake.delete_channel(doomed)
        await until(scene.model.stopped_early.is_set)
        scene.model.gate.set()
        await scene.ask("still there?")
        to_thread = [r for r in fake.requests[posted_before:] if f"/channels/{thread.id}/" in r.path]
        assert to_thread == []
        assert scene.service.observer.errors["post_failed"] == 0
        assert await scene.turns(thread) == []


# --------------------------------------------------------------------------- what discord.py has not cached


async def test_a_channel_discord_py_does_not_know_is_answered(scene: Scene):
    fake, world = scene.fake, scene.world
    missed = fake.state.create_text_channel(world.guild, "missed")  # its CHANNEL_CREATE never reached the bot
    reply = await scene.ask("hello?", channel=missed)
    assert reply.json["content"] == "echo: Alice: hello?"


async def test_a_server_discord_py_does_not_know_is_not_taken_for_a_dm(scene: Scene):
    fake, world, store = scene.fake, scene.world, scene.store
    # The bot is in it, but its GUILD_CREATE never reached the bot.
    unseen = fake.state.create_guild("Unseen", owner=None, everyone_permissions=permissions.DEFAULT_EVERYONE,
                                     bot_permissions=permissions.DEFAULT_BOT)
    lobby = fake.state.create_text_channel(unseen, "lobby")
    fake.state.create_member(unseen, world.alice)

    await scene.say("just chatting among ourselves", channel=lobby)  # a DM would be answered
    await scene.ask("hello?", channel=lobby)
    assert len(scene.posted(lobby)) == 1
    stored = [(guild_id, turn.content) async for guild_id, _, turn in store.turns_in_order(channel_id=lobby.id)]
    assert stored == [(unseen.id, "hello?"), (unseen.id, "echo: Alice: hello?")]
