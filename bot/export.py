"""Stored conversations -> a chat-format JSONL training set.

One line per conversation: {"messages": [system persona, user, assistant, ...]}, the
shape TRL's SFTTrainer and `tokenizer.apply_chat_template` take as it is. User turns
carry a "Name: text" prefix exactly as the bot's prompts do (core.prompt.turn_to_message),
so a model tuned on the export sees what it will see when serving.

What is left out, and why:
- people who ran /optout or /forget-me: their turns, and the bot's answers to them
  (an answer is written for its asker and often repeats what they said);
- direct messages, unless asked for: they were private;
- turns the bot refused are never stored, so they cannot leak in;
- questions that never got an answer (a user turn followed by another user turn, or ending
  the conversation): a failed or timed-out generation stores the question and nothing
  after it, and a person who asks again leaves a row of identical unanswered questions;
- answers cut short (a time limit, a restart, a person who stopped them, a server that went
  away: stored with messages.cut_short since migration 0004), with their questions: a
  fragment would teach the model to stop mid-sentence. Answers stored before 0004 carry no
  mark and are exported as they stand.

The system message holds the persona the conversation was held under: the one recorded with
its last answer (the channel's own persona, else the server's, as it was then). Answers stored
before personas were recorded (migration 0006) have none: their conversations get the persona
in force in their channel now.

A channel's history becomes several conversations where it pauses for longer than
`gap` (one line per sitting, not one endless line per channel), and a conversation
ends at its last assistant turn.
Authors are pseudonymised by default ("User 1", "User 2", ... in order of appearance
in each conversation), in the prefix and wherever their name appears in the text.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable

from .core.prompt import turn_to_message
from .core.types import Turn
from .messages import counted

DEFAULT_GAP = timedelta(hours=1)
PSEUDONYM = "User {number}"
# Names shorter than this are not replaced inside the text ("Al" would eat "Also").
MIN_NAME_LENGTH_TO_REPLACE = 3


@dataclass(frozen=True)
class ExportFilter:
    """Which stored turns go into an export. Dates are UTC days, both ends included."""

    guild_id: int | None = None
    channel_id: int | None = None
    since: date | None = None
    until: date | None = None
    min_turns: int = 2  # user + assistant turns a conversation needs to be kept
    include_dms: bool = False
    pseudonymise: bool = True
    gap: timedelta = DEFAULT_GAP

    @property
    def after(self) -> datetime | None:
        return datetime.combine(self.since, time.min, timezone.utc) if self.since else None

    @property
    def before(self) -> datetime | None:
        return datetime.combine(self.until + timedelta(days=1), time.min, timezone.utc) if self.until else None


@dataclass
class ExportSummary:
    """What an export wrote and what it left out, for the person who asked."""

    conversations: int = 0
    turns: int = 0
    left_out_opted_out: int = 0  # turns of people who opted out, and the answers to them
    left_out_short: int = 0  # conversations under min_turns
    left_out_unanswered: int = 0  # user turns no answer followed
    left_out_cut_short: int = 0  # answers stopped before their end (their questions go too)
    channels: set[int] = field(default_factory=set)

    def describe(self) -> str:
        conversations = counted("{count:,} conversation(s)", self.conversations)
        turns, channels = counted("{count:,} turn(s)", self.turns), counted("{count:,} channel(s)", len(self.channels))
        parts = [f"{conversations}, {turns} from {channels}"]
        for count, what in ((self.left_out_opted_out, "{count:,} turn(s) of people who opted out left out"),
                            (self.left_out_short, "{count:,} conversation(s) shorter than the minimum left out"),
                            (self.left_out_unanswered, "{count:,} unanswered question(s) left out"),
                            (self.left_out_cut_short, "{count:,} answer(s) cut short left out, with their questions")):
            if count:
                parts.append(counted(what, count))
        return "; ".join(parts)


# (guild_id, channel_id, turn), in channel then row order.
StoredTurns = AsyncIterator[tuple[int | None, int, Turn]]
PersonaFor = Callable[[int | None, int], Awaitable[str]]  # (guild_id, channel_id) -> the persona now


async def conversations(turns: StoredTurns, persona_for: PersonaFor, opted_out: set[int],
                        wanted: ExportFilter, summary: ExportSummary) -> AsyncIterator[dict]:
    """The export's lines, one conversation at a time, as {"messages": [...]} dicts."""
    current: dict[tuple[int | None, int], str] = {}  # the persona now, for answers without one recorded
    sitting: list[Turn] = []
    where: tuple[int | None, int] | None = None

    async def finish() -> dict | None:
        if where is None:
            return None
        guild_id, channel_id = where
        kept = _without_opted_out(sitting, opted_out, summary)

        async def persona_now() -> str:
            if where not in current:
                current[where] = await persona_for(guild_id, channel_id)
            return current[where]

        return await _conversation(persona_now, kept, channel_id, wanted, summary)

    async for guild_id, channel_id, turn in turns:
        if where != (guild_id, channel_id) or (sitting and _apart(sitting[-1], turn, wanted.gap)):
            line = await finish()
            if line:
                yield line
            sitting, where = [], (guild_id, channel_id)
        sitting.append(turn)
    line = await finish()
    if line:
        yield line


def _apart(previous: Turn, turn: Turn, gap: timedelta) -> bool:
    return bool(previous.created_at and turn.created_at and turn.created_at - previous.created_at > gap)


def _without_opted_out(turns: list[Turn], opted_out: set[int], summary: ExportSummary) -> list[Turn]:
    """Drop the turns of people who opted out, and the bot's answers to them."""
    kept, answering_opted_out = [], False
    for turn in turns:
        if turn.role == "user":
            answering_opted_out = turn.author_id in opted_out
        if answering_opted_out:
            summary.left_out_opted_out += 1
        else:
            kept.append(turn)
    return kept


async def _conversation(persona_now: Callable[[], Awaitable[str]], turns: list[Turn], channel_id: int,
                        wanted: ExportFilter, summary: ExportSummary) -> dict | None:
    kept = _answered_exchanges(turns, summary)
    if not kept or len(kept) < wanted.min_turns:
        if kept:
            summary.left_out_short += 1
        return None
    recorded = [turn.persona for turn in kept if turn.role == "assistant" and turn.persona is not None]
    persona = recorded[-1] if recorded else await persona_now()
    if wanted.pseudonymise:
        kept = pseudonymised(kept)
    summary.conversations += 1
    summary.turns += len(kept)
    summary.channels.add(channel_id)
    return {"messages": [{"role": "system", "content": persona}, *map(turn_to_message, kept)]}


def _answered_exchanges(turns: list[Turn], summary: ExportSummary) -> list[Turn]:
    """The turns from the first user turn on, without the user turns no answer followed
    (the next turn is another user turn, or there is none): a question without an answer
    teaches nothing, and a retried one would be learnt as a run of repeated lines. Answers cut
    short (a time limit, a restart, a person who stopped them) go with their questions: a
    fragment would teach the model to stop mid-sentence."""
    turns = _without_cut_short_answers(turns, summary)
    first = next((i for i, turn in enumerate(turns) if turn.role == "user"), None)
    if first is None:
        return []
    kept = []
    for i in range(first, len(turns)):
        turn = turns[i]
        if turn.role == "user" and (i + 1 == len(turns) or turns[i + 1].role == "user"):
            summary.left_out_unanswered += 1
        else:
            kept.append(turn)
    return kept


def _without_cut_short_answers(turns: list[Turn], summary: ExportSummary) -> list[Turn]:
    kept: list[Turn] = []
    for turn in turns:
        if turn.role == "assistant" and turn.cut_short:
            summary.left_out_cut_short += 1
            if kept and kept[-1].role == "user":  # the question it answered
                kept.pop()
        else:
            kept.append(turn)
    return kept


def pseudonymised(turns: Iterable[Turn]) -> list[Turn]:
    """Each author becomes "User N" (in order of appearance), in the name prefix and in
    the text wherever their name (or @name) appears as a whole word, the bot's answers included."""
    turns = list(turns)
    names: dict[str, str] = {}
    for turn in turns:
        if turn.role == "user" and turn.author_name and turn.author_name not in names:
            names[turn.author_name] = PSEUDONYM.format(number=len(names) + 1)
    replace = _name_replacer(names)
    return [Turn(role=turn.role, content=replace(turn.content),
                 author_name=names.get(turn.author_name) if turn.author_name else None,
                 id=turn.id, created_at=turn.created_at) for turn in turns]


def _name_replacer(names: dict[str, str]) -> Callable[[str], str]:
    replaceable = sorted((name for name in names if len(name) >= MIN_NAME_LENGTH_TO_REPLACE), key=len, reverse=True)
    if not replaceable:
        return lambda text: text
    pattern = re.compile(r"(?<!\w)@?(" + "|".join(map(re.escape, replaceable)) + r")(?!\w)", re.IGNORECASE)
    lowered = {name.lower(): pseudonym for name, pseudonym in names.items()}
    return lambda text: pattern.sub(lambda found: lowered[found.group(1).lower()], text)


def parse_day(text: str) -> date:
    """A YYYY-MM-DD date from a command line or a slash-command option."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-11-29") from None


async def write_jsonl(lines: AsyncIterator[dict], path: Path) -> int:
    """Write the lines to `path` atomically and say how many there were. A reader never sees
    half a file, and an export that failed or found nothing leaves `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    written = 0
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            async for line in lines:
                out.write(jsonl_line(line))
                written += 1
        if written:
            os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return written


async def jsonl_bytes(lines: AsyncIterator[dict]) -> bytes:
    return b"".join([jsonl_line(line).encode() async for line in lines])


def jsonl_line(line: dict) -> str:
    return json.dumps(line, ensure_ascii=False) + "\n"


async def export_lines(store, persona_for: PersonaFor, wanted: ExportFilter,
                       summary: ExportSummary) -> AsyncIterator[dict]:
    """The export of a Store (see Store.turns_in_order), with everyone who opted out left out."""
    opted_out = await store.opted_out_users()
    turns = store.turns_in_order(guild_id=wanted.guild_id, channel_id=wanted.channel_id,
                                 include_dms=wanted.include_dms, after=wanted.after, before=wanted.before)
    async for line in conversations(turns, persona_for, opted_out, wanted, summary):
        yield line
