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
from typing import AsyncIterator, Awaitable, Callable, Hashable, Protocol

from sqlalchemy.exc import SQLAlchemyError

from . import messages
from .config import GenerationSettings, Settings
from .core.cleaning import clean_reply, visible_so_far
from .core.cooldown import UserCooldowns, whole_seconds
from .core.prompt import ChatMessages, Prompt, PromptTooLong, build_prompt
from .core.split import DISCORD_MESSAGE_LIMIT, split_message
from .core.text import with_text_repaired, without_lone_surrogates
from .core.types import IncomingMessage, Reply, Turn
from .core.validate import problem_with_message, problem_with_persona
from .llm.worker import GenerationError, GenerationTimeout, ModelBusy
from .store import Store

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the flow needs of a model: the ModelWorker provides it."""

    name: str
    context_tokens: int

    def count_tokens(self, messages: ChatMessages) -> int: ...

    def stream(self, messages: ChatMessages, params: GenerationSettings, *,
               cache_key: Hashable | None = None) -> AsyncIterator[str]: ...

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
                 part_limit: int = DISCORD_MESSAGE_LIMIT):
        self.store = store
        self.model = model
        self.settings = settings
        self.part_limit = part_limit
        self._channels = ChannelLocks()
        self._prompt_starts = PromptStarts()
        self._resets: dict[int, asyncio.Event] = {}  # set to stop the answer being written in a channel
        self._shutting_down = asyncio.Event()  # set once: every answer stops, no new one starts
        limits = settings.limits
        self._cooldowns = UserCooldowns(limits.user_messages_per_minute, limits.user_burst)

    # Chatting -----------------------------------------------------------

    async def reply(self, message: IncomingMessage, on_progress: ProgressCallback | None = None) -> Reply:
        """Answer one message: store it, ask the model, store and return the answer.

        `on_progress`, if given, is awaited with the visible text so far as the model writes.
        """
        message = with_text_repaired(message)  # before anything stores, measures or tokenizes it
        problem = problem_with_message(message.content, self.settings.history.max_message_chars)
        if problem:
            return refusal(problem)
        if self._shutting_down.is_set():
            return refusal(messages.RESTARTING)
        wait = self._cooldowns.wait_before(message.author_id)
        if wait:
            log.info("user %s is over the message rate limit; told to wait %.0f s", message.author_id, wait)
            return refusal(messages.SLOW_DOWN.format(seconds=whole_seconds(wait)))
        async with self._channels.hold(message.channel_id):
            if self._shutting_down.is_set():  # it waited behind another answer while the bot began to stop
                return refusal(messages.RESTARTING)
            try:
                return await self._answer(message, on_progress)
            except SQLAlchemyError:
                log.exception("database error while answering in channel %s", message.channel_id)
                return refusal(messages.STORAGE_FAILED)

    async def _answer(self, message: IncomingMessage, on_progress: ProgressCallback | None) -> Reply:
        user_turn = Turn(role="user", content=message.content, author_name=message.author_name,
                         author_id=message.author_id, message_id=message.message_id)
        try:
            planned = await self._prompt_with(message, user_turn)
        except PromptTooLong as error:
            return refusal(messages.PROMPT_TOO_LONG.format(needed=error.needed, budget=error.budget))
        user_turn_id = await self.store.add_turn(
            channel_id=message.channel_id, guild_id=message.guild_id, role="user", content=message.content,
            author_id=message.author_id, author_name=message.author_name, message_id=message.message_id)
        self._prompt_starts.remember(message.channel_id, planned.first_turn_id or user_turn_id)
        written = await self._write(message.channel_id, planned.prompt.messages, on_progress)
        if isinstance(written.error, ModelBusy):
            return refusal(messages.BUSY.format(waiting=written.error.waiting))
        if written.error and not written.text:
            return refusal(messages.GENERATION_FAILED.format(reason=str(written.error)))
        if not written.text:
            return refusal(messages.NOTHING_TO_SAY)
        if written.stopped_by_shutdown and not written.text:
            return refusal(messages.RESTARTING)
        if written.stopped_by_reset:  # the history it belongs to is being wiped: keep nothing
            return Reply(parts=split_message(written.text, self.part_limit), ok=False,
                         notes=[messages.CUT_SHORT_RESET])
        await self.store.add_turn(channel_id=message.channel_id, guild_id=message.guild_id,
                                  role="assistant", content=written.text)
        dropped = planned.prompt.first_turn if planned.prompt.trimmed else 0
        notes = [messages.TURNS_DROPPED.format(count=dropped)] if dropped else []
        if written.error:  # stopped by its time limit after writing part of the answer
            notes.append(messages.CUT_SHORT_TIMEOUT)
        if written.stopped_by_shutdown:  # kept, like a timed-out answer: it is posted as it stands
            notes.append(messages.CUT_SHORT_RESTART)
        return Reply(parts=split_message(written.text, self.part_limit), dropped_turns=dropped, notes=notes)

    async def _write(self, channel_id: int, prompt: ChatMessages, on_progress: ProgressCallback | None) -> "Written":
        """Stream the model's answer, passing progress on, until it ends, fails, or the channel is reset."""
        raw, error = "", None
        reset = self._resets.setdefault(channel_id, asyncio.Event())
        try:
            place = self.model.place_in_line()
            if place and on_progress is not None:  # shown only if the wait is long enough to notice
                await on_progress(messages.QUEUED.format(place=place))
            stream = self.model.stream(prompt, self.settings.generation, cache_key=channel_id)
            async with aclosing(stream):
                async for delta in stream:
                    raw += delta
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
        return Written(clean_reply(raw), error, reset.is_set(), self._shutting_down.is_set())

    def stop_answering(self) -> None:
        """For a clean shutdown: answers being written stop at their next piece and keep what
        they have (with a note saying so); messages not yet started are told the bot restarts."""
        self._shutting_down.set()

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
        return ChannelPrompt(prompt, turns[prompt.first_turn].id)

    # Persona ------------------------------------------------------------

    async def persona_for(self, guild_id: int | None) -> str:
        custom = await self.store.persona(guild_id) if guild_id is not None else None
        return custom or self.settings.persona.default

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
        if custom:
            return messages.PERSONA_SHOW_CUSTOM.format(persona=custom)
        return messages.PERSONA_SHOW_DEFAULT.format(persona=self.settings.persona.default)

    async def reset_persona(self, guild_id: int, actor: Actor) -> str:
        await self.store.set_persona(guild_id, None, actor.id)
        await self.store.record_audit(action="persona.reset", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id)
        return messages.PERSONA_RESET

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

    async def set_auto_reply(self, guild_id: int | None, channel_id: int, actor: Actor, enabled: bool) -> str:
        await self.store.set_auto_reply(channel_id, guild_id, enabled, actor.id)
        await self.store.record_audit(action="autoreply.on" if enabled else "autoreply.off", actor_id=actor.id,
                                      actor_name=actor.name, guild_id=guild_id, channel_id=channel_id)
        return messages.AUTOREPLY_ON if enabled else messages.AUTOREPLY_OFF


def refusal(text: str) -> Reply:
    return Reply(parts=[text], ok=False)
