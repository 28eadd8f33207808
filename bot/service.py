"""The conversation flow, written once and used by every front end (Discord, terminal).

    incoming message -> checks -> channel window + persona -> prompt within the
    token budget -> model worker -> cleaned reply -> stored -> split into parts

Turns in one channel are handled one at a time, in arrival order (a FIFO lock per
channel), so a message that arrives while the previous one is being answered
waits and then sees that answer in its history. Different channels run at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, defaultdict
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import date
from typing import AsyncIterator, Awaitable, Callable, Hashable, Protocol

from sqlalchemy.exc import SQLAlchemyError

from . import messages
from .config import GenerationSettings, Settings
from .core.cleaning import clean_reply, visible_so_far
from .core.cooldown import UserCooldowns, whole_seconds
from .core.prompt import ChatMessages, Prompt, PromptTooLong, build_prompt
from .core.split import DISCORD_MESSAGE_LIMIT, split_message
from .core.text import is_blank, with_text_repaired, without_lone_surrogates
from .core.types import IncomingMessage, Reply, Turn
from .core.validate import problem_with_message, problem_with_persona
from .export import ExportFilter, ExportSummary, export_lines, jsonl_bytes
from .llm.adapters import BASE, DEFAULT, Adapters
from .llm.worker import GenerationError, GenerationTimeout, ModelBusy
from .status import status_text
from .store import Store
from .telemetry import Load, Observer, ReplyTrace, load_of, log_event

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the flow needs of a model: the ModelWorker provides it."""

    name: str
    context_tokens: int

    def count_tokens(self, messages: ChatMessages) -> int: ...

    def stream(self, messages: ChatMessages, params: GenerationSettings, *,
               cache_key: Hashable | None = None, adapter: str | None = None) -> AsyncIterator[str]: ...

    @property
    def adapters(self) -> Adapters: ...

    def forget(self, cache_key: Hashable) -> None: ...

    def place_in_line(self) -> int: ...


# Called with the visible text so far while a reply is being written (adapters throttle it).
ProgressCallback = Callable[[str], Awaitable[None]]


class UserError(Exception):
    """A request that cannot be done as asked. str() is the sentence to show the user."""


@dataclass(frozen=True)
class Actor:
    """Who asked for a command (for the audit log)."""

    id: int
    name: str


class ChannelLocks:
    """One FIFO lock per channel, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: defaultdict[int, int] = defaultdict(int)

    @asynccontextmanager
    async def hold(self, channel_id: int) -> AsyncIterator[None]:
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        self._users[channel_id] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[channel_id] -= 1
            if not self._users[channel_id]:
                del self._users[channel_id], self._locks[channel_id]


@dataclass(frozen=True)
class Written:
    """How writing an answer went."""

    text: str  # cleaned; may be partial when it was stopped
    error: GenerationError | None
    stopped_by_reset: bool
    stopped_by_shutdown: bool = False


@dataclass(frozen=True)
class ChannelPrompt:
    prompt: Prompt
    first_turn_id: int | None  # row id of the oldest turn kept; None if that is the new turn
    adapter: str | None = None  # the LoRA adapter the server picked (None: the configured default)


class PromptStarts:
    """Per channel, the row id of the oldest turn in its last prompt (bounded, least recently used out)."""

    def __init__(self, capacity: int = 50_000):
        self._starts: OrderedDict[int, int] = OrderedDict()
        self._capacity = capacity

    def remember(self, channel_id: int, turn_id: int) -> None:
        self._starts[channel_id] = turn_id
        self._starts.move_to_end(channel_id)
        while len(self._starts) > self._capacity:
            self._starts.popitem(last=False)

    def index_in(self, channel_id: int, turns: list[Turn]) -> int | None:
        turn_id = self._starts.get(channel_id)
        return next((i for i, turn in enumerate(turns) if turn.id == turn_id), None) if turn_id else None

    def forget(self, channel_id: int) -> None:
        self._starts.pop(channel_id, None)


class ChatService:
    def __init__(self, store: Store, model: Model, settings: Settings,
                 part_limit: int = DISCORD_MESSAGE_LIMIT, observer: Observer | None = None):
        self.store = store
        self.model = model
        self.settings = settings
        self.part_limit = part_limit
        # Told how every reply went: a log line each, and metrics when they are on (bot/metrics.py).
        self.observer = observer or Observer()
        self._traces: set[ReplyTrace] = set()  # the replies in progress
        self.observer.watch(self)
        self._channels = ChannelLocks()
        self._prompt_starts = PromptStarts()
        self._gone_adapters: set[tuple[int, str]] = set()  # (server, adapter) picks no longer served, logged
        self._resets: dict[int, asyncio.Event] = {}  # set to stop the answer being written in a channel
        self._shutting_down = asyncio.Event()  # set once: every answer stops, no new one starts
        limits = settings.limits
        self._cooldowns = UserCooldowns(limits.user_messages_per_minute, limits.user_burst)

    # Chatting -----------------------------------------------------------

    async def reply(self, message: IncomingMessage, on_progress: ProgressCallback | None = None) -> Reply:
        """Answer one message: store it, ask the model, store and return the answer.

        `on_progress`, if given, is awaited with the visible text so far as the model writes.
        How it went is reported to the observer (one log line; metrics when they are on).
        """
        trace = ReplyTrace.of(message)
        self._traces.add(trace)
        try:
            # Repaired before anything stores, measures or tokenizes it.
            return await self._reply(with_text_repaired(message), on_progress, trace)
        except asyncio.CancelledError:
            trace.outcome = "cancelled"
            raise
        except Exception as error:
            trace.outcome, trace.reason, trace.error = "failed", "unexpected", type(error).__name__
            raise
        finally:
            self._traces.discard(trace)
            self.observer.reply_done(trace)

    async def _reply(self, message: IncomingMessage, on_progress: ProgressCallback | None,
                     trace: ReplyTrace) -> Reply:
        problem = problem_with_message(message.content, self.settings.history.max_message_chars)
        if problem:
            return trace.refusal("empty" if is_blank(message.content) else "too_long", problem)
        if self._shutting_down.is_set():
            return trace.refusal("restarting", messages.RESTARTING)
        wait = self._cooldowns.wait_before(message.author_id)
        if wait:
            return trace.refusal("rate_limited", messages.SLOW_DOWN.format(seconds=whole_seconds(wait)))
        async with self._channels.hold(message.channel_id):
            if self._shutting_down.is_set():  # it waited behind another answer while the bot began to stop
                return trace.refusal("restarting", messages.RESTARTING)
            try:
                return await self._answer(message, on_progress, trace)
            except SQLAlchemyError as error:
                # The class and the driver's own message (the statement's parameters are hidden, see
                # bot/store/database.py); the traceback in debug logging only.
                driver_said = getattr(error, "orig", None)
                trace.error = f"{type(error).__name__}: {driver_said}" if driver_said else type(error).__name__
                log.debug("database error while answering in channel %s", message.channel_id, exc_info=True)
                return trace.failure("storage", messages.STORAGE_FAILED)

    async def _answer(self, message: IncomingMessage, on_progress: ProgressCallback | None,
                      trace: ReplyTrace) -> Reply:
        user_turn = Turn(role="user", content=message.content, author_name=message.author_name,
                         author_id=message.author_id, message_id=message.message_id)
        try:
            planned = await self._prompt_with(message, user_turn)
        except PromptTooLong as error:
            return trace.refusal("prompt_too_long",
                                 messages.PROMPT_TOO_LONG.format(needed=error.needed, budget=error.budget))
        user_turn_id = await self.store.add_turn(
            channel_id=message.channel_id, guild_id=message.guild_id, role="user", content=message.content,
            author_id=message.author_id, author_name=message.author_name, message_id=message.message_id)
        self._prompt_starts.remember(message.channel_id, planned.first_turn_id or user_turn_id)
        written = await self._write(message.channel_id, planned.prompt.messages, on_progress, planned.adapter,
                                    trace=trace)
        if isinstance(written.error, ModelBusy):
            return trace.refusal("busy", messages.BUSY.format(waiting=written.error.waiting))
        if written.error and not written.text:
            trace.error = type(written.error).__name__
            kind = "timeout" if isinstance(written.error, GenerationTimeout) else "generation_failed"
            return trace.failure(kind, messages.GENERATION_FAILED.format(reason=str(written.error)))
        if written.stopped_by_shutdown and not written.text:
            return trace.refusal("restarting", messages.RESTARTING)
        if not written.text:
            return trace.failure("empty_answer", messages.NOTHING_TO_SAY)
        if written.stopped_by_reset:  # the history it belongs to is being wiped: keep nothing
            trace.cut_short = "reset"
            return Reply(parts=split_message(written.text, self.part_limit), ok=False,
                         notes=[messages.CUT_SHORT_RESET])
        await self.store.add_turn(channel_id=message.channel_id, guild_id=message.guild_id,
                                  role="assistant", content=written.text)
        dropped = trace.dropped_turns = planned.prompt.first_turn if planned.prompt.trimmed else 0
        notes = [messages.TURNS_DROPPED.format(count=dropped)] if dropped else []
        if written.error:  # stopped by its time limit after writing part of the answer
            notes.append(messages.CUT_SHORT_TIMEOUT)
            trace.cut_short = "timeout"
        if written.stopped_by_shutdown:  # kept, like a timed-out answer: it is posted as it stands
            notes.append(messages.CUT_SHORT_RESTART)
            trace.cut_short = "restart"
        return Reply(parts=split_message(written.text, self.part_limit), dropped_turns=dropped, notes=notes)

    async def _write(self, channel_id: int, prompt: ChatMessages, on_progress: ProgressCallback | None,
                     adapter: str | None = None, *, trace: ReplyTrace) -> "Written":
        """Stream the model's answer, passing progress on, until it ends, fails, or the channel is reset."""
        raw, error = "", None
        reset = self._resets.setdefault(channel_id, asyncio.Event())
        try:
            place = self.model.place_in_line()
            if place and on_progress is not None:  # shown only if the wait is long enough to notice
                await on_progress(messages.QUEUED.format(place=place))
            trace.asking_model()
            stream = self.model.stream(prompt, self.settings.generation, cache_key=channel_id, adapter=adapter)
            async with aclosing(stream):
                async for delta in stream:
                    raw += delta
                    trace.piece()
                    if reset.is_set() or self._shutting_down.is_set():
                        break
                    if on_progress is not None:
                        await on_progress(visible_so_far(raw))
        except GenerationError as failure:
            error = failure
            if not isinstance(failure, GenerationTimeout):
                raw = ""  # a failed model's half-answer is not worth keeping
        finally:
            self._resets.pop(channel_id, None)
            trace.model_finished(raw)
        return Written(clean_reply(raw), error, reset.is_set(), self._shutting_down.is_set())

    def stop_answering(self) -> None:
        """For a clean shutdown: answers being written stop at their next piece and keep what
        they have (with a note saying so); messages not yet started are told the bot restarts."""
        self._shutting_down.set()

    # Status -------------------------------------------------------------

    def load(self) -> Load:
        """The replies in progress now (safe to call from another thread, as metrics scrapes do)."""
        return load_of(list(self._traces))

    async def status(self, extra_lines: tuple[str, ...] = ()) -> str:
        """What an admin wants at a glance (/status): model, backend, queue, uptime, totals.
        Front ends add lines of their own (Discord: the shard, the number of servers)."""
        return status_text(self.model, self.load(), self.observer, extra_lines)

    async def _prompt_with(self, message: IncomingMessage, new_turn: Turn) -> "ChannelPrompt":
        """Build the prompt from where the channel's previous prompt started, so it only grows
        at the end until a limit forces a cut (see build_prompt): that keeps prefix caches valid."""
        max_turns = self.settings.history.max_turns
        turns = [*await self.store.recent_turns(message.channel_id, 2 * max_turns), new_turn]
        start = self._prompt_starts.index_in(message.channel_id, turns)
        if start is None:
            start = max(0, len(turns) - max_turns)
        persona = await self.persona_for(message.guild_id)
        budget = self.model.context_tokens - self.settings.generation.max_new_tokens
        # Rendering the chat template for the token count is CPU work: keep it off the loop.
        prompt = await asyncio.to_thread(build_prompt, persona, turns, self.model.count_tokens, budget,
                                         max_turns=max_turns, start=start)
        return ChannelPrompt(prompt, turns[prompt.first_turn].id, await self.adapter_for(message.guild_id))

    # Persona ------------------------------------------------------------

    async def persona_for(self, guild_id: int | None) -> str:
        return await persona_of(self.store, self.settings, guild_id)

    async def set_persona(self, guild_id: int, actor: Actor, text: str) -> str:
        problem = problem_with_persona(text, self.settings.history.max_persona_chars)
        if problem:
            raise UserError(problem)
        text = without_lone_surrogates(text.strip())
        await self.store.set_persona(guild_id, text, actor.id)
        await self.store.record_audit(action="persona.set", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, detail=f"{len(text)} characters")
        return messages.PERSONA_SET.format(length=len(text))

    async def show_persona(self, guild_id: int) -> str:
        custom = await self.store.persona(guild_id)
        shown = (messages.PERSONA_SHOW_CUSTOM.format(persona=custom) if custom
                 else messages.PERSONA_SHOW_DEFAULT.format(persona=self.settings.persona.default))
        return shown + await self._adapter_note(guild_id)

    async def reset_persona(self, guild_id: int, actor: Actor) -> str:
        await self.store.set_persona(guild_id, None, actor.id)
        await self.store.record_audit(action="persona.reset", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id)
        return messages.PERSONA_RESET

    # Adapters (fine-tuned LoRA weights, see bot/llm/adapters.py) ---------

    async def adapter_for(self, guild_id: int | None) -> str | None:
        """The adapter this server's replies run with: its pick, if the model still serves it, else
        None (the configured default). A pick that is gone (the operator removed that adapter) is
        logged for the operator, once; the server's members simply get the default."""
        adapters = self.model.adapters
        if guild_id is None or not adapters.any:  # nothing to pick from: no lookup at all
            return None
        picked = await self.store.adapter(guild_id)
        if picked is None or picked in adapters.choices():
            return picked
        if (guild_id, picked) not in self._gone_adapters:
            self._gone_adapters.add((guild_id, picked))
            log.warning('server %s picked the adapter "%s", which is no longer served; it gets the default (%s)',
                        guild_id, picked, adapters.label or "the base model")
        return None

    async def set_adapter(self, guild_id: int, actor: Actor, name: str) -> str:
        """A server admin picks one of the operator's adapters by name, "default" or "base". Its
        channels' next replies use it (prefix caches are never reused across adapters)."""
        choices = self.model.adapters.choices()
        name = without_lone_surrogates(name.strip())
        if not choices:
            raise UserError(messages.ADAPTERS_NONE)
        if name not in choices:
            listed = messages.ADAPTER_CHOOSE.format(names=", ".join(choices))
            raise UserError(messages.ADAPTER_UNKNOWN.format(name=name[:100]) + " " + listed if name else listed)
        await self.store.set_adapter(guild_id, None if name == DEFAULT else name)
        await self.store.record_audit(action="adapter.set", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, detail=name)
        return messages.ADAPTER_SET.format(adapter=self._describe_adapter(name))

    async def _adapter_note(self, guild_id: int) -> str:
        """For /persona show: which adapter is in use (nothing when the model serves none)."""
        if not self.model.adapters.any:
            return ""
        return "\n\n" + messages.ADAPTER_IN_USE.format(adapter=self._describe_adapter(
            await self.adapter_for(guild_id) or DEFAULT))

    def _describe_adapter(self, name: str) -> str:
        label = self.model.adapters.label
        if name == DEFAULT and label:
            return messages.ADAPTER_DEFAULT.format(name=label)
        if name in (DEFAULT, BASE):
            return messages.ADAPTER_NONE
        return messages.ADAPTER_NAMED.format(name=name)

    # Channel history and settings ---------------------------------------

    async def reset_channel(self, guild_id: int | None, channel_id: int, actor: Actor) -> str:
        """Forget a channel's history. An answer being written there is stopped (and not stored),
        and the wipe waits for it to end, so nothing lands in the history after it."""
        if channel_id in self._resets:
            self._resets[channel_id].set()
        async with self._channels.hold(channel_id):
            count = await self.store.clear_channel(channel_id)
            self._prompt_starts.forget(channel_id)
            self.model.forget(channel_id)
        await self.store.record_audit(action="history.reset", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id, detail=f"{count} turns")
        return messages.HISTORY_RESET.format(count=count)

    async def history(self, channel_id: int, limit: int | None = None) -> list[Turn]:
        return await self.store.recent_turns(channel_id, limit or self.settings.history.max_turns)

    async def forget_user(self, user_id: int, guild_id: int | None = None, channel_id: int | None = None) -> str:
        """Erase everything a person wrote (and their DM conversations); see Store.forget_author.
        The model's cached prompts of those channels go too, since they hold the person's words.
        The audit entry keeps the id and the count only: no name, no content."""
        erased = await self.store.forget_author(user_id)
        # Whatever they write from now on stays out of training-data exports too.
        await self.store.opt_out(user_id, reason="forget-me")
        for erased_channel in erased.channel_ids:
            self._prompt_starts.forget(erased_channel)
            self.model.forget(erased_channel)
        await self.store.record_audit(action="user.forget", actor_id=user_id, guild_id=guild_id,
                                      channel_id=channel_id, detail=f"{erased.count} turns")
        return messages.FORGOT_YOU.format(count=erased.count)

    # Training data -------------------------------------------------------

    async def export_server(self, guild_id: int, actor: Actor, *, channel_id: int | None = None,
                            since: date | None = None, until: date | None = None) -> "ServerExport":
        """A server's conversations as a JSONL training set (see bot.export), for its moderators.
        Authors are always pseudonymised here: the file leaves the bot."""
        wanted = ExportFilter(guild_id=guild_id, channel_id=channel_id, since=since, until=until)
        if since and until and since > until:
            raise UserError(messages.EXPORT_DATES_REVERSED.format(since=since, until=until))
        summary = ExportSummary()
        data = await jsonl_bytes(export_lines(self.store, self.persona_for, wanted, summary))
        await self.store.record_audit(action="data.export", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id, detail=summary.describe())
        log_event(log, "export", guild=guild_id, channel=channel_id, user=actor.id,
                  conversations=summary.conversations, turns=summary.turns)
        return ServerExport(data, summary)

    async def opt_out_of_export(self, user_id: int) -> str:
        await self.store.opt_out(user_id, reason="optout")
        return messages.OPTED_OUT

    async def opt_in_to_export(self, user_id: int) -> str:
        return messages.OPTED_IN if await self.store.opt_in(user_id) else messages.NOT_OPTED_OUT

    async def set_auto_reply(self, guild_id: int | None, channel_id: int, actor: Actor, enabled: bool) -> str:
        await self.store.set_auto_reply(channel_id, guild_id, enabled, actor.id)
        await self.store.record_audit(action="autoreply.on" if enabled else "autoreply.off", actor_id=actor.id,
                                      actor_name=actor.name, guild_id=guild_id, channel_id=channel_id)
        return messages.AUTOREPLY_ON if enabled else messages.AUTOREPLY_OFF


@dataclass(frozen=True)
class ServerExport:
    data: bytes  # JSONL, UTF-8
    summary: ExportSummary


async def persona_of(store: Store, settings: Settings, guild_id: int | None) -> str:
    """The server's own persona, else the configured default (always the default in DMs)."""
    custom = await store.persona(guild_id) if guild_id is not None else None
    return custom or settings.persona.default

