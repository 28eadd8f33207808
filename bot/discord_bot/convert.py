"""discord.Message -> IncomingMessage: the one place that reads discord.py's message objects.

Nothing past this point sees a discord.py type; the reply decision and the
conversation flow work with the plain IncomingMessage.
"""

from __future__ import annotations

from typing import Iterable

import discord

from ..core.text import is_blank, without_lone_surrogates
from ..core.types import IncomingMessage
from .mentions import MentionNames, readable_text

# Put before a forwarded message's text, so that the model reads it as quoted, not as the
# words of whoever passed it on.
FORWARDED = "(forwarded) "
# How much of the message replied to the model is shown (a reply is mostly about its gist).
QUOTED_CHARS = 300


def to_incoming(message: discord.Message, bot_user_id: int) -> IncomingMessage:
    return IncomingMessage(
        channel_id=message.channel.id,
        guild_id=guild_id_of(message),
        author_id=message.author.id,
        author_name=without_lone_surrogates(message.author.display_name),
        content=readable_content(message, bot_user_id),
        message_id=message.id,
        author_is_bot=is_automated(message),
        is_system=message.is_system(),
        mentions_bot=mentions_user(message, bot_user_id),
        replies_to_bot=replies_to_user(message, bot_user_id),
        replies_to_unknown=unseen_reply_target(message),
        attachment_names=tuple(attachment_names(message)),
        replied_text=quoted_reply(message, bot_user_id),
    )


def guild_id_of(message: discord.Message) -> int | None:
    """The server the message was posted in; None in a DM. message.guild is None for a server
    discord.py has not cached too: the channel (then a PartialMessageable) still has its id."""
    if message.guild is not None:
        return message.guild.id
    return getattr(message.channel, "guild_id", None)


def is_automated(message: discord.Message) -> bool:
    """Written by a bot, by a webhook (news feeds, bridges relaying other chats: Discord marks
    them with webhook_id and does not promise `bot` on their author) or by Discord itself.
    Answering any of them could start a loop."""
    return message.author.bot or message.author.system or message.webhook_id is not None


def readable_content(message: discord.Message, bot_user_id: int) -> str:
    """The text the model is given: mentions by name, the bot's own mention removed, and lone
    surrogates (which the API can send) replaced before anything stores or tokenizes them.
    A forward has no text of its own: the text it passes on is given, marked as forwarded."""
    names = mention_names(message, bot_user_id)
    text = readable_text(message.content, names)
    forwarded = forwarded_message(message)
    if not text and forwarded is not None:
        quoted = readable_text(forwarded.content, names)
        text = FORWARDED + quoted if quoted else ""
    return without_lone_surrogates(text)


def attachment_names(message: discord.Message) -> list[str]:
    """The files and stickers the message (or what it forwards) carries: the bot cannot open them
    (stickers are pictures too)."""
    forwarded = forwarded_message(message)
    shown = [part for part in (message, forwarded) if part is not None]
    names = [file.filename for part in shown for file in part.attachments]
    names += [f"sticker {sticker.name}" for part in shown for sticker in part.stickers]
    return [without_lone_surrogates(name) for name in names]


def forwarded_message(message: discord.Message) -> discord.MessageSnapshot | None:
    """What a forward passes on: Discord sends it as the first of message_snapshots."""
    reference = message.reference
    if reference is None or reference.type is not discord.MessageReferenceType.forward:
        return None
    return next(iter(message.message_snapshots), None)


def mention_names(message: discord.Message, bot_user_id: int) -> MentionNames:
    """Names for what the message, and what it forwards, mentions."""
    guild = message.guild
    forwarded = forwarded_message(message)
    users = {user.id: user.display_name for user in message.mentions}
    users.update(_forwarded_user_names(forwarded, guild, users.keys()))
    if guild is None:
        return MentionNames(users=users, own=frozenset({bot_user_id}))
    shown = [part for part in (message, forwarded) if part is not None]
    roles = {role.id: role.name for role in map(guild.get_role, _ids(shown, "raw_role_mentions")) if role}
    channels = {channel.id: channel.name
                for channel in map(guild.get_channel_or_thread, _ids(shown, "raw_channel_mentions")) if channel}
    own = {bot_user_id} | ({guild.self_role.id} if guild.self_role else set())
    return MentionNames(users=users, roles=roles, channels=channels, own=frozenset(own))


def _forwarded_user_names(forwarded: discord.MessageSnapshot | None, guild: discord.Guild | None,
                          known: Iterable[int]) -> dict[int, str]:
    """discord.py keeps no user objects for a forward's snapshot, only the ids in its text. The
    original message, if the bot saw it, has them; otherwise the server's cached members may
    (without the members intent, discord.py caches few: the rest read as unknown)."""
    if forwarded is None:
        return {}
    original = forwarded.cached_message
    names = {user.id: user.display_name for user in original.mentions} if original is not None else {}
    for user_id in set(forwarded.raw_mentions) - names.keys() - set(known):
        member = guild.get_member(user_id) if guild is not None else None
        if member is not None:
            names[user_id] = member.display_name
    return names


def _ids(parts: list, kind: str) -> set[int]:
    return {mentioned for part in parts for mentioned in getattr(part, kind)}


def mentions_user(message: discord.Message, user_id: int) -> bool:
    """Mentioned by name, or through the bot's own role: people often pick the bot's role
    from the autocomplete list instead of the bot, and mean the same thing."""
    if any(user.id == user_id for user in message.mentions):
        return True
    own_role = message.guild.self_role if message.guild else None
    return own_role is not None and own_role.id in message.raw_role_mentions


def replies_to_user(message: discord.Message, user_id: int) -> bool:
    reference = reply_reference(message)
    target = replied_to(reference) if reference else None
    return isinstance(target, discord.Message) and target.author.id == user_id


def unseen_reply_target(message: discord.Message) -> int | None:
    """The id of the message replied to, where discord.py cannot show it: Discord sent no
    referenced_message ("the backend did not attempt to fetch") and it is not in the cache."""
    reference = reply_reference(message)
    if reference is None or replied_to(reference) is not None:
        return None
    return reference.message_id


def quoted_reply(message: discord.Message, bot_user_id: int) -> str | None:
    """Who wrote the message this one replies to, and its text (cut to QUOTED_CHARS), when it
    is someone else's and Discord or the cache has it; the bot's own answers are in the history."""
    reference = reply_reference(message)
    target = replied_to(reference) if reference else None
    if not isinstance(target, discord.Message) or target.author.id == bot_user_id:
        return None  # not a reply, the bot's own message, deleted, or not at hand
    text = readable_content(target, bot_user_id)
    if is_blank(text):
        return None
    if len(text) > QUOTED_CHARS:
        text = text[:QUOTED_CHARS].rstrip() + "…"
    return f'{without_lone_surrogates(target.author.display_name)}: "{text}"'


def reply_reference(message: discord.Message) -> discord.MessageReference | None:
    reference = message.reference
    if reference is None or reference.type is not discord.MessageReferenceType.reply:
        return None  # a forwarded message points at another message without answering it
    return reference


def replied_to(reference: discord.MessageReference) -> discord.Message | discord.DeletedReferencedMessage | None:
    return reference.resolved or reference.cached_message
