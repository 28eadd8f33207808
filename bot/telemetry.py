"""What the bot tells its operator about its own work, without Prometheus: one log line per
event, how each reply went (ReplyTrace), and the running totals that /status shows.

Log lines are `event=NAME key=value ...` (readable, and easy to grep), or JSON lines with
the same keys (`--log-format json`). They carry ids, timings and outcomes, never what anyone
wrote, the persona or the model's answer: those appear only in debug logging (-v).
bot/metrics.py builds the Prometheus metrics on top of the Observer defined here.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .core.types import IncomingMessage, Reply

log = logging.getLogger(__name__)

# Refusal reasons and error kinds, as they appear in logs and metric labels.
REFUSAL_REASONS = ("empty", "too_long", "rate_limited", "busy", "prompt_too_long", "restarting")
ERROR_KINDS = ("timeout", "generation_failed", "empty_answer", "storage", "post_failed", "unexpected")


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, *, exc_info: Any = None,
              **fields: Any) -> None:
    """One line for one event: `event=reply guild=1 channel=2 outcome=answered ttft_ms=120`.
    Fields that are None are left out; the JSON format writes the same fields as keys."""
    if not logger.isEnabledFor(level):
        return
    fields = {key: value for key, value in fields.items() if value is not None}
    text = " ".join([f"event={event}", *(f"{key}={_shown(value)}" for key, value in fields.items())])
    logger.log(level, "%s", text, exc_info=exc_info, extra={"event": event, "event_fields": fields})


def _shown(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class JsonLinesFormatter(logging.Formatter):
    """One JSON object a line, for log aggregators: time, level, logger, then either the event
    and its fields, or the plain message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name}
        event = getattr(record, "event", None)
        if event:
            entry.update(event=event, **getattr(record, "event_fields", {}))
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


@dataclass(eq=False)  # compared (and hashed) by identity: the service keeps the live ones in a set
class ReplyTrace:
    """How one reply went, filled in by the service as it happens (monotonic clock)."""

    guild_id: int | None
    channel_id: int
    user_id: int
    message_id: int | None = None
    started: float = field(default_factory=time.monotonic)
    asked_model: float | None = None  # when the model was asked for the answer
    first_piece: float | None = None  # when its first text arrived
    last_piece: float | None = None
    model_done: float | None = None
    pieces: int = 0  # streamed pieces of text
    answer: str = field(default="", repr=False)  # the model's raw output: never logged
    outcome: str = "answered"  # answered | refused | failed
    reason: str | None = None  # the refusal reason or error kind
    cut_short: str | None = None  # an answer stopped early: timeout | reset | restart | stopped | interrupted
    error: str | None = None  # the exception's class (a database's own message too), never content
    dropped_turns: int = 0
    ended: float | None = None

    @classmethod
    def of(cls, message: IncomingMessage) -> "ReplyTrace":
        return cls(message.guild_id, message.channel_id, message.author_id, message.message_id)

    # Filled in by the service -------------------------------------------------------

    def asking_model(self) -> None:
        self.asked_model = time.monotonic()

    def piece(self) -> None:
        now = time.monotonic()
        self.first_piece = self.first_piece or now
        self.last_piece = now
        self.pieces += 1

    def model_finished(self, answer: str) -> None:
        self.model_done = time.monotonic()
        self.answer = answer

    def refusal(self, reason: str, text: str) -> Reply:
        """The reply that refuses the message, `reason` being one of REFUSAL_REASONS."""
        self.outcome, self.reason = "refused", reason
        return Reply(text, ok=False)

    def failure(self, kind: str, text: str) -> Reply:
        """The reply that says answering failed, `kind` being one of ERROR_KINDS."""
        self.outcome, self.reason = "failed", kind
        return Reply(text, ok=False)

    # Read by observers --------------------------------------------------------------

    @property
    def waiting_for_model(self) -> bool:
        return self.asked_model is not None and self.first_piece is None and self.model_done is None

    @property
    def being_written(self) -> bool:
        return self.first_piece is not None and self.model_done is None

    @property
    def error_kind(self) -> str | None:
        """What went wrong, if anything: a failure's kind, or a timeout that cut an answer short."""
        if self.outcome == "failed":
            return self.reason
        return "timeout" if self.cut_short == "timeout" else None

    @property
    def time_to_first_token(self) -> float | None:
        if self.asked_model is None or self.first_piece is None:
            return None
        return self.first_piece - self.asked_model

    def tokens_per_second(self, tokens: int) -> float | None:
        """Decoding speed: the tokens after the first over the time from the first to the last
        piece. None for an answer that came in one piece (nothing to time)."""
        if tokens < 2 or self.first_piece is None or self.last_piece is None:
            return None
        span = self.last_piece - self.first_piece
        return (tokens - 1) / span if span > 0 else None

    def log_fields(self) -> dict[str, Any]:
        total = (self.ended or time.monotonic()) - self.started
        return {"guild": self.guild_id, "channel": self.channel_id, "user": self.user_id,
                "message_id": self.message_id, "outcome": self.outcome, "reason": self.reason,
                "cut_short": self.cut_short, "error": self.error, "ttft_ms": milliseconds(self.time_to_first_token),
                "total_ms": milliseconds(total), "pieces": self.pieces or None,
                "dropped_turns": self.dropped_turns or None}


@dataclass(frozen=True)
class Load:
    """Replies in the service right now."""

    in_progress: int = 0  # every message being answered, those waiting for their channel's turn too
    waiting: int = 0  # asked the model, no text yet (waiting for a place, or their prompt being read)
    writing: int = 0  # the model is writing them
    waiting_turn: int = 0  # queued behind an earlier message of their channel

    @property
    def queue(self) -> int:
        """Every message not answered yet: waiting their channel's turn, for the model, or being written."""
        return self.waiting_turn + self.waiting + self.writing


def load_of(traces: list[ReplyTrace], waiting_turn: int = 0) -> Load:
    """`traces`: the replies taken in; `waiting_turn`: messages queued behind them in their channel."""
    return Load(len(traces) + waiting_turn, sum(t.waiting_for_model for t in traces),
                sum(t.being_written for t in traces), waiting_turn)


class Observer:
    """What the service reports as it works. This one logs one line per reply and keeps the
    totals that /status shows; Metrics (bot/metrics.py) feeds Prometheus as well."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.outcomes: Counter[str] = Counter()  # answered / refused / failed since start
        self.errors: Counter[str] = Counter()

    def watch(self, service: Any) -> None:
        """Called once by the ChatService this observer belongs to."""

    def reply_done(self, trace: ReplyTrace) -> None:
        trace.ended = trace.ended or time.monotonic()
        self.outcomes[trace.outcome] += 1
        if trace.error_kind:
            self.errors[trace.error_kind] += 1
        level = logging.INFO
        if trace.outcome == "failed":  # the bot's own side (its database, its code) is worse than a model's hiccup
            level = logging.ERROR if trace.reason in ("storage", "unexpected") else logging.WARNING
        log_event(logging.getLogger("bot.service"), "reply", level, **trace.log_fields())
        if trace.answer:
            logging.getLogger("bot.service").debug("answer in channel %s: %r", trace.channel_id, trace.answer)

    def error(self, kind: str) -> None:
        """A failure outside a reply's own flow (a post Discord refused): counted, the caller logs it."""
        self.errors[kind] += 1

    def uptime(self) -> float:
        return time.monotonic() - self.started
