"""Posting to Discord: replies in parts, the typing indicator, and command answers.

Nothing the bot posts may ping anyone: every send passes AllowedMentions.none()
(also the client's default), on top of the cleaner breaking @everyone in the text.
A failed post is logged for the operator and never raised: it must not take
down the handler, and other channels carry on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import aiohttp
import discord

from ..core.split import DISCORD_MESSAGE_LIMIT, split_message
from ..core.types import Delivered, Reply
from ..telemetry import log_event

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()

# What a post can fail with: Discord refusing it (after discord.py's own retries on rate
# limits and server errors, and ours: see patiently), a rate limit too long to wait out
# (discord.RateLimited, past the client's max_ratelimit_timeout), or the network failing under it.
POSTING_ERRORS = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, asyncio.TimeoutError)

# A 429 discord.py did not wait out itself is waited out up to this many times, the waits adding
# up to at most LONGEST_RATE_LIMIT_WAIT_S (also the client's max_ratelimit_timeout, client.py).
RATE_LIMIT_RETRIES = 3
LONGEST_RATE_LIMIT_WAIT_S = 60.0

Sent = TypeVar("Sent")

# How often "Bot is typing..." is sent again while an answer is written (discord.py's own period:
# Discord shows each signal for about 10 s).
TYPING_REFRESH_S = 5.0


def parts_to_post(reply: Reply, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """The reply in Discord-sized parts (code fences kept whole), with its notes as small
    subtext lines under the last part (or after it)."""
    parts = split_message(reply.text, limit)
    if not reply.notes:
        return parts
    subtext = "\n".join(f"-# {note}" for note in reply.notes)
    if parts and len(parts[-1]) + 1 + len(subtext) <= limit:
        parts[-1] = f"{parts[-1]}\n{subtext}"
    else:
        parts.extend(split_message(subtext, limit))
    return parts


async def post_reply(message: discord.Message, parts: list[str]) -> Delivered:
    """The first part as a reply to `message`, the others after it, in order.

    Stops at the first part that cannot be posted (not complete, then): the rest would read as a
    broken answer. The reply survives its trigger being deleted meanwhile
    (fail_if_not_exists=False): it is then posted as a plain message.
    """
    if not parts:
        return Delivered()
    reference = message.to_reference(fail_if_not_exists=False)
    first = await _post(message, parts[0], 1, len(parts), reference=reference, mention_author=False)
    if first is None:
        return Delivered(complete=False)
    return await _post_rest(message, parts, [first.id])


async def _post_rest(trigger: discord.Message, parts: list[str], posted: list[int]) -> Delivered:
    """Parts 2.. after the first (already posted, `posted` holding its id)."""
    for number, part in enumerate(parts[1:], start=2):
        sent = await _post(trigger, part, number, len(parts))
        if sent is None:
            return Delivered(tuple(posted), complete=False, shown="\n".join(parts[:len(posted)]))
        posted.append(sent.id)
    return Delivered(tuple(posted))


async def patiently(send: Callable[[], Awaitable[Sent]]) -> Sent:
    """`send()`, with a 429 that discord.py gave up on waited out for as long as Discord says.
    discord.py waits out a 429 itself (up to 5 tries) only when it carries a `Via` header, and
    takes one without for a Cloudflare ban; Discord documents a 429 by its JSON body and headers
    alone, so a server that answers without `Via` would otherwise lose the answer at its first
    rate limit. Only such a 429 (JSON, no `Via`, a wait named) is retried, and the waits add up
    to at most LONGEST_RATE_LIMIT_WAIT_S: a ban's page, or a 429 discord.py already retried,
    is not sent again (refused requests count towards Discord's ban)."""
    waited = 0.0
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        await take_a_request_turn()
        try:
            return await send()
        except discord.HTTPException as error:
            wait = retry_after(error)
            if wait is None or waited + wait > LONGEST_RATE_LIMIT_WAIT_S or attempt == RATE_LIMIT_RETRIES:
                raise
            log.info("rate limited (HTTP 429): sending again in %.2f s", wait)
            await asyncio.sleep(wait)
            waited += wait
    raise AssertionError("unreachable: the last attempt returns or raises")


def retry_after(error: discord.HTTPException) -> float | None:
    """Seconds to wait before sending again, for a 429 discord.py did not wait out itself (JSON,
    without `Via`) and that names a wait; None for anything else."""
    headers = getattr(error.response, "headers", None) or {}
    if error.status != 429 or "Via" in headers or not headers.get("Content-Type", "").startswith("application/json"):
        return None
    for name in ("X-RateLimit-Reset-After", "Retry-After"):  # the first is the finer-grained
        try:
            return max(0.0, float(headers[name]))
        except (KeyError, TypeError, ValueError):
            continue
    return None


async def _post(trigger: discord.Message, text: str, number: int, total: int, **options) -> discord.Message | None:
    try:
        return await patiently(lambda: trigger.channel.send(text, allowed_mentions=NO_PINGS, **options))
    except POSTING_ERRORS as error:
        log_post_failure(trigger, number, total, error)
        return None


class EditBudget:
    """How often answers being written may be shown, all channels together. Discord allows a bot
    50 requests a second in all; past that it answers 429, and enough refused requests get the
    bot's address banned for a while. With 64 channels answering at once, one edit a second each
    would be 64. So every preview (a streamed answer's first post or edit) takes the next free
    turn, `1 / per_second` after the last one, first come first served: with many answers at
    once each is shown less often, and the newest text goes when its turn comes. Finished answers
    never wait here. (The same spacing paces all of an answer's requests: see paced.)"""

    def __init__(self, per_second: float, now: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.spacing = 1.0 / per_second
        self._now = now or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep
        self._next_turn = float("-inf")

    async def turn(self) -> None:
        """Wait for this preview's turn (a turn given up by cancelling is not handed back)."""
        now = self._now()
        turn = max(now, self._next_turn)
        self._next_turn = turn + self.spacing
        if turn > now:
            await self._sleep(turn - now)


# Every request an answer makes (its posts, edits, deletes, typing) takes a turn of the pace set
# for the task that handles it and the tasks it starts (a context variable: see paced), so that
# all of a process's answers together keep under Discord's 50 requests a second: with many
# answers ending on the same step, their final posts and edits alone went past 100 in a second.
# Previews also keep to their own, lower budget first (DiscordEvents.edit_budget).
_request_pace: ContextVar["EditBudget | None"] = ContextVar("discord_request_pace", default=None)


@contextmanager
def paced(budget: "EditBudget") -> Iterator[None]:
    """Within the block (and the tasks started in it), every request takes a turn of `budget`."""
    token = _request_pace.set(budget)
    try:
        yield
    finally:
        _request_pace.reset(token)


async def take_a_request_turn() -> None:
    pace = _request_pace.get()
    if pace is not None:
        await pace.turn()


class StreamedReply:
    """An answer that appears while the model writes it: posted as a reply once it has taken
    `interval` seconds, then edited at most once per `interval`, then finished with the final parts.

    Updates only record the newest text; one background task shows it when the throttle
    allows, so a slow or rate-limited edit never holds the model up, and the newest text
    (a "you are number 3 in line" notice, say) is shown even if nothing follows for a while.
    A message someone deletes meanwhile is left deleted: neither edited nor posted again.
    """

    def __init__(self, trigger: discord.Message, interval: float, limit: int = DISCORD_MESSAGE_LIMIT,
                 before_first_post: Callable[[], Awaitable[None]] | None = None, budget: EditBudget | None = None):
        self.trigger = trigger
        self.interval = interval
        self.limit = limit
        self.budget = budget  # shared by every answer being written (None: no limit but `interval`)
        # Awaited just before the answer's first message is sent (the typing indicator stops there).
        self.before_first_post = before_first_post
        self.message: discord.Message | None = None
        self.gone = False  # the message was deleted (by a person) while the answer was written
        # Discord refused a preview for good (403: no permission any more, a locked thread; 400:
        # AutoMod): no more previews for this answer. Sent again every interval, each refusal
        # would count towards the invalid requests that get a bot's address banned for a while.
        self.refused = False
        self._shown = ""
        self._pending = ""
        # Counting from now, an answer that is done within `interval` is posted once, whole.
        self._next_show = asyncio.get_running_loop().time() + interval
        self._shower: asyncio.Task | None = None
        self._posting = False  # a post or edit is on its way to Discord

    async def update(self, text: str) -> None:
        """Called with the visible text so far."""
        if self.interval <= 0 or not text.strip() or self.refused:
            return
        self._pending = text
        if self._shower is None or self._shower.done():
            self._shower = asyncio.create_task(self._show_when_allowed())

    async def _show_when_allowed(self) -> None:
        """Show the newest text when the throttle allows; again while updates came during the
        post or edit (a queue notice followed by a long silence must still show)."""
        loop = asyncio.get_running_loop()
        shown = None
        while shown != self._pending and not self.refused:
            await asyncio.sleep(max(0.0, self._next_show - loop.time()))
            if self.budget is not None:
                await self.budget.turn()
            self._next_show = loop.time() + self.interval
            shown = self._pending
            self._posting = True
            try:
                await self._show(preview(shown, self.limit))
            finally:
                self._posting = False

    async def finish(self, parts: list[str]) -> Delivered:
        """The final text: the streamed message becomes the first part, the others follow."""
        await self._stop_showing()
        if self.message is None:
            return await post_reply(self.trigger, parts)
        shown = await self._show(parts[0]) if parts else True
        if self.gone:
            # Someone deleted it: nothing is posted again. Its id is still handed back, so that the
            # delete (handled once this answer is stored) forgets the answer, as for any deleted one.
            return Delivered((self.message.id,))
        if not shown:
            return await self._post_instead(parts)
        return await _post_rest(self.trigger, parts, [self.message.id])

    async def _post_instead(self, parts: list[str]) -> Delivered:
        """Discord refused the edit that makes the preview the answer: the answer is posted whole
        as new messages, and the preview, which would end in "…" for good, is taken down. If that
        is refused too, the preview stays: it shows the answer's start."""
        delivered = await post_reply(self.trigger, parts)
        if not delivered.message_ids:
            return Delivered((self.message.id,), complete=False, shown=self._shown.removesuffix(PREVIEW_MARK))
        await self.withdraw()
        return delivered

    async def withdraw(self) -> None:
        """The answer will not come (its question was deleted): what shows of it is deleted."""
        await self._stop_showing()
        if self.message is None or self.gone:
            return
        try:
            await patiently(self.message.delete)
        except discord.NotFound:
            pass  # someone deleted it first
        except POSTING_ERRORS as error:
            log.info("could not take down the start of an answer in channel %s: %s",
                     self.trigger.channel.id, describe(error))
        self.gone = True

    async def _stop_showing(self) -> None:
        """No more previews: one only waiting for its turn is dropped, one on its way lands first."""
        if self._shower is not None and not self._shower.done():
            if not self._posting:
                self._shower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._shower

    async def _show(self, text: str) -> bool:
        """False when Discord refused it (the message then shows an older text, or is gone)."""
        if self.message is None:
            return await self._post_first(text)
        if self.gone or text == self._shown:  # unchanged: a preview past a part's length, say
            return True
        return await self._edit(text)

    async def _post_first(self, text: str) -> bool:
        if self.before_first_post is not None:
            await self.before_first_post()
        try:
            self.message = await patiently(lambda: self.trigger.channel.send(
                text, reference=self.trigger.to_reference(fail_if_not_exists=False),
                mention_author=False, allowed_mentions=NO_PINGS))
        except POSTING_ERRORS as error:
            self.refused = refused_for_good(error)
            log.info("could not post the start of an answer in channel %s: %s",
                     self.trigger.channel.id, describe(error))
            return False
        self._shown = text
        return True

    async def _edit(self, text: str) -> bool:
        try:
            await patiently(lambda: self.message.edit(content=text, allowed_mentions=NO_PINGS))
        except discord.NotFound as error:  # deleted while the answer is written: no use editing it again
            self.gone = True
            log_event(log, "answer_deleted", guild=getattr(self.trigger.guild, "id", None),
                      channel=self.trigger.channel.id, message_id=self.trigger.id, error=describe(error))
            return False
        except POSTING_ERRORS as error:
            self.refused = refused_for_good(error)
            log_event(log, "edit_failed", logging.WARNING, guild=getattr(self.trigger.guild, "id", None),
                      channel=self.trigger.channel.id, message_id=self.trigger.id, error=describe(error))
            return False
        self._shown = text
        return True


def refused_for_good(error: Exception) -> bool:
    """A refusal sending again will not change (unlike a 429 or a 5xx)."""
    return isinstance(error, discord.HTTPException) and error.status in (400, 401, 403)


PREVIEW_MARK = " …"  # ends an answer still being written


def preview(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> str:
    """The growing answer as one message: its first part, marked as still being written."""
    first = (split_message(text, limit - len(PREVIEW_MARK)) or [text[: limit - len(PREVIEW_MARK)]])[0]
    return first.rstrip() + PREVIEW_MARK  # (a word's trailing space would show before the mark)


@asynccontextmanager
async def typing_in(channel: discord.abc.Messageable) -> AsyncIterator[TypingIndicator]:
    """Show "Bot is typing..." while the block runs, or until the indicator it gives is stopped."""
    indicator = TypingIndicator(channel)
    await indicator.start()
    try:
        yield indicator
    finally:
        await indicator.stop()


class TypingIndicator:
    """The "Bot is typing..." indicator, sent again every TYPING_REFRESH_S until stopped. Discord shows it for
    about 10 s after each signal, or until the bot posts; an edit does not clear it. So it is
    stopped when the answer's first message is posted: after that it would only linger.

    Not discord.py's channel.typing() block: that one can only cancel its refresh, which may
    then still reach Discord after the answer. Once `stop` returns, nothing more is sent.
    The indicator is a nicety: if Discord refuses it, the answer still comes.
    """

    def __init__(self, channel: discord.abc.Messageable):
        self.channel = channel
        self._stopped = asyncio.Event()
        self._refreshing: asyncio.Task | None = None

    async def start(self) -> None:
        if await self._send():
            self._refreshing = asyncio.create_task(self._refresh())

    async def stop(self) -> None:
        self._stopped.set()
        if self._refreshing is not None:
            await self._refreshing  # a signal on its way arrives first, not after what is posted next

    async def _refresh(self) -> None:
        while not await _set_within(self._stopped, TYPING_REFRESH_S):
            if not await self._send():
                return  # refused (logged): the answer comes without it

    async def _send(self) -> bool:
        await take_a_request_turn()
        try:
            await self.channel.typing()  # awaited, not entered: sent once
        except POSTING_ERRORS as error:
            log.info("no typing indicator in channel %s: %s", getattr(self.channel, "id", "?"), describe(error))
            return False
        return True


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def answer_privately(interaction: discord.Interaction, text: str) -> None:
    """Answer a slash command so only its user sees it, in as many parts as the text needs."""
    for part in split_message(text) or [text]:
        if interaction.response.is_done():
            await interaction.followup.send(part, ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(part, ephemeral=True, allowed_mentions=NO_PINGS)


def log_post_failure(trigger: discord.Message, part: int, parts: int, error: Exception) -> None:
    log_event(log, "post_failed", logging.WARNING, guild=getattr(trigger.guild, "id", None),
              channel=trigger.channel.id, message_id=trigger.id, part=f"{part}/{parts}", error=describe(error))


def describe(error: Exception) -> str:
    """One line for the log: the HTTP status, Discord's error code and its text, or the network error."""
    if isinstance(error, discord.HTTPException):
        return f"HTTP {error.status} (code {error.code}): {error.text or type(error).__name__}"
    return f"{type(error).__name__}: {error}"
