"""The runtime permission guard of the slash commands (the fake Discord covers the rest)."""

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
