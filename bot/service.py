"""The conversation flow, written once and used by every front end (Discord, terminal).

    incoming message -> checks -> channel window + persona -> prompt rendered once within
    the token budget -> the model (bot/llm/port.py) -> cleaned answer -> stored -> Reply

A channel's messages, edits, deletes and resets are handled one at a time, in arrival
order (bot/channels.py), so a message that arrives while the previous one is being
answered waits and then sees that answer in its history. Different channels run at once.
Front ends call this service, and nothing else, for conversation data: server settings
(`servers`) and people's data (`privacy`) are its collaborators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext, suppress
from enum import Enum
from typing import Awaitable, Callable, Iterable, Protocol

from sqlalchemy.exc import SQLAlchemyError

from . import messages
from .channels import ChannelSequence, PromptStarts, Wipes
from .config import GenerationSettings, Settings
from .core.cleaning import clean_reply, visible_so_far
from .core.cooldown import UserCooldowns, whole_seconds
from .core.decide import Action, Decision, is_addressed, should_answer
from .core.prompt import Prompt, PromptTooLong, build_prompt, as_the_model_reads, with_recall
from .core.text import is_blank, with_text_repaired
from .core.types import TERMINAL_GUILD_ID, Delivered, IncomingMessage, Reply, Turn
from .core.validate import problem_with_message
from .fair_share import FairShare, tenant_of
from .llm.port import (ChatModel, GenerationError, GenerationInterrupted, GenerationTimeout, ModelBusy,
                       PromptRefused)
from .privacy import Privacy
from .server_settings import Actor, ServerSettings, UserError
from .status import status_text
from .store import Store
from .telemetry import Load, Observer, ReplyTrace, load_of

__all__ = ["Actor", "ChatService", "Delivery", "UserError"]

log = logging.getLogger(__name__)

# Called with the visible text so far while a reply is being written (front ends throttle it).
ProgressCallback = Callable[[str], Awaitable[None]]


class Delivery(Protocol):
    """How a front end shows one answer as it is written (see ChatService.respond)."""

    async def progress(self, text: str) -> None: ...

    def writing(self) -> AbstractAsyncContextManager[None]:
        """Entered while the model writes (Discord: the typing indicator)."""

    async def deliver(self, reply: Reply) -> Delivered:
        """Show the final reply; says which messages show it, and whether all of it was shown."""

    async def withdraw(self) -> None:
        """The answer will not be posted (its question was deleted while it was written): take
        down what shows of it so far (a preview, a place-in-line notice)."""


class Ending(Enum):
    """How writing an answer ended; every ending but COMPLETE adds a note to the reply."""

    COMPLETE = ""
    TIMEOUT = "timeout"  # the time limit stopped it after part of the answer
    RESET = "reset"  # the channel's history was wiped meanwhile: the answer is not kept
    RESTART = "restart"  # the bot is shutting down: kept as it stands
    STOPPED = "stopped"  # the person stopped it (Ctrl-C in the terminal): kept as it stands
    INTERRUPTED = "interrupted"  # the model (its server) stopped mid-answer: kept as it stands

    @property
    def note(self) -> str:
        return {Ending.TIMEOUT: messages.CUT_SHORT_TIMEOUT, Ending.RESET: messages.CUT_SHORT_RESET,
                Ending.RESTART: messages.CUT_SHORT_RESTART, Ending.STOPPED: messages.CUT_SHORT_STOPPED,
                Ending.INTERRUPTED: messages.CUT_SHORT_SERVER}[self]


POST_FAILED = "post_failed"  # stored as an answer's cut_short: Discord showed only its start


class ChatService:
    def __init__(self, store: Store, model: ChatModel, settings: Settings, observer: Observer | None = None):
        self.store = store
        self.model = model
        self.settings = settings
        self.servers = ServerSettings(store, settings, model.abilities.adapters, model_thinks=model.abilities.thinks)
        self._wipes = Wipes()
        self.privacy = Privacy(store, self.servers, channels_erased=self._forget_channels,
                               forgetting=self._wipes.person_forgotten)
        # Told how every reply went: a log line each, and metrics when they are on (bot/metrics.py).
        self.observer = observer or Observer()
        self._traces: set[ReplyTrace] = set()  # the replies in progress
        self.observer.watch(self)
        self._channels = ChannelSequence()
        self._prompt_starts = PromptStarts()
        self._resets: dict[int, asyncio.Event] = {}  # set to stop the answer being written in a channel
        self._deleted_meanwhile: set[int] = set()  # Discord deleted these; their channel has yet to forget them
        self._deleted_channels: set[int] = set()  # Discord deleted these; they have yet to be forgotten
        self._answering: dict[int, int] = {}  # channel -> the message whose answer is being written there
        self._stops: dict[int, asyncio.Event] = {}  # set to stop it and keep what it has
        self._shutting_down = asyncio.Event()  # set once: every answer stops, no new one starts
        # A model with a fixed number of places is shared fairly across servers; a remote server
        # (no fixed number) keeps its own queue.
        places = model.abilities.max_batch
        self._fair = (FairShare(places, settings.engine.max_share, model.abilities.max_waiting)
                      if places > 0 else None)
        limits = settings.limits
        self._cooldowns = UserCooldowns(limits.user_messages_per_minute, limits.user_burst)

    def replies_waiting_for_model(self) -> int:
        """Replies asked for and waiting for a place at the model (not yet being written)."""
        if self._fair is None:
            return max(0, self.model.place_in_line() - 1)
        return self._fair.waiting()

    @property
    def model_name(self) -> str:
        return self.model.name

    # Chatting -----------------------------------------------------------

    async def respond(self, message: IncomingMessage, delivery: Delivery) -> None:
        """A message from a channel where the bot may answer (Discord): decide, answer and deliver,
        all in the channel's turn, so that answers are posted in the order their messages came."""
        arrived = self._wipes.arrived()
        async with self._channels.turn(message.channel_id):
            if message.message_id in self._deleted_meanwhile or self._wiped_since(message, arrived):
                return  # deleted, or its channel reset or its author forgotten, before its turn came
            try:
                decision = await self._decide(message)
            except SQLAlchemyError as error:  # its channel's settings could not be read
                self._log_storage_failure(error, f"could not read channel {message.channel_id}'s settings to "
                                                 "decide on a message")
                decision = Decision(Action.IGNORE, "the database failed")
                if is_addressed(message):  # one who spoke to the bot is told
                    decision = Decision(Action.EXPLAIN, messages.STORAGE_FAILED)
            if decision.action is Action.EXPLAIN:
                delivered = await delivery.deliver(Reply(decision.reason, ok=False))
            elif decision.action is Action.EXPLAIN_TEXT_ONLY:
                delivered = await delivery.deliver(Reply(messages.ATTACHMENTS_ONLY, ok=False))
            elif decision.action is Action.ANSWER:
                self._answering[message.channel_id] = message.message_id
                try:
                    async with delivery.writing():
                        reply = await self._traced(message, delivery.progress)
                finally:
                    del self._answering[message.channel_id]
                if message.channel_id in self._deleted_channels:
                    return  # deleted while answered: there is nowhere to post (the answer is not kept)
                if message.message_id in self._deleted_meanwhile:
                    # Deleted while answered (the answer stopped there, not kept): not posted, and what
                    # showed of it goes; the delete, next in this channel, forgets the question.
                    await delivery.withdraw()
                    return
                delivered = await delivery.deliver(reply)
                await self._bookkeep_after_posting(message, arrived, reply, delivered)
            else:
                return
        if not delivered.complete:  # the front end logged why
            self.observer.error("post_failed")

    async def _bookkeep_after_posting(self, message: IncomingMessage, arrived: int, reply: Reply,
                                      delivered: Delivered) -> None:
        """What the database learns once the answer is posted. The user has the answer by now: a
        database failing here is the operator's to know, in one line, not a traceback."""
        try:
            await self._keep_as_shown(reply, delivered)
            await self._erase_if_wiped_meanwhile(message, arrived, reply)
        except SQLAlchemyError as error:
            self._log_storage_failure(error, f"the answer in channel {message.channel_id} was posted, but the "
                                             "database could not record which messages show it (a delete of them "
                                             "will not forget it)")

    def _log_storage_failure(self, error: SQLAlchemyError, what: str) -> None:
        self.observer.error("storage")
        log.error("%s: %s", what, getattr(error, "orig", None) or type(error).__name__)

    async def reply(self, message: IncomingMessage, on_progress: ProgressCallback | None = None) -> Reply:
        """Answer one message addressed to the bot: store it, ask the model, store and return the answer.
        `on_progress`, if given, is awaited with the visible text so far as the model writes."""
        arrived = self._wipes.arrived()
        async with self._channels.turn(message.channel_id):
            if self._wiped_since(message, arrived):
                return Reply(messages.WIPED_BEFORE_ANSWER, ok=False)
            reply = await self._traced(message, on_progress)
            await self._erase_if_wiped_meanwhile(message, arrived, reply)
            return reply

    async def _keep_as_shown(self, reply: Reply, delivered: Delivered) -> None:
        """Still in the channel's turn: the stored answer learns which messages show it (a delete
        of one of them waits for this, and then forgets the answer). An answer Discord showed
        none of is forgotten, and one it showed only the start of is kept as far as it showed:
        the bot would later refer to what nobody saw."""
        if reply.stored_as is None:
            return
        shown_only_a_start = not delivered.complete and delivered.shown is not None
        if not delivered.message_ids or (shown_only_a_start and not _begins(reply.text, delivered.shown)):
            # (what shows may be no part of it at all: the place-in-line notice its preview began as)
            await self.store.forget_turn(reply.stored_as)
            return
        await self.store.record_answer_parts(reply.stored_as, delivered.message_ids)
        if shown_only_a_start:
            await self.store.cut_answer_to(reply.stored_as, delivered.shown, cut_short=POST_FAILED)

    def _wiped_since(self, message: IncomingMessage, arrived: int) -> bool:
        return (self._wipes.channel_wiped_since(message.channel_id, arrived)
                or self._wipes.forgotten_since(message.author_id, arrived)
                or self._wipes.server_forgotten_since(message.guild_id, arrived))

    async def _erase_if_wiped_meanwhile(self, message: IncomingMessage, arrived: int, reply: Reply) -> None:
        """Its server's data was deleted, or its author asked to be forgotten, while this was
        being answered: what was stored of it after that goes too. A server's goes whole; a
        forgotten person's answer stays in a server channel, as /forget-me promises, and goes in
        a DM (a DM conversation goes whole)."""
        server_gone = self._wipes.server_forgotten_since(message.guild_id, arrived)
        if not server_gone and not self._wipes.forgotten_since(message.author_id, arrived):
            return
        answer_goes = server_gone or message.guild_id is None
        await self.privacy.erase_late_turns(message, reply.stored_as if answer_goes else None)

    async def _decide(self, message: IncomingMessage) -> Decision:
        """The reply decision; the channel's auto-reply switch is read only when it matters."""
        message = await self._with_reply_checked(message)
        auto_reply = not is_addressed(message) and await self.servers.auto_reply(message.guild_id, message.channel_id)
        decision = should_answer(message, auto_reply)
        if decision.action is Action.ANSWER and self._cooldowns.silenced(message.author_id):
            decision = Decision(Action.IGNORE, "its author was told to slow down and still has to wait")
        log.debug("message %s in channel %s: %s (%s)", message.message_id, message.channel_id,
                  decision.action.value, decision.reason)
        return decision

    async def _traced(self, message: IncomingMessage, on_progress: ProgressCallback | None) -> Reply:
        """In the channel's turn. How the reply went is reported to the observer (one log line;
        metrics when they are on)."""
        trace = ReplyTrace.of(message)
        self._traces.add(trace)
        try:
            # Repaired before anything stores, measures or tokenizes it.
            return await self._checked(with_text_repaired(message), on_progress, trace)
        except asyncio.CancelledError:
            trace.outcome = "cancelled"
            raise
        except Exception as error:
            trace.outcome, trace.reason, trace.error = "failed", "unexpected", type(error).__name__
            raise
        finally:
            self._traces.discard(trace)
            self.observer.reply_done(trace)

    async def _checked(self, message: IncomingMessage, on_progress: ProgressCallback | None,
                       trace: ReplyTrace) -> Reply:
        problem = problem_with_message(message.content, self.settings.history.max_message_chars)
        if problem:
            return trace.refusal("empty" if is_blank(message.content) else "too_long", problem)
        if self._shutting_down.is_set():
            return trace.refusal("restarting", messages.RESTARTING)
        wait = self._cooldowns.wait_before(message.author_id)
        if wait:
            self._cooldowns.mark_told(message.author_id)
            seconds = whole_seconds(wait)
            return trace.refusal("rate_limited", messages.counted(messages.SLOW_DOWN, seconds, "seconds"))
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
        try:
            prompt, first_turn_id, persona = await self._prompt_for(message)
        except PromptTooLong as error:
            return trace.refusal("prompt_too_long",
                                 messages.PROMPT_TOO_LONG.format(needed=error.needed, budget=error.budget))
        user_turn_id = await self._store_user_turn(message, first_turn_id)
        adapter = await self.servers.adapter_for(message.guild_id)
        try:
            text, ending = await self._write(message, prompt, adapter, on_progress, trace)
        except ModelBusy as busy:
            await self._take_back(message, user_turn_id)  # the user is asked to send it again
            return trace.refusal("busy", messages.BUSY.format(waiting=busy.waiting))
        except PromptRefused:
            # Not kept: a message the model can never take would fail every later turn too.
            await self._take_back(message, user_turn_id)
            return trace.refusal("prompt_too_long",
                                 messages.SERVER_PROMPT_TOO_LONG.format(context=self.model.context_tokens))
        except GenerationError as error:
            trace.error = type(error).__name__
            kind = "timeout" if isinstance(error, GenerationTimeout) else "generation_failed"
            return trace.failure(kind, messages.GENERATION_FAILED.format(reason=str(error)))
        if not text:
            if ending in (Ending.STOPPED, Ending.RESET):  # stopped before a word: nothing to keep
                trace.cut_short = ending.value
                return Reply("", ok=False, notes=[ending.note])
            if ending is Ending.RESTART:
                await self._take_back(message, user_turn_id)  # the user is asked to send it again
                return trace.refusal("restarting", messages.RESTARTING)
            return trace.failure("empty_answer", messages.NOTHING_TO_SAY)
        if ending is Ending.RESET:  # the history it belongs to is being wiped: keep nothing
            trace.cut_short = ending.value
            return Reply(text, ok=False, notes=[ending.note])
        cut_short = None if ending is Ending.COMPLETE else ending.value
        answer_id = await self.store.add_turn(channel_id=message.channel_id, guild_id=message.guild_id,
                                              role="assistant", content=text, reply_to=user_turn_id,
                                              cut_short=cut_short, persona=persona)
        dropped = trace.dropped_turns = prompt.dropped_turns if prompt.trimmed else 0
        notes = [messages.counted(messages.TURNS_DROPPED, dropped)] if dropped else []
        if message.has_attachments:
            notes.append(messages.ATTACHMENTS_NOT_READ)
        if ending is not Ending.COMPLETE:
            notes.append(ending.note)
            trace.cut_short = ending.value
        return Reply(text, dropped_turns=dropped, notes=notes, stored_as=answer_id)

    async def _take_back(self, message: IncomingMessage, user_turn_id: int) -> None:
        """Forget a question that gets no answer and that its author is asked to send again: kept,
        it would be in the history twice once they do, the first time with no answer."""
        await self.store.forget_turn(user_turn_id)
        self._prompt_starts.forget(message.channel_id)

    async def _prompt_for(self, message: IncomingMessage) -> tuple[Prompt, int | None, str]:
        """Build the prompt from where the channel's previous prompt started, so it only grows
        at the end until a limit forces a cut (see build_prompt): that keeps prefix caches valid.
        The new message is not stored yet: a message that cannot fit is refused, not kept.
        Returns the prompt, the row id of its oldest turn (None: the new message itself) and the
        persona it holds (the channel's own, else the server's: stored with the answer)."""
        max_turns = self.settings.history.max_turns
        new_turn = Turn(role="user", content=as_the_model_reads(message), author_name=message.author_name,
                        author_id=message.author_id, message_id=message.message_id)
        turns = [*await self._started_from(message), *await self.store.recent_turns(message.channel_id, 2 * max_turns),
                 new_turn]
        start = self._prompt_starts.index_in(message.channel_id, turns)
        if start is None:
            start = max(0, len(turns) - max_turns)
        persona = await self.servers.persona_for(message.guild_id, message.channel_id)
        thinking = await self.servers.thinking_for(message.guild_id)
        render = functools.partial(self.model.render, thinking=thinking)
        budget = self.model.context_tokens - self._generation(thinking).max_new_tokens
        # Rendering the chat template is CPU work: keep it off the loop. The render that fits
        # goes to the model with the prompt, so it is never rendered again.
        prompt = await asyncio.to_thread(build_prompt, persona, turns, render, budget,
                                         max_turns=max_turns, start=start)
        first_turn_id = turns[prompt.first_turn].id
        return await self._with_recall(message, prompt, first_turn_id, budget, render), first_turn_id, persona

    async def _started_from(self, message: IncomingMessage) -> list[Turn]:
        """In a thread started from one of the channel's messages (Discord gives the thread that
        message's id), the exchange it was started from comes first: people open a thread on an
        answer to go on about it. (DMs have no threads.)"""
        return [] if message.guild_id is None else await self.store.exchange_started_from(message.channel_id)

    def _generation(self, thinking: bool | None) -> GenerationSettings:
        """The generation settings for a reply: where the model thinks first, the thought has its
        own allowance on top of the answer's."""
        generation = self.settings.generation
        if not (self.settings.model.thinking if thinking is None else thinking) or self.model.abilities.thinks is False:
            return generation  # (a model that cannot think would spend the thought's allowance on its answer)
        return dataclasses.replace(generation,
                                   max_new_tokens=generation.max_new_tokens + generation.max_thinking_tokens)

    async def _with_recall(self, message: IncomingMessage, prompt: Prompt, first_turn_id: int | None,
                           budget: int, render: Callable) -> Prompt:
        """The prompt, with the channel's older turns that best match the new message shown just
        before it. Only turns older than the prompt's oldest are searched, so nothing is shown
        twice (None: the prompt holds only the new message, and every stored turn is older)."""
        history = self.settings.history
        if not history.recall_messages or not history.recall_tokens:
            return prompt
        recalled = await self.store.recall(message.channel_id, message.content, first_turn_id,
                                           history.recall_messages)
        if not recalled:
            return prompt
        return await asyncio.to_thread(with_recall, prompt, recalled, render, budget,
                                       history.recall_tokens)

    async def _store_user_turn(self, message: IncomingMessage, first_turn_id: int | None) -> int:
        await self.servers.note_thread(message.guild_id, message.channel_id)
        user_turn_id = await self.store.add_turn(
            channel_id=message.channel_id, guild_id=message.guild_id, role="user", content=message.content,
            author_id=message.author_id, author_name=message.author_name, message_id=message.message_id)
        self._prompt_starts.remember(message.channel_id, first_turn_id or user_turn_id)
        return user_turn_id

    async def _write(self, message: IncomingMessage, prompt: Prompt, adapter: str | None,
                     on_progress: ProgressCallback | None, trace: ReplyTrace) -> tuple[str, Ending]:
        """Stream the model's answer, passing progress on, until it ends or the channel is reset.
        Returns the cleaned text and how it ended; a failure raises GenerationError, except a
        time limit reached after part of the answer, which keeps that part."""
        raw, ending = "", Ending.COMPLETE
        channel_id = message.channel_id
        reset = self._resets.setdefault(channel_id, asyncio.Event())
        stop = self._stops.setdefault(channel_id, asyncio.Event())
        if message.message_id in self._deleted_meanwhile:  # deleted before there was an answer to stop
            reset.set()

        stop_signals = (reset, stop, self._shutting_down)
        waiting_on_model = False  # awaiting the model: its turn, or its next piece

        def told_to_stop() -> bool:
            return any(signal.is_set() for signal in stop_signals)

        async def read_the_answer() -> None:
            nonlocal raw, waiting_on_model
            place = self._fair.place_in_line() if self._fair is not None else self.model.place_in_line()
            if place and on_progress is not None:  # shown only if the wait is long enough to notice
                await on_progress(messages.QUEUED.format(place=place))
            trace.asking_model()
            if told_to_stop():  # (checked before each wait on the model: a stop is seen at once)
                return
            waiting_on_model = True
            async with self._model_turn(message):
                waiting_on_model = False
                if told_to_stop():  # (while it waited for its turn)
                    return
                stream = self.model.stream(prompt.rendered, self._generation(prompt.rendered.thinking),
                                           channel=channel_id, adapter=adapter)
                async with aclosing(stream):
                    while not told_to_stop():
                        waiting_on_model = True
                        try:
                            delta = await anext(stream)
                        except StopAsyncIteration:
                            return
                        finally:
                            waiting_on_model = False
                        raw += delta
                        trace.piece()
                        if on_progress is not None and not told_to_stop():
                            await on_progress(visible_so_far(raw, prompt.rendered.opens_thought))

        reading = asyncio.create_task(read_the_answer())
        # A stop (reset, the question deleted, /stop, shutdown) ends the answer at once, even
        # while the model has not written a word yet or the reply waits for its turn: reading is
        # cancelled there (which stops the model); elsewhere it stops at its next check.
        stopping = asyncio.create_task(_first_of(stop_signals))
        try:
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done() and waiting_on_model:
                reading.cancel()
            try:
                await reading
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling() or not told_to_stop():
                    raise  # this reply itself was cancelled, not stopped
        except (GenerationTimeout, GenerationInterrupted) as error:
            if not clean_reply(raw, prompt.rendered.opens_thought):
                raise
            ending = Ending.TIMEOUT if isinstance(error, GenerationTimeout) else Ending.INTERRUPTED
        except GenerationError:
            raw = ""  # a failed model's half-answer is not worth keeping
            raise
        finally:
            stopping.cancel()
            if not reading.done():  # this reply itself was cancelled: the reading goes with it
                reading.cancel()
                with suppress(asyncio.CancelledError):
                    await reading
            self._resets.pop(channel_id, None)
            self._stops.pop(channel_id, None)
            trace.model_finished(raw)
        if reset.is_set():
            ending = Ending.RESET
        elif stop.is_set():
            ending = Ending.STOPPED
        elif self._shutting_down.is_set():
            ending = Ending.RESTART
        return clean_reply(raw, prompt.rendered.opens_thought), ending

    def _model_turn(self, message: IncomingMessage):
        """Wait for this reply's fair turn at the model (see bot/fair_share.py)."""
        if self._fair is None:
            return nullcontext()
        return self._fair.turn(tenant_of(message.guild_id, message.author_id))

    def stop_answer(self, channel_id: int) -> bool:
        """Stop the answer being written in a channel at its next piece; it keeps what it has, with a
        note. False when no answer is being written there (it may still wait for its turn)."""
        event = self._stops.get(channel_id)
        if event is None:
            return False
        event.set()
        return True

    def stop_answering(self) -> None:
        """For a clean shutdown: answers being written stop at their next piece and keep what
        they have (with a note saying so); messages not yet started are told the bot restarts."""
        self._shutting_down.set()

    # Edits, deletes, resets ----------------------------------------------

    async def message_edited(self, channel_id: int, message_id: int, text: str) -> None:
        """A stored message was edited: its new text goes into the history. An edit that leaves
        nothing to read (only attachments, or invisible characters) takes the words back: it is
        a delete of them (an answer being written to them stops, and the message is forgotten
        with its answer)."""
        if is_blank(text):
            await self.messages_deleted(channel_id, [message_id])
            return
        async with self._channels.turn(channel_id):
            await self.store.edit_turn(message_id, text)

    async def messages_deleted(self, channel_id: int, message_ids: Iterable[int]) -> None:
        """Messages were deleted on Discord (one, or a bulk delete): a person's message is
        forgotten with the answer written to it; a message showing part of an answer forgets
        that answer. What people see stays as it is: only the bot's memory changes."""
        deleted = set(message_ids)
        # Known at once to the answers waiting in this channel (or being written): a question
        # deleted before its answer is posted is not answered, and one being answered stops.
        self._deleted_meanwhile |= deleted
        if self._answering.get(channel_id) in deleted and channel_id in self._resets:
            self._resets[channel_id].set()
        try:
            async with self._channels.turn(channel_id):
                for message_id in deleted:
                    await self.store.forget_message(message_id)
        finally:
            self._deleted_meanwhile -= deleted

    async def reset_channel(self, guild_id: int | None, channel_id: int, actor: Actor) -> str:
        """Forget a channel's history (its settings stay)."""
        count = await self._stop_and_wipe(channel_id, self.store.clear_channel)
        await self.store.record_audit(action="history.reset", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id, detail=f"{count} turns")
        return messages.counted(messages.HISTORY_RESET, count)

    async def forget_server(self, guild_id: int) -> int:
        """The bot was removed from a server: delete its settings and stored messages. Returns how many."""
        self.servers.forget_noted_threads()  # their notes go with the server's data
        self._wipes.server_forgotten(guild_id)  # its messages still waiting are dropped, late turns erased
        return await self.store.delete_guild_data(guild_id)

    async def stored_servers(self) -> set[int]:
        """The Discord servers something is stored for (the terminal chat's is none)."""
        return await self.store.stored_server_ids() - {TERMINAL_GUILD_ID}

    async def forget_servers(self, gone: Iterable[int]) -> dict[int, int]:
        """Servers that removed the bot while it was offline (Discord sends no event for that
        afterwards): each is forgotten as on removal. Returns how many turns each one lost."""
        return {guild_id: await self.forget_server(guild_id) for guild_id in sorted(gone)}

    def _forget_channels(self, channel_ids: Iterable[int]) -> None:
        """What is kept in memory of these channels' turns (they were erased) goes too."""
        for channel_id in channel_ids:
            self._prompt_starts.forget(channel_id)
            self.model.forget(channel_id)

    async def history(self, channel_id: int, limit: int | None = None) -> list[Turn]:
        return await self.store.recent_turns(channel_id, limit or self.settings.history.max_turns)

    # Status -------------------------------------------------------------

    def load(self) -> Load:
        """The replies in progress now (safe to call from another thread, as metrics scrapes do)."""
        return load_of(list(self._traces), self._channels.waiting())

    async def status(self, extra_lines: tuple[str, ...] = ()) -> str:
        """What an admin wants at a glance (/status): model, backend, queue, uptime, totals.
        Front ends add lines of their own (Discord: the shard, the number of servers)."""
        return status_text(self.model, self.load(), self.observer, extra_lines)

    # Channels that went away, replies to answers the front end could not see --------

    async def forget_channel(self, channel_id: int) -> int:
        """A channel or thread was deleted (Discord sends no delete for its messages): its history
        and its own settings go, and its threads' (archived ones too: Discord deleted them with it).
        No audit entry: nobody asked for it. Returns how many stored turns were deleted."""
        async def delete_with_threads(channel_id: int) -> int:
            erased = await self.store.delete_channel_data(channel_id)
            self._forget_channels(erased.channel_ids - {channel_id})  # the channel's own: by _stop_and_wipe
            return erased.count

        async def delete_thread(thread_id: int) -> int:
            return (await self.store.delete_channel_data(thread_id)).count

        threads = await self.store.noted_threads(channel_id)
        gone = {channel_id, *threads}
        self._deleted_channels.update(gone)  # an answer being written there is not posted
        try:
            # Its threads went with it: an answer being written in one stops, and what waits there
            # is dropped, as in the channel itself (the channel's wipe takes the others' rows).
            count = 0
            for thread_id in threads:
                if self._channels.busy(thread_id):
                    count += await self._stop_and_wipe(thread_id, delete_thread)
            return count + await self._stop_and_wipe(channel_id, delete_with_threads)
        finally:
            self._deleted_channels.difference_update(gone)  # (ids are never reused: nothing comes after)

    async def _stop_and_wipe(self, channel_id: int, wipe: Callable[[int], Awaitable[int]]) -> int:
        """An answer being written in the channel is stopped (and not stored), the messages waiting
        for their turn there are dropped, and `wipe` waits for them to go by, so nothing lands in
        the history after it. Returns what `wipe` returns."""
        if channel_id in self._resets:
            self._resets[channel_id].set()
        stamp = self._wipes.channel_wiped(channel_id)  # the messages waiting for their turn are dropped
        async with self._channels.turn(channel_id):
            count = await wipe(channel_id)
            self._forget_channels([channel_id])
            self._wipes.channel_wipe_done(channel_id, stamp)
        return count

    async def _with_reply_checked(self, message: IncomingMessage) -> IncomingMessage:
        """A reply whose target the front end could not see (`replies_to_unknown`) is a reply to
        the bot when that message shows one of its stored answers. For the decision, in the
        channel's turn: an answer posted just before is recorded by then."""
        if message.replies_to_bot or message.replies_to_unknown is None:
            return message
        if not await self.store.is_answer_part(message.replies_to_unknown):
            return message
        return dataclasses.replace(message, replies_to_bot=True)


def _begins(text: str, shown: str) -> bool:
    """Whether `shown` (a message's text) is the start of `text`: its first words, at least (the
    splitter may have closed a code block at a part's end)."""
    start = shown.strip()[:40]
    return bool(start) and text.startswith(start)


async def _first_of(events: Iterable[asyncio.Event]) -> None:
    """Returns once any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
