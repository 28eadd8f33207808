"""What the bot does with Discord's events: answer messages, follow edits and deletes,
forget a server that removed it.

Order: Discord delivers a channel's events in order, and discord.py starts one
task per event, in that order. Each handler calls the service before its first
await, and the service queues the channel's events in arrival order (bot/channels.py):
a channel's messages are answered and posted one after another, and an edit or delete
waits for the message it concerns to be stored. Different channels never wait for
each other.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, contextmanager, nullcontext
from typing import AsyncIterator, Iterable, Iterator

import discord

from ..config import DiscordSettings
from ..core.decide import could_be_answered, is_addressed
from ..core.types import Delivered, Reply
from ..service import ChatService
from ..telemetry import log_event
from .convert import readable_content, to_incoming
from .posting import EditBudget, StreamedReply, paced, parts_to_post, post_reply, typing_in

log = logging.getLogger(__name__)


def missing_permission(channel) -> str | None:
    """The permission the bot lacks to answer in `channel` (None: it has what it needs). An answer
    is posted as a reply, which Discord allows only with Read Message History."""
    if isinstance(channel, discord.PartialMessageable):
        # A channel discord.py has not cached: it knows no overwrites, so its permissions_for
        # says "none". Nothing to check here; a 403 when posting is handled like any other.
        return None
    guild = getattr(channel, "guild", None)
    if guild is None or guild.me is None:  # a DM, or the bot's own member not known yet
        return None
    return lacking_to_answer(channel.permissions_for(guild.me), channel)


def lacking_to_answer(granted: discord.Permissions, channel) -> str | None:
    """The first permission, of those answering in `channel` needs, that `granted` lacks (None:
    none). In a locked thread only members with Manage Threads may post (discord.py's
    permissions_for does not count the lock)."""
    in_thread = isinstance(channel, discord.Thread)
    for name, label in (("view_channel", "View Channel"),
                        ("send_messages_in_threads" if in_thread else "send_messages",
                         "Send Messages in Threads" if in_thread else "Send Messages"),
                        ("read_message_history", "Read Message History")):
        if not getattr(granted, name):
            return label
    if in_thread and channel.locked and not granted.manage_threads:
        return LOCKED_THREAD
    return None


LOCKED_THREAD = "Manage Threads (the thread is locked)"


def where_to_fix(channel, missing: str) -> tuple[str, str]:
    """Where the bot cannot answer, and what the operator can do, for the log. A thread has no
    permissions of its own: its channel's apply."""
    guild = channel.guild
    parent = getattr(channel, "parent", None)
    if not isinstance(channel, discord.Thread) or parent is None:
        return (f"#{channel.name} of {guild.name}",
                f"give the bot's role {missing} in that channel (Edit Channel > Permissions)")
    where = f"thread {channel.name} in #{parent.name} of {guild.name}"
    if missing == LOCKED_THREAD:
        return where, f"unlock the thread, or give the bot's role Manage Threads in #{parent.name}"
    return where, (f"give the bot's role {missing} in #{parent.name} (Edit Channel > Permissions): "
                   "threads take their channel's permissions")


class DiscordDelivery:
    """One answer on Discord: it grows by throttled edits, with the typing indicator on while
    the model writes until the answer's first message is posted, and ends as replies of
    Discord's size (the service's Delivery)."""

    def __init__(self, trigger: discord.Message, stream_edit_interval: float, budget: EditBudget | None = None):
        self.trigger = trigger
        self.stream_edit_interval = stream_edit_interval
        self.budget = budget
        self.streamed: StreamedReply | None = None

    async def progress(self, text: str) -> None:
        if self.streamed is not None:
            await self.streamed.update(text)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with typing_in(self.trigger.channel) as typing:
            # Made here, not on arrival: the edit throttle counts from when the model starts, after
            # any wait behind the channel's earlier messages. Once the answer shows, typing would
            # only linger (edits do not clear it): its first message stops it.
            self.streamed = StreamedReply(self.trigger, self.stream_edit_interval, before_first_post=typing.stop,
                                          budget=self.budget)
            yield

    async def deliver(self, reply: Reply) -> Delivered:
        parts = parts_to_post(reply)
        return await self.streamed.finish(parts) if self.streamed else await post_reply(self.trigger, parts)

    async def withdraw(self) -> None:
        if self.streamed is not None:
            await self.streamed.withdraw()


class DiscordEvents:
    def __init__(self, service: ChatService, settings: DiscordSettings, previews_per_second: float | None = None,
                 requests_per_second: float | None = None):
        self.service = service
        self.delete_data_on_guild_remove = settings.delete_data_on_guild_remove
        self.stream_edit_interval = settings.stream_edit_interval
        # This process's answers together (its share of the bot's budget: see previews_per_second).
        self.edit_budget = EditBudget(previews_per_second or settings.stream_edits_per_second)
        # Every request of this process's answers (see posting.paced); None: not paced.
        self.request_pace = EditBudget(requests_per_second) if requests_per_second else None
        self._cannot_post: set[int] = set()  # channels where a missing permission was logged
        self._handling = 0  # messages being answered (or waiting their turn to be)
        self._idle = asyncio.Event()
        self._idle.set()

    async def message(self, message: discord.Message, bot_user_id: int) -> None:
        incoming = to_incoming(message, bot_user_id)
        if not could_be_answered(incoming):
            return  # ignored whatever the channel's settings: no need to queue
        # Logged only for a message spoken to the bot: in a read-only channel (rules, news) every
        # message would otherwise warn of a permission nobody needs there.
        if not self._can_answer_in(message.channel, say_why=is_addressed(incoming)):
            return  # no model time, nothing stored: the answer could not be posted
        with self._counted(), paced(self.request_pace) if self.request_pace else nullcontext():
            await self.service.respond(incoming, DiscordDelivery(message, self.stream_edit_interval, self.edit_budget))

    def _can_answer_in(self, channel, *, say_why: bool) -> bool:
        """Whether the bot may post its answer here (Discord would refuse it: 403). With `say_why`,
        logged once a channel, until the permission comes back, with what the operator can do; a
        403 that comes anyway is handled as before."""
        missing = missing_permission(channel)
        if missing is None:
            self._cannot_post.discard(channel.id)
            return True
        if say_why and channel.id not in self._cannot_post:
            self._cannot_post.add(channel.id)
            where, fix = where_to_fix(channel, missing)
            log_event(log, "cannot_post", logging.WARNING, guild=channel.guild.id, channel=channel.id,
                      where=where, missing=missing, fix=fix)
        return False

    @contextmanager
    def _counted(self) -> Iterator[None]:
        self._handling += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._handling -= 1
            if not self._handling:
                self._idle.set()

    async def wait_until_answered(self, timeout: float) -> bool:
        """For a clean shutdown: until every message taken in has had its answer posted.
        False if some were still going after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d message(s) still being answered at shutdown; closing anyway", self._handling)
            return False
        return True

    async def message_edited(self, event: discord.RawMessageUpdateEvent, bot_user_id: int) -> None:
        if "content" not in event.data:
            return  # an embed or flag update (a link preview appearing), not a new text
        if event.message.author.id == bot_user_id:
            return  # the echo of the bot's own edit (a streamed answer growing): its memory has the answer
        text = readable_content(event.message, bot_user_id)
        before = event.cached_message
        if before is not None and readable_content(before, bot_user_id) == text:
            # Discord sends every update whole now (a link preview, a pin): "content" is always
            # there. Text as before: nothing to change, no need to wait for the channel's turn.
            return
        await self.service.message_edited(event.channel_id, event.message_id, text)

    async def messages_deleted(self, channel_id: int, message_ids: set[int]) -> None:
        await self.service.messages_deleted(channel_id, message_ids)

    async def servers_listed(self, candidates: set[int], member_of: set[int], connected_to: Iterable[int]) -> None:
        """Discord listed the bot's servers (`member_of`): the data of each of `candidates` (servers
        something is stored for) not in it goes, as on removal. A list that lacks a server the bot
        is connected to is not trusted with that."""
        if not self.delete_data_on_guild_remove:
            return
        left_out = set(connected_to) - member_of
        if left_out:
            log.warning("Discord's list of the bot's servers lacks %d it is connected to; no server's data "
                        "was deleted for not being in it", len(left_out))
            return
        for guild_id, count in (await self.service.forget_servers(candidates - member_of)).items():
            log.info("server %s removed the bot while it was offline: deleted its settings and %d stored "
                     "message(s)", guild_id, count)

    async def guild_removed(self, guild: discord.Guild) -> None:
        if not self.delete_data_on_guild_remove:
            log.info("removed from server %s (%s); its data is kept, as configured", guild.name, guild.id)
            return
        count = await self.service.forget_server(guild.id)
        log.info("removed from server %s (%s): deleted its settings and %d stored message(s)",
                 guild.name, guild.id, count)
