"""What the bot does with Discord's events: answer messages, follow edits and deletes,
forget a server that removed it.

Order: Discord delivers a channel's events in order, and discord.py starts one
task per event, in that order. Each handler enters its channel's queue before
its first await, so a channel's messages are answered (and posted) one after
another in arrival order, and an edit or delete waits for the message it
concerns to be stored. Different channels never wait for each other.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import Iterator

import discord

from .. import messages
from ..core.decide import Action, Decision, is_addressed, should_answer
from ..config import DiscordSettings
from ..core.types import IncomingMessage
from ..service import ChannelLocks, ChatService
from .convert import readable_content, to_incoming
from .posting import StreamedReply, parts_to_post, post_reply, typing_in

log = logging.getLogger(__name__)


class DiscordEvents:
    def __init__(self, service: ChatService, settings: DiscordSettings):
        self.service = service
        self.store = service.store
        self.delete_data_on_guild_remove = settings.delete_data_on_guild_remove
        self.stream_edit_interval = settings.stream_edit_interval
        self._channels = ChannelLocks()
        self._handling = 0  # messages being answered (or waiting their turn to be)
        self._idle = asyncio.Event()
        self._idle.set()

    async def message(self, message: discord.Message, bot_user_id: int) -> None:
        incoming = to_incoming(message, bot_user_id)
        if should_answer(incoming, auto_reply=True).ignored:
            return  # ignored whatever the channel's settings: no need to queue
        with self._counted():
            await self._answer_in_turn(message, incoming)

    async def _answer_in_turn(self, message: discord.Message, incoming: IncomingMessage) -> None:
        async with self._channels.hold(incoming.channel_id):
            decision = await self._decide(incoming)
            posted = True
            if decision.action is Action.EXPLAIN_TEXT_ONLY:
                posted = await post_reply(message, [messages.ATTACHMENTS_ONLY])
            elif decision.action is Action.ANSWER:
                streamed = StreamedReply(message, self.stream_edit_interval)
                async with typing_in(message.channel):
                    reply = await self.service.reply(incoming, on_progress=streamed.update)
                posted = await streamed.finish(parts_to_post(reply))
            if not posted:  # logged by posting, with Discord's reason
                self.service.observer.error("post_failed")

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

    async def _decide(self, incoming: IncomingMessage) -> Decision:
        """The reply decision; the channel's auto-reply switch is read only when it matters."""
        auto_reply = not is_addressed(incoming) and await self.store.auto_reply(incoming.channel_id)
        decision = should_answer(incoming, auto_reply)
        log.debug("message %s in channel %s: %s (%s)", incoming.message_id, incoming.channel_id,
                  decision.action.value, decision.reason)
        return decision

    async def message_edited(self, event: discord.RawMessageUpdateEvent, bot_user_id: int) -> None:
        if "content" not in event.data:
            return  # an embed or flag update (a link preview appearing), not a new text
        text = readable_content(event.message, bot_user_id)
        async with self._channels.hold(event.channel_id):
            if text:
                await self.store.edit_turn(event.message_id, text)
            else:  # only attachments are left: there is no text for the history any more
                await self.store.delete_turn(event.message_id)

    async def messages_deleted(self, channel_id: int, message_ids: set[int]) -> None:
        async with self._channels.hold(channel_id):
            for message_id in message_ids:
                await self.store.delete_turn(message_id)

    async def guild_removed(self, guild: discord.Guild) -> None:
        if not self.delete_data_on_guild_remove:
            log.info("removed from server %s (%s); its data is kept, as configured", guild.name, guild.id)
            return
        count = await self.store.delete_guild_data(guild.id)
        log.info("removed from server %s (%s): deleted its settings and %d stored message(s)",
                 guild.name, guild.id, count)
