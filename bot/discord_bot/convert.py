"""discord.Message -> IncomingMessage: the one place that reads discord.py's message objects.

Nothing past this point sees a discord.py type; the reply decision and the
conversation flow work with the plain IncomingMessage.
"""

from __future__ import annotations

import discord

from ..core.text import without_lone_surrogates
from ..core.types import IncomingMessage
from .mentions import MentionNames, readable_text


def to_incoming(message: discord.Message, bot_user_id: int) -> IncomingMessage:
    return IncomingMessage(
        channel_id=message.channel.id,
        guild_id=message.guild.id if message.guild else None,
        author_id=message.author.id,
        author_name=without_lone_surrogates(message.author.display_name),
        content=readable_content(message, bot_user_id),
        message_id=message.id,
        author_is_bot=message.author.bot,
        is_system=message.is_system(),
        mentions_bot=mentions_user(message, bot_user_id),
        replies_to_bot=replies_to_user(message, bot_user_id),
        # Stickers are pictures too: the bot cannot read them either.
        has_attachments=bool(message.attachments or message.stickers),
    )


def readable_content(message: discord.Message, bot_user_id: int) -> str:
    """The text the model is given: mentions by name, the bot's own mention removed, and lone
    surrogates (which the API can send) replaced before anything stores or tokenizes them."""
    return without_lone_surrogates(readable_text(message.content, mention_names(message, bot_user_id)))


def mention_names(message: discord.Message, bot_user_id: int) -> MentionNames:
    guild = message.guild
    users = {user.id: user.display_name for user in message.mentions}
    if guild is None:
        return MentionNames(users=users, own=frozenset({bot_user_id}))
    roles = {role.id: role.name for role in map(guild.get_role, message.raw_role_mentions) if role}
    channels = {channel.id: channel.name
                for channel in map(guild.get_channel_or_thread, message.raw_channel_mentions) if channel}
    own = {bot_user_id} | ({guild.self_role.id} if guild.self_role else set())
    return MentionNames(users=users, roles=roles, channels=channels, own=frozenset(own))


def mentions_user(message: discord.Message, user_id: int) -> bool:
    """Mentioned by name, or through the bot's own role: people often pick the bot's role
    from the autocomplete list instead of the bot, and mean the same thing."""
    if any(user.id == user_id for user in message.mentions):
        return True
    own_role = message.guild.self_role if message.guild else None
    return own_role is not None and own_role.id in message.raw_role_mentions


def replies_to_user(message: discord.Message, user_id: int) -> bool:
    reference = message.reference
    if reference is None or reference.type is not discord.MessageReferenceType.reply:
        return False  # a forwarded message points at another message without answering it
    target = reference.resolved or reference.cached_message
    return isinstance(target, discord.Message) and target.author.id == user_id
