"""People's data: /forget-me, opting out of (and back into) training-data exports, and a
server's export for its moderators."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterable

from . import messages
from .core.types import IncomingMessage
from .export import ExportFilter, ExportSummary, export_lines, jsonl_bytes
from .server_settings import Actor, ServerSettings, UserError
from .store import Store
from .telemetry import log_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerExport:
    data: bytes  # JSONL, UTF-8
    summary: ExportSummary


class Privacy:
    def __init__(self, store: Store, servers: ServerSettings,
                 channels_erased: Callable[[Iterable[int]], None], forgetting: Callable[[int], None]):
        self.store = store
        self.servers = servers
        # Told which channels lost turns, so that what the conversation keeps of them goes too.
        self._channels_erased = channels_erased
        # Told first who is being forgotten, so that their messages still waiting are dropped.
        self._forgetting = forgetting

    async def forget_user(self, user_id: int, guild_id: int | None = None, channel_id: int | None = None) -> str:
        """Erase everything a person wrote (and their DM conversations); see Store.forget_author.
        The model's cached prompts of those channels go too, since they hold the person's words.
        The audit entry keeps the id and the count only: no name, no content."""
        self._forgetting(user_id)
        erased = await self.store.forget_author(user_id)
        # Whatever they write from now on stays out of training-data exports too.
        await self.store.opt_out(user_id, reason="forget-me")
        self._channels_erased(erased.channel_ids)
        await self.store.record_audit(action="user.forget", actor_id=user_id, guild_id=guild_id,
                                      channel_id=channel_id, detail=f"{erased.count} turns")
        return messages.counted(messages.FORGOT_YOU, erased.count)

    async def erase_late_turns(self, message: IncomingMessage, answer_id: int | None) -> None:
        """`message` was being answered when its data was to be erased: what was stored of it
        after the erasure goes too. Its own turn, and the answer `answer_id` where given. Only
        this message's: what its author wrote after asking is theirs to keep."""
        if message.message_id is not None:
            await self.store.delete_turn(message.message_id)
        if answer_id is not None:
            await self.store.forget_turn(answer_id)
        self._channels_erased([message.channel_id])

    async def opt_out_of_export(self, user_id: int) -> str:
        await self.store.opt_out(user_id, reason="optout")
        return messages.OPTED_OUT

    async def opt_in_to_export(self, user_id: int) -> str:
        return messages.OPTED_IN if await self.store.opt_in(user_id) else messages.NOT_OPTED_OUT

    async def export_server(self, guild_id: int, actor: Actor, *, channel_id: int | None = None,
                            since: date | None = None, until: date | None = None) -> ServerExport:
        """A server's conversations as a JSONL training set (see bot.export), for its moderators.
        Authors are always pseudonymised here: the file leaves the bot."""
        wanted = ExportFilter(guild_id=guild_id, channel_id=channel_id, since=since, until=until)
        if since and until and since > until:
            raise UserError(messages.EXPORT_DATES_REVERSED.format(since=since, until=until))
        summary = ExportSummary()
        data = await jsonl_bytes(export_lines(self.store, self.servers.persona_for, wanted, summary))
        await self.store.record_audit(action="data.export", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id, detail=summary.describe())
        log_event(log, "export", guild=guild_id, channel=channel_id, user=actor.id,
                  conversations=summary.conversations, turns=summary.turns)
        return ServerExport(data, summary)
