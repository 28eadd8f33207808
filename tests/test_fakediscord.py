"""End-to-end tests of the fake Discord server with the real discord.py client.

They double as executable documentation of ``tests/fakediscord``: each test
runs an unmodified ``discord.Client`` against the fake over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import time

import discord
import pytest
import yarl
from discord import app_commands

from tests.fakediscord import (
    CommandNotPermitted,
    FakeDiscord,
    World,
    check_discord_py_hooks,
    make_client,
    permissions,
    point_discord_py_at,
    running_client,
)
from tests.support.waiting import until

# Fixtures fake_discord and world (kept out of conftest.py on purpose).
pytest_plugins = ["tests.fakediscord.fixtures"]

MESSAGES = "/channels/{channel_id}/messages"


def collect(client: discord.Client, event: str) -> "asyncio.Queue":
    """Queue receiving every ``event`` the client dispatches (bot's own messages excluded)."""
    queue: asyncio.Queue = asyncio.Queue()

    async def listener(*args):
        item = args[0] if len(args) == 1 else args
        if isinstance(item, discord.Message) and item.author == client.user:
            return
        queue.put_nowait(item)

    # discord.Client (unlike commands.Bot) has one handler per event: the
    # attribute named on_<event>, which is what @client.event sets.
    setattr(client, f"on_{event}", listener)
    return queue


async def next_item(queue: asyncio.Queue, timeout: float = 2.0):
    return await asyncio.wait_for(queue.get(), timeout)


# --------------------------------------------------------------- plumbing


async def test_discord_py_still_has_the_attributes_we_patch():
    # If this fails, a discord.py upgrade moved Route.BASE / DEFAULT_GATEWAY
    # and tests/fakediscord/install.py needs updating.
    check_discord_py_hooks()
    assert isinstance(discord.http.Route.BASE, str)
    assert isinstance(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY, yarl.URL)

    original = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    async with FakeDiscord() as fake:
        with point_discord_py_at(fake):
            assert discord.http.Route("GET", "/users/@me").url == f"{fake.url}/api/v10/users/@me"
            assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == fake.gateway_url
    assert (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == original


async def test_login_ready_and_cache(world: World):
    fake = world.fake
    client = make_client()
    async with running_client(fake, client):
        assert client.user.id == fake.bot.id and client.user.bot
        assert client.application_id == fake.application_id

        guild = client.get_guild(world.guild.id)
        assert guild is not None and guild.name == "Test Guild"
        assert guild.chunked and guild.member_count == len(world.guild.members)

        channel = guild.get_channel(world.general.id)
        assert isinstance(channel, discord.TextChannel)
        assert (channel.name, channel.topic) == ("general", "General chat")

        alice = guild.get_member(world.alice.id)
        assert isinstance(alice, discord.Member) and alice.display_name == "Alice"
        mod = guild.get_member(world.mod.id)
        assert mod.guild_permissions.manage_guild and not alice.guild_permissions.manage_guild
        assert guild.me.guild_permissions.manage_messages  # the bot's managed role

    assert [(r.method, r.path) for r in fake.requests[:2]] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    assert fake.requests[0].headers["Authorization"] == f"Bot {fake.token}"
    assert fake.identify_count == 1
    identify = next(p for p in fake.gateway_received if p["op"] == 2)
    assert identify["d"]["intents"] == client.intents.value


async def test_heartbeats_are_acknowledged():
    async with FakeDiscord(heartbeat_interval_ms=20) as fake:
        client = make_client()
        async with running_client(fake, client):
            await until(lambda: client.latency != float("inf") and len(heartbeats_sent(fake)) >= 3)
            assert client.latency != float("inf")  # an ACK arrived
        heartbeats = heartbeats_sent(fake)
        assert len(heartbeats) >= 3 and fake.resume_count == 0  # no zombie reconnects


def heartbeats_sent(fake: FakeDiscord) -> list[dict]:
    return [p for p in fake.gateway_received if p["op"] == 1]


async def test_wrong_token_is_rejected(fake_discord: FakeDiscord):
    client = make_client()
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


# --------------------------------------------------------------- messages


async def test_message_reaches_bot_and_bot_replies(world: World):
    fake = world.fake
    client = make_client()
    inbox = collect(client, "message")
    async with running_client(fake, client):
        earlier = await fake.send_message(world.general, world.mod, "first!")
        await next_item(inbox)
        sent = await fake.send_message(
            world.general,
            world.alice,
            f"hey {fake.bot.mention}, see above",
            referenced_message_id=int(earlier["id"]),
            ping_reply=False,
        )

        message = await next_item(inbox)
        assert message.id == int(sent["id"])
        assert message.content == f"hey <@{fake.bot.id}>, see above"
        assert isinstance(message.author, discord.Member) and message.author.id == world.alice.id
        assert message.guild.id == world.guild.id
        assert [m.id for m in message.mentions] == [fake.bot.id]
        assert client.user.mentioned_in(message)
        assert message.type is discord.MessageType.reply
        assert message.reference.message_id == int(earlier["id"])
        assert message.reference.resolved.content == "first!"

        reply = await message.channel.send(
            "hello Alice", reference=message, allowed_mentions=discord.AllowedMentions.none()
        )

    request = fake.requests_to("POST", MESSAGES)[-1]
    assert request.status == 200
    assert request.json["content"] == "hello Alice"
    assert request.json["allowed_mentions"] == {"parse": []}
    assert int(request.json["message_reference"]["message_id"]) == message.id
    # The fake answered like Discord: a full message authored by the bot.
    assert reply.author.id == fake.bot.id and reply.reference.message_id == message.id
    assert reply.mentions == []  # AllowedMentions.none() -> nobody pinged
    stored = fake.messages[reply.id]
    assert stored["type"] == 19 and stored["referenced_message"]["id"] == str(message.id)


async def test_bot_sees_its_own_messages_via_gateway(world: World):
    fake = world.fake
    client = make_client()
    own: asyncio.Queue = asyncio.Queue()

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author == client.user:
            own.put_nowait(message)

    async with running_client(fake, client):
        sent = await client.get_channel(world.general.id).send("echo")
        echoed = await next_item(own)
    assert echoed.id == sent.id and echoed.content == "echo"


async def test_typing(world: World):
    client = make_client()
    async with running_client(world.fake, client):
        await client.get_channel(world.general.id).typing()
    [request] = world.fake.requests_to("POST", "/channels/{id}/typing")
    assert request.status == 204 and request.path == f"/channels/{world.general.id}/typing"


async def test_edit_delete_and_dm(world: World):
    fake = world.fake
    client = make_client()
    edits, deletes = collect(client, "message_edit"), collect(client, "message_delete")
    inbox = collect(client, "message")
    async with running_client(fake, client):
        sent = await fake.send_message(world.general, world.alice, "tpyo")
        await next_item(inbox)
        await fake.edit_message(world.general, int(sent["id"]), content="typo")
        before, after = await next_item(edits)
        assert (before.content, after.content) == ("tpyo", "typo") and after.edited_at is not None
        await fake.delete_message(world.general, int(sent["id"]))
        assert (await next_item(deletes)).id == int(sent["id"])

        dm = fake.dm_channel(world.alice)
        await fake.send_message(dm, world.alice, "psst")
        private = await next_item(inbox)
        assert isinstance(private.channel, discord.DMChannel) and private.guild is None
        assert private.author.id == world.alice.id and private.content == "psst"

        answer = await client.get_user(world.alice.id).send("hi in private")
    assert fake.requests_to("POST", "/users/@me/channels")[0].json == {"recipient_id": world.alice.id}
    assert answer.channel.id == dm.id and fake.messages[answer.id]["content"] == "hi in private"


async def test_file_upload_is_recorded_and_downloadable(world: World):
    fake = world.fake
    client = make_client()
    async with running_client(fake, client):
        channel = client.get_channel(world.general.id)
        sent = await channel.send("log", file=discord.File(io.BytesIO(b"line 1\n"), filename="log.txt"))
        assert await sent.attachments[0].read() == b"line 1\n"

    request = fake.requests_to("POST", MESSAGES)[0]
    assert request.json["content"] == "log"  # payload_json, parsed
    assert [(f.field, f.filename, f.data) for f in request.files] == [("files[0]", "log.txt", b"line 1\n")]
    assert sent.attachments[0].filename == "log.txt"


async def test_without_message_content_intent_content_is_blank(world: World):
    fake = world.fake
    intents = discord.Intents.default()  # no message_content
    client = make_client(intents=intents)
    inbox = collect(client, "message")
    async with running_client(fake, client):
        await fake.send_message(world.general, world.alice, "secret")
        await fake.send_message(world.general, world.alice, f"{fake.bot.mention} hi")
        assert (await next_item(inbox)).content == ""
        assert (await next_item(inbox)).content == f"<@{fake.bot.id}> hi"  # mentions are exempt


async def test_guild_removal(world: World):
    client = make_client()
    removed = collect(client, "guild_remove")
    async with running_client(world.fake, client):
        await world.fake.remove_bot_from_guild(world.guild)
        assert (await next_item(removed)).id == world.guild.id
        assert client.get_guild(world.guild.id) is None
        with pytest.raises(discord.Forbidden):
            await client.http.send_message(world.general.id, params=_text_params("still here?"))


async def test_webhook_messages_forwards_and_replies_without_their_target(world: World):
    fake = world.fake
    client = make_client()
    inbox = collect(client, "message")
    async with running_client(fake, client):
        feed = fake.add_webhook(world.general, "News feed")
        await fake.send_webhook_message(feed, "headline")
        posted = await next_item(inbox)
        assert (posted.webhook_id, posted.author.id, posted.author.name) == (feed.id, feed.id, "News feed")
        assert not posted.author.bot  # Discord documents no bot flag on a webhook's author

        source = await fake.send_message(world.general, world.mod, "the original")
        await next_item(inbox)
        await fake.forward_message(fake.dm_channel(world.alice), world.alice, source)
        forward = await next_item(inbox)
        assert forward.content == "" and forward.reference.type is discord.MessageReferenceType.forward
        assert forward.reference.message_id == int(source["id"])
        assert [snapshot.content for snapshot in forward.message_snapshots] == ["the original"]

        await fake.send_message(world.general, world.alice, "re", referenced_message_id=int(source["id"]),
                                with_referenced_message=False)
        reply = await next_item(inbox)
        assert reply.reference.message_id == int(source["id"]) and reply.reference.resolved is None


async def test_threads_and_deleted_channels(world: World):
    fake = world.fake
    earlier = fake.add_thread(world.general, "earlier", owner=world.alice)  # in GUILD_CREATE's threads
    client = make_client()
    inbox, created = collect(client, "message"), collect(client, "thread_create")
    threads_gone, channels_gone = collect(client, "raw_thread_delete"), collect(client, "guild_channel_delete")
    async with running_client(fake, client):
        guild = client.get_guild(world.guild.id)
        assert [thread.id for thread in guild.threads] == [earlier.id] and guild.get_channel(earlier.id) is None
        thread = fake.add_thread(world.general, "plans", owner=world.alice)
        made = await next_item(created)
        assert isinstance(made, discord.Thread) and (made.parent_id, made.owner_id) == (world.general.id, world.alice.id)

        await fake.send_message(thread, world.alice, "in the thread")
        message = await next_item(inbox)
        assert message.channel.id == thread.id and isinstance(message.channel, discord.Thread)
        await message.channel.send("answered in the thread")
        # A thread takes its channel's overwrites, and needs Send Messages in Threads.
        fake.set_channel_overwrite(world.general, fake.bot, deny=permissions.SEND_MESSAGES_IN_THREADS)
        with pytest.raises(discord.Forbidden):
            await client.http.send_message(thread.id, params=_text_params("and again?"))
        await client.http.send_message(world.general.id, params=_text_params("the channel itself is fine"))

        await fake.delete_channel(thread)
        assert (await next_item(threads_gone)).thread_id == thread.id
        await fake.delete_channel(world.general)
        assert (await next_item(channels_gone)).id == world.general.id
        assert (await next_item(threads_gone)).thread_id == earlier.id  # discord.py drops a channel's threads itself
    assert fake.channel_messages(thread) == [] and fake.channel_messages(world.general) == []
    assert fake.guilds[world.guild.id].channels == {}


async def test_unknown_endpoint_and_errors_are_discord_shaped(world: World):
    client = make_client()
    async with running_client(world.fake, client):
        with pytest.raises(discord.NotFound) as not_found:
            await client.http.request(discord.http.Route("GET", "/definitely/not/a/route"))
        with pytest.raises(discord.NotFound) as unknown_message:
            await client.get_channel(world.general.id).fetch_message(123)
        with pytest.raises(discord.HTTPException) as too_long:
            await client.get_channel(world.general.id).send("x" * 2001)
    assert not_found.value.status == 404
    assert unknown_message.value.code == 10008
    assert too_long.value.code == 50035
    assert world.fake.requests_to("GET", "/definitely/not/a/route")[0].status == 404


async def test_a_reply_needs_read_message_history_as_discord_documents(world: World):
    fake = world.fake
    fake.set_channel_overwrite(world.general, fake.bot, deny=permissions.READ_MESSAGE_HISTORY)
    client = make_client()
    async with running_client(fake, client):
        earlier = await fake.send_message(world.general, world.mod, "first!")
        channel = client.get_channel(world.general.id)
        with pytest.raises(discord.Forbidden) as refused:
            await channel.send("a reply", reference=channel.get_partial_message(int(earlier["id"])))
        plain = await channel.send("not a reply")  # Send Messages alone is enough for this
    assert refused.value.code == 50013 and plain.content == "not a reply"


# --------------------------------------------------------------- resilience


async def test_rate_limit_is_retried(world: World):
    fake = world.fake
    fake.fail_next("POST", MESSAGES, 429, retry_after=0.05)
    client = make_client()
    async with running_client(fake, client):
        started = time.monotonic()
        sent = await client.get_channel(world.general.id).send("eventually")
        elapsed = time.monotonic() - started
    attempts = fake.requests_to("POST", MESSAGES)
    assert [r.status for r in attempts] == [429, 200]
    assert attempts[0].response["retry_after"] == 0.05 and attempts[0].fault
    assert elapsed >= 0.05
    assert fake.messages[sent.id]["content"] == "eventually"


async def test_server_error_surfaces(world: World):
    world.fake.fail_next("POST", MESSAGES, 503)  # discord.py does not retry 503
    client = make_client()
    async with running_client(world.fake, client):
        with pytest.raises(discord.DiscordServerError):
            await client.get_channel(world.general.id).send("nope")
        await client.get_channel(world.general.id).send("works again")
    assert [r.status for r in world.fake.requests_to("POST", MESSAGES)] == [503, 200]


async def test_dropped_gateway_resumes_and_replays_missed_events(world: World):
    fake = world.fake
    client = make_client()
    inbox, resumed = collect(client, "message"), collect(client, "resumed")
    async with running_client(fake, client):
        await fake.drop_gateway()
        # Happens while the bot is (probably) still reconnecting: must be
        # replayed on RESUME, not lost.
        await fake.send_message(world.general, world.alice, "while you were away")
        await fake.wait_for_resume()
        await next_item(resumed)
        assert (await next_item(inbox)).content == "while you were away"

        await fake.send_message(world.general, world.alice, "after resume")
        assert (await next_item(inbox)).content == "after resume"

    assert (fake.identify_count, fake.resume_count) == (1, 1)
    resume = next(p for p in fake.gateway_received if p["op"] == 6)
    assert resume["d"]["session_id"] and resume["d"]["seq"] >= 1


async def test_events_while_offline_are_replayed_on_resume(world: World):
    fake = world.fake
    client = make_client()
    inbox = collect(client, "message")
    async with running_client(fake, client):
        with fake.hold_gateway():  # the bot cannot reconnect until we leave this block
            await fake.drop_gateway()
            await fake.send_message(world.general, world.alice, "missed 1")
            await fake.send_message(world.general, world.alice, "missed 2")
        await fake.wait_for_resume()
        assert [(await next_item(inbox)).content for _ in range(2)] == ["missed 1", "missed 2"]
    assert fake.replayed_count == 2 and fake.identify_count == 1


async def test_reconnect_opcode_and_invalid_session(world: World):
    fake = world.fake
    client = make_client()
    inbox = collect(client, "message")
    async with running_client(fake, client):
        await fake.request_reconnect()  # op 7: reconnect and resume
        await fake.wait_for_resume()
        await fake.invalidate_session(resumable=False)  # op 9: start over
        await fake.wait_for_identify(2)
        await fake.send_message(world.general, world.alice, "still there?")
        assert (await next_item(inbox)).content == "still there?"
    assert (fake.identify_count, fake.resume_count) == (2, 1)


# --------------------------------------------------------------- interactions


def _text_params(content: str):
    return discord.http.handle_message_parameters(content=content)


def build_tree(client: discord.Client, calls: list) -> app_commands.CommandTree:
    tree = app_commands.CommandTree(client)

    @tree.command(name="ping", description="Is the bot alive?")
    @app_commands.default_permissions(manage_guild=True)
    async def ping(interaction: discord.Interaction) -> None:
        calls.append(("ping", interaction))
        await interaction.response.send_message("pong", ephemeral=True)

    @tree.command(name="purge", description="Delete messages")
    @app_commands.checks.has_permissions(manage_messages=True)
    async def purge(interaction: discord.Interaction) -> None:
        calls.append(("purge", interaction))
        await interaction.response.send_message("purged")

    config = app_commands.Group(name="config", description="Settings")

    @config.command(name="set", description="Set a value")
    async def config_set(interaction: discord.Interaction, key: str, value: int, target: discord.Member) -> None:
        calls.append(("config set", interaction, key, value, target))
        await interaction.response.defer(thinking=True)
        await interaction.followup.send(f"{key}={value} for {target.display_name}")

    tree.add_command(config)

    @tree.command(name="hello", description="Say hello")
    async def hello(interaction: discord.Interaction) -> None:
        calls.append(("hello", interaction))
        await interaction.response.send_message(f"Hello {interaction.user.name}!")
        await interaction.edit_original_response(content=f"Hello again {interaction.user.name}!")

    @tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        calls.append(("error", interaction, error))
        await interaction.response.send_message("You can't do that.", ephemeral=True)

    return tree


async def test_slash_command_with_ephemeral_response(world: World):
    fake = world.fake
    client = make_client()
    calls: list = []
    tree = build_tree(client, calls)
    async with running_client(fake, client):
        synced = await tree.sync()
        assert {c.name for c in synced} == {"ping", "purge", "config", "hello"}
        assert fake.requests_to("PUT", "/applications/{app}/commands")[0].status == 200

        interaction = await fake.send_interaction(world.general, world.mod, "ping")
        callback = await fake.wait_for_interaction_response(interaction)

    assert callback == {"type": 4, "data": {"tts": False, "content": "pong", "flags": 64}}
    [(name, seen)] = calls
    ping_id = next(c.id for c in synced if c.name == "ping")
    assert name == "ping" and seen.command.name == "ping" and seen.data["id"] == str(ping_id)
    assert seen.permissions.manage_guild and seen.permissions.manage_messages
    assert seen.user.guild_permissions.manage_guild
    assert seen.app_permissions.send_messages
    registered_ping = next(c for c in fake.registered_commands() if c["name"] == "ping")
    assert registered_ping["default_member_permissions"] == str(permissions.MANAGE_GUILD)
    # Ephemeral responses exist, but never reach the channel via the Gateway.
    assert fake.original_response(interaction)["flags"] & 64


async def test_default_member_permissions_gate(world: World):
    fake = world.fake
    client = make_client()
    tree = build_tree(client, [])
    async with running_client(fake, client):
        await tree.sync()
        with pytest.raises(CommandNotPermitted):
            await fake.send_interaction(world.general, world.alice, "ping")


async def test_runtime_permission_check_denied_and_allowed(world: World):
    fake = world.fake
    client = make_client()
    calls: list = []
    build_tree(client, calls)  # not synced: commands are still found by name
    async with running_client(fake, client):
        denied = await fake.send_interaction(world.general, world.alice, "purge")
        denied_reply = await fake.wait_for_interaction_response(denied)
        allowed = await fake.send_interaction(world.general, world.mod, "purge")
        allowed_reply = await fake.wait_for_interaction_response(allowed)

    kind, interaction, error = calls[0]
    assert kind == "error" and isinstance(error, app_commands.MissingPermissions)
    assert not interaction.permissions.manage_messages
    assert denied_reply["data"]["flags"] == 64 and "can't" in denied_reply["data"]["content"]
    assert calls[1][0] == "purge" and calls[1][1].permissions.manage_messages
    assert allowed_reply["data"]["content"] == "purged"


async def test_subcommand_with_options_defer_and_followup(world: World):
    fake = world.fake
    client = make_client()
    calls: list = []
    tree = build_tree(client, calls)
    edits = collect(client, "message_edit")
    async with running_client(fake, client):
        await tree.sync()
        interaction = await fake.send_interaction(
            world.general, world.mod, "config set", options={"key": "volume", "value": 7, "target": world.alice}
        )
        # Deferring posts a visible "thinking" message; the followup fills it
        # in, which the bot sees as an edit of its own message.
        before, after = await next_item(edits)

    [(_, seen, key, value, target)] = calls
    assert (key, value) == ("volume", 7)
    assert isinstance(target, discord.Member) and target.id == world.alice.id
    option = interaction.payload["data"]["options"][0]
    assert (option["type"], option["name"]) == (1, "set")
    assert [o["type"] for o in option["options"]] == [3, 4, 6]  # types from the synced command
    assert interaction.callbacks[0]["type"] == 5  # deferred
    assert before.flags.loading and not after.flags.loading
    assert after.content == "volume=7 for Alice" == fake.original_response(interaction)["content"]
    followup = fake.requests_to("POST", "/webhooks/{app}/{token}")[0]
    assert followup.query["wait"] == "1"  # discord.py waits for the created message


async def test_slash_command_in_dm(world: World):
    fake = world.fake
    client = make_client()
    calls: list = []
    build_tree(client, calls)
    async with running_client(fake, client):
        interaction = await fake.send_interaction(fake.dm_channel(world.alice), world.alice, "hello")
        callback = await fake.wait_for_interaction_response(interaction)
        edit = await fake.wait_for_request("PATCH", "/webhooks/{app}/{token}/messages/@original")
    [(_, seen)] = calls
    assert seen.guild is None and isinstance(seen.channel, discord.DMChannel)
    assert isinstance(seen.user, discord.User) and seen.user.id == world.alice.id
    assert callback["data"]["content"] == "Hello alice!"
    assert fake.original_response(interaction)["content"] == "Hello again alice!"
    assert edit.json["content"] == "Hello again alice!"
    assert "flags" not in callback["data"] or not callback["data"]["flags"] & 64


def test_commands_breaking_discords_limits_are_refused_as_discord_refuses_them():
    from tests.fakediscord.command_limits import command_problems

    fine = {"name": "persona", "description": "The persona", "options": [
        {"type": 1, "name": "set", "description": "d" * 100, "options": [
            {"type": 3, "name": "text", "description": "Text", "required": True,
             "choices": [{"name": "n" * 100, "value": "v" * 100}]}]}]}
    assert command_problems(fine) == []
    long_description = {**fine, "options": [{**fine["options"][0], "description": "d" * 101}]}
    assert command_problems(long_description) == ["persona set: description is 101 characters (1-100)"]
    assert command_problems({"name": "Persona", "description": "x"})  # slash command names are lowercase
    assert command_problems({"name": "p", "description": "x", "options": [
        {"type": 3, "name": "a", "description": "x"}, {"type": 3, "name": "b", "description": "x", "required": True}]})
    assert command_problems({"name": "p", "description": "x" * 100, "options": [
        {"type": 3, "name": f"o{i}", "description": "x" * 100,
         "choices": [{"name": "c" * 100, "value": "v" * 100}] * 2} for i in range(10)]})  # over 4,000 in all
