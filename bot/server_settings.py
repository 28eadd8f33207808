"""What each server sets for itself: its persona (and a channel's own, which overrides it there),
its LoRA adapter, and auto-reply per channel. A thread takes its channel's persona and auto-reply
unless it has its own.
Changes are checked here and written to the audit log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from . import messages
from .config import Settings
from .core.text import without_lone_surrogates
from .core.validate import problem_with_persona
from .llm.adapters import BASE, DEFAULT, Adapters
from .store import Store

log = logging.getLogger(__name__)


class UserError(Exception):
    """A request that cannot be done as asked. str() is the sentence to show the user."""


@dataclass(frozen=True)
class Actor:
    """Who asked for a command (for the audit log)."""

    id: int
    name: str


SERVER, CHANNEL = "server", "channel"  # a persona's scope
THREADS_CHANNEL = "thread's channel"  # where a thread's persona comes from when it has none of its own
SCOPES = (SERVER, CHANNEL)
MOST_THREADS_NOTED = 100_000  # threads remembered as noted (this process); past it, noted again

Setting = TypeVar("Setting")


# What parent_of says of a channel the front end does not have in view (a thread discord.py
# dropped from its cache when it was archived): the store's note of its channel is asked.
NOT_IN_VIEW = -1


def no_parent(_guild_id: int | None, _channel_id: int) -> int | None:
    return None


class ServerSettings:
    def __init__(self, store: Store, settings: Settings, adapters: Adapters, model_thinks: bool | None = None):
        self.store = store
        self.default_thinking = settings.model.thinking
        self.model_thinks = model_thinks  # (see Abilities.thinks)
        self.default_persona = settings.persona.default
        self.persona_limit = settings.history.max_persona_chars  # characters
        self.adapters = adapters  # what the model serves
        self._gone_adapters: set[tuple[int, str]] = set()  # (server, adapter) picks no longer served, logged
        # The channel a thread of a server belongs to (None: not a thread; NOT_IN_VIEW: a channel it
        # does not have in view). Only a front end with threads knows: the Discord client sets it to
        # look in discord.py's cache. Read through parent_channel().
        self.parent_of: Callable[[int | None, int], int | None] = no_parent
        self._threads_noted: set[int] = set()  # threads whose channel the store knows (this process)

    async def note_thread(self, guild_id: int | None, channel_id: int) -> None:
        """Something is about to be kept of this channel: if it is a thread, the store learns its
        channel once, so that deleting the channel forgets the thread too (see ThreadParent)."""
        if channel_id in self._threads_noted:
            return
        parent = self.parent_of(guild_id, channel_id)
        if parent is None or parent == NOT_IN_VIEW:  # (not in view: noted already, if ever seen)
            return
        await self.store.remember_thread(channel_id, parent, guild_id)
        if len(self._threads_noted) >= MOST_THREADS_NOTED:  # noting again is harmless: a bound, not a cache
            self._threads_noted.clear()
        self._threads_noted.add(channel_id)

    def forget_noted_threads(self) -> None:
        """The store's notes of threads went (a server's data deleted): note each again."""
        self._threads_noted.clear()

    async def _own_or_parent(self, read: Callable[[int], Awaitable[Setting | None]], guild_id: int | None,
                             channel_id: int) -> Setting | None:
        """A channel's own setting (`read` gives None where it has none), else, in a thread, its
        channel's: people expect a thread opened in a channel to behave like the channel."""
        own = await read(channel_id)
        parent = await self.parent_channel(guild_id, channel_id) if own is None else None
        return own if parent is None else await read(parent)

    async def parent_channel(self, guild_id: int | None, channel_id: int) -> int | None:
        """The channel a thread belongs to (None: not a thread): from the front end's view, else,
        for a thread out of its view (archived, and so out of discord.py's cache: a message may
        come before the event that brings it back), from the store's note of it."""
        parent = self.parent_of(guild_id, channel_id)
        if parent == NOT_IN_VIEW:
            return await self.store.thread_parent(channel_id)
        return parent

    # Persona ------------------------------------------------------------

    async def persona_for(self, guild_id: int | None, channel_id: int | None = None) -> str:
        """The persona in force here: the channel's own (in a thread: its own, else its channel's),
        else the server's, else the configured default (always the default in DMs)."""
        return (await self._persona_here(guild_id, channel_id))[0]

    async def _persona_here(self, guild_id: int | None, channel_id: int | None) -> tuple[str, str | None]:
        """The persona in force and where it comes from: CHANNEL (its own), THREADS_CHANNEL (a
        thread's channel's own), SERVER, or None (the default)."""
        if guild_id is None:
            return self.default_persona, None
        if channel_id is not None:
            if own := await self.store.channel_persona(channel_id):
                return own, CHANNEL
            parent = await self.parent_channel(guild_id, channel_id)
            if parent is not None and (parents := await self.store.channel_persona(parent)):
                return parents, THREADS_CHANNEL
        custom = await self.store.persona(guild_id)
        return (custom, SERVER) if custom else (self.default_persona, None)

    async def set_persona(self, guild_id: int, actor: Actor, text: str, *, scope: str = SERVER,
                          channel_id: int | None = None) -> str:
        """Set the server's persona, or (scope CHANNEL) the channel's own, which overrides it there."""
        channel_id = _scoped_channel(scope, channel_id)
        problem = problem_with_persona(text, self.persona_limit, channel_scope=channel_id is not None)
        if problem:
            raise UserError(problem)
        text = without_lone_surrogates(text.strip())
        if channel_id is None:
            await self.store.set_persona(guild_id, text, actor.id)
        else:
            await self.note_thread(guild_id, channel_id)
            await self.store.set_channel_persona(channel_id, guild_id, text, actor.id)
        await self.store.record_audit(action="persona.set", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id,
                                      detail=f"{scope}: {len(text)} characters")
        return (messages.PERSONA_SET if channel_id is None else messages.PERSONA_SET_CHANNEL).format(length=len(text))

    async def show_persona(self, guild_id: int, channel_id: int | None = None) -> str:
        """The persona in force here, and where it comes from."""
        persona, source = await self._persona_here(guild_id, channel_id)
        shown = {CHANNEL: messages.PERSONA_SHOW_CHANNEL, THREADS_CHANNEL: messages.PERSONA_SHOW_THREADS_CHANNEL,
                 SERVER: messages.PERSONA_SHOW_CUSTOM, None: messages.PERSONA_SHOW_DEFAULT}[source]
        shown = shown.format(persona=persona)
        return shown + await self._adapter_note(guild_id) + await self._thinking_note(guild_id)

    async def reset_persona(self, guild_id: int, actor: Actor, *, scope: str = SERVER,
                            channel_id: int | None = None) -> str:
        """Server scope: back to the default. Channel scope: the channel's own persona goes, and
        the server's applies there again."""
        channel_id = _scoped_channel(scope, channel_id)
        if channel_id is None:
            await self.store.set_persona(guild_id, None, actor.id)
        elif not await self.store.set_channel_persona(channel_id, guild_id, None, actor.id):
            return messages.PERSONA_CHANNEL_NONE.format(applies=await self._persona_that_applies(guild_id, channel_id))
        await self.store.record_audit(action="persona.reset", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, channel_id=channel_id, detail=scope)
        if channel_id is None:
            return messages.PERSONA_RESET
        return messages.PERSONA_RESET_CHANNEL.format(applies=await self._persona_that_applies(guild_id, channel_id))

    async def _persona_that_applies(self, guild_id: int, channel_id: int) -> str:
        """Which persona applies in a channel without one of its own, in words."""
        _, source = await self._persona_here(guild_id, channel_id)
        return {THREADS_CHANNEL: messages.APPLIES_THREADS_CHANNEL, SERVER: messages.APPLIES_SERVER,
                None: messages.APPLIES_DEFAULT}[source]

    # Adapters (fine-tuned LoRA weights, see bot/llm/adapters.py) ---------

    def adapter_choices(self) -> list[str]:
        """What an admin may pick: the operator's adapters by name, "default" and "base"."""
        return self.adapters.choices()

    async def adapter_for(self, guild_id: int | None) -> str | None:
        """The adapter this server's replies run with: its pick, if the model still serves it, else
        None (the configured default). A pick that is gone (the operator removed that adapter) is
        logged for the operator, once; the server's members simply get the default."""
        if guild_id is None or not self.adapters.any:  # nothing to pick from: no lookup at all
            return None
        picked = await self.store.adapter(guild_id)
        if picked is None or picked in self.adapters.choices():
            return picked
        if (guild_id, picked) not in self._gone_adapters:
            self._gone_adapters.add((guild_id, picked))
            log.warning('server %s picked the adapter "%s", which is no longer served; it gets the default (%s)',
                        guild_id, picked, self.adapters.label or "the base model")
        return None

    async def set_adapter(self, guild_id: int, actor: Actor, name: str) -> str:
        """A server admin picks one of the operator's adapters by name, "default" or "base". Its
        channels' next replies use it (prefix caches are never reused across adapters)."""
        choices = self.adapters.choices()
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

    # Thinking (SmolLM3 reasons in a <think> block first: never posted, stored or exported) -----

    async def thinking_for(self, guild_id: int | None) -> bool | None:
        """Whether this server's replies think first (None: [model] thinking decides)."""
        return None if guild_id is None else await self.store.thinking(guild_id)

    async def set_thinking(self, guild_id: int, actor: Actor, enabled: bool) -> str:
        await self.store.set_thinking(guild_id, enabled)
        await self.store.record_audit(action="thinking.set", actor_id=actor.id, actor_name=actor.name,
                                      guild_id=guild_id, detail="on" if enabled else "off")
        if enabled and self.model_thinks is False:
            return messages.THINKING_ON + " " + messages.THINKING_CANNOT_NOW
        return messages.THINKING_ON if enabled else messages.THINKING_OFF

    async def _thinking_note(self, guild_id: int) -> str:
        """For /persona show: whether replies think first, where that is worth saying (the model
        can think, or thinking is on)."""
        chosen = await self.thinking_for(guild_id)
        on = self.default_thinking if chosen is None else chosen
        if self.model_thinks is False:
            return "\n\n" + messages.THINKING_CANNOT if on else ""
        if not on and not self.model_thinks:
            return ""
        return "\n\n" + (messages.THINKING_IS_ON if on else messages.THINKING_IS_OFF)

    async def _adapter_note(self, guild_id: int) -> str:
        """For /persona show: which adapter is in use (nothing when the model serves none)."""
        if not self.adapters.any:
            return ""
        return "\n\n" + messages.ADAPTER_IN_USE.format(adapter=self._describe_adapter(
            await self.adapter_for(guild_id) or DEFAULT))

    def _describe_adapter(self, name: str) -> str:
        label = self.adapters.label
        if name == DEFAULT and label:
            return messages.ADAPTER_DEFAULT.format(name=label)
        if name in (DEFAULT, BASE):
            return messages.ADAPTER_NONE
        return messages.ADAPTER_NAMED.format(name=name)

    # Auto-reply ---------------------------------------------------------

    async def auto_reply(self, guild_id: int | None, channel_id: int) -> bool:
        """Whether auto-reply is on here: the channel's own switch, else (a thread) its channel's."""
        return bool(await self._own_or_parent(self.store.channel_auto_reply, guild_id, channel_id))

    async def set_auto_reply(self, guild_id: int | None, channel_id: int, actor: Actor, enabled: bool) -> str:
        await self.note_thread(guild_id, channel_id)
        await self.store.set_auto_reply(channel_id, guild_id, enabled, actor.id)
        await self.store.record_audit(action="autoreply.on" if enabled else "autoreply.off", actor_id=actor.id,
                                      actor_name=actor.name, guild_id=guild_id, channel_id=channel_id)
        return messages.AUTOREPLY_ON if enabled else messages.AUTOREPLY_OFF


def _scoped_channel(scope: str, channel_id: int | None) -> int | None:
    """The channel a persona change is for: None for the server scope."""
    if scope not in SCOPES:
        raise UserError(messages.PERSONA_SCOPE_UNKNOWN.format(scope=scope[:50]))
    if scope == SERVER:
        return None
    if channel_id is None:
        raise ValueError("a channel persona needs its channel")
    return channel_id
