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
from .core.prompt import ChatMessages, Prompt, PromptTooLong, build_prompt
from .core.split import DISCORD_MESSAGE_LIMIT, split_message
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

    # Chatting -----------------------------------------------------------

    async def reply(self, message: IncomingMessage, on_progress: ProgressCallback | None = None) -> Reply:
        """Answer one message: store it, ask the model, store and return the answer.

        `on_progress`, if given, is awaited with the visible text so far as the model writes.
        """
        problem = problem_with_message(message.content, self.settings.history.max_message_chars)
        if problem:
            return refusal(problem)
        async with self._channels.hold(message.channel_id):
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
        if written.stopped_by_reset:  # the history it belongs to is being wiped: keep nothing
            return Reply(parts=split_message(written.text, self.part_limit), ok=False,
                         notes=[messages.CUT_SHORT_RESET])
        await self.store.add_turn(channel_id=message.channel_id, guild_id=message.guild_id,
                                  role="assistant", content=written.text)
        dropped = planned.prompt.first_turn if planned.prompt.trimmed else 0
        notes = [messages.TURNS_DROPPED.format(count=dropped)] if dropped else []
        if written.error:  # stopped by its time limit after writing part of the answer
            notes.append(messages.CUT_SHORT_TIMEOUT)
        return Reply(parts=split_message(written.text, self.part_limit), dropped_turns=dropped, notes=notes)

    async def _write(self, channel_id: int, prompt: ChatMessages, on_progress: ProgressCallback | None) -> "Written":
        """Stream the model's answer, passing progress on, until it ends, fails, or the channel is reset."""
        raw, error = "", None
        reset = self._resets.setdefault(channel_id, asyncio.Event())
        try:
            stream = self.model.stream(prompt, self.settings.generation, cache_key=channel_id)
            async with aclosing(stream):
                async for delta in stream:
                    raw += delta
                    if reset.is_set():
                        break
                    if on_progress is not None:
                        await on_progress(visible_so_far(raw))
        except GenerationError as failure:
            error = failure
            if not isinstance(failure, GenerationTimeout):
                raw = ""  # a failed model's half-answer is not worth keeping
        finally:
            self._resets.pop(channel_id, None)
        return Written(clean_reply(raw), error, reset.is_set())

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
        text = text.strip()
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

    async def set_auto_reply(self, guild_id: int | None, channel_id: int, actor: Actor, enabled: bool) -> str:
        await self.store.set_auto_reply(channel_id, guild_id, enabled, actor.id)
        await self.store.record_audit(action="autoreply.on" if enabled else "autoreply.off", actor_id=actor.id,
                                      actor_name=actor.name, guild_id=guild_id, channel_id=channel_id)
        return messages.AUTOREPLY_ON if enabled else messages.AUTOREPLY_OFF


def refusal(text: str) -> Reply:
    return Reply(parts=[text], ok=False)
