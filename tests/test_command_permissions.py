"""Slash commands' runtime guard and autocomplete, on their own (the fake Discord covers the rest)."""

from types import SimpleNamespace

import discord
import pytest

from bot.discord_bot.commands import Refused, check_permitted


def interaction(permissions: discord.Permissions, guild_id: int | None = 1):
    return SimpleNamespace(guild_id=guild_id, permissions=permissions)


def test_administrator_alone_counts_as_every_permission():
    """Discord documents Administrator as implying every permission; a member's bits may say only that."""
    assert check_permitted(interaction(discord.Permissions(administrator=True)), "manage_guild", server_only=True)
    with pytest.raises(Refused, match="Manage Server"):
        check_permitted(interaction(discord.Permissions(manage_messages=True)), "manage_guild", server_only=True)


def test_adapter_choices_leave_out_names_discord_would_refuse():
    from bot.discord_bot.commands import adapter_choices

    names = ["default", "base", "poet", "p" * 101]
    service = SimpleNamespace(servers=SimpleNamespace(adapter_choices=lambda: names))
    assert [choice.value for choice in adapter_choices(service, "")] == ["default", "base", "poet"]
    assert [choice.value for choice in adapter_choices(service, "PO")] == ["poet"]
