"""/status: on Discord for members with Manage Server (guarded twice, answered privately), in
the terminal chat for whoever sits at it, and naming each kind of backend."""

import io

import pytest

from bot import messages
from bot.llm.openai_backend import OpenAICompatibleModel
from bot.llm.remote_counting import RemoteTokenCounter
from bot.service import ChatService
from bot.terminal import TerminalChat
from tests.fakediscord import CommandNotPermitted, permissions
from tests.support.discord_scene import EPHEMERAL, running_bot


async def test_an_admin_sees_the_status_privately_and_a_member_cannot(tmp_path):
    async with running_bot(tmp_path) as scene:
        world = scene.world
        registered = {c["name"]: c for c in scene.fake.registered_commands()}["status"]
        assert registered["default_member_permissions"] == str(permissions.MANAGE_GUILD)
        assert registered["contexts"] == [0] and registered["dm_permission"] is False  # servers only
        await scene.ask("hello")

        # Discord hides it from members without Manage Server; where a server shows it to
        # everyone, the bot refuses all the same.
        with pytest.raises(CommandNotPermitted):
            await scene.fake.send_interaction(scene.general, world.alice, "status")
        refused = await scene.command(world.alice, "status", enforce_default_permissions=False)
        assert refused["content"] == messages.NEEDS_PERMISSION.format(permission="Manage Server")

        answer = await scene.command(world.mod, "status")
    assert answer["flags"] & EPHEMERAL
    lines = answer["content"].splitlines()
    assert lines[0] == "Model: scripted (4,096 tokens of context)"
    assert lines[1] == "Backend: local one-at-a-time worker"
    assert lines[2] == "Queue: 0 (0 waiting for their channel's turn, 0 waiting for the model, 0 being written)"
    assert lines[3].startswith("Uptime: ") and lines[3].endswith(" s")
    assert lines[4] == "Since start: 1 answered, 0 refused, 0 failed"
    assert "Shard: none (one connection for every server)" in lines and "Servers: 1" in lines


async def test_the_terminal_chat_has_status_too(scripted_service):
    stdout = io.StringIO()
    chat = TerminalChat(scripted_service, stdin=io.StringIO("hello\n" + "x" * 5000 + "\n/status\n/help\n"),
                        stdout=stdout, user_name="Ann")
    await chat.run()
    shown = stdout.getvalue()
    assert "Model: scripted (4,096 tokens of context)\nBackend: local one-at-a-time worker\n" in shown
    assert "Since start: 1 answered, 1 refused, 0 failed" in shown
    assert "/status               model, backend, queue, uptime" in shown  # in /help


async def test_a_remote_server_is_named_without_its_credentials(store, settings):
    model = OpenAICompatibleModel("http://bot:s3cret@models.internal:8000/v1?token=abc", "HuggingFaceTB/SmolLM3-3B",
                                  32768, RemoteTokenCounter(thinking=False))
    shown = await ChatService(store, model, settings).status()
    assert "Model: HuggingFaceTB/SmolLM3-3B (32,768 tokens of context)" in shown
    assert "Backend: OpenAI-compatible server at http://models.internal:8000/v1\n" in shown
    assert "s3cret" not in shown and "abc" not in shown
