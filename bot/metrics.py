"""Prometheus metrics for `python -m bot run`, served at http://HOST:PORT/metrics when
`[metrics] enabled = true` (off by default).

Metrics is an Observer (bot/telemetry.py): the service reports each finished reply to it,
and the gauges read the service's live replies when Prometheus scrapes. Each instance has a
registry of its own, so several (in tests, say) never share numbers. The endpoint runs on
a thread of its own: it answers even while the event loop is busy.

What "tokens" means here: the model's output re-encoded with the model's tokenizer (the stop
token not counted) wherever this process has the tokenizer: every local model, and a remote
one whose tokenizer is on this machine. Otherwise (a remote model known only by name) the
streamed pieces of text are counted: OpenAI-compatible servers send about one a token.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from . import messages
from .config import MetricsSettings
from .llm.port import ChatModel
from .telemetry import ERROR_KINDS, REFUSAL_REASONS, Observer, ReplyTrace

log = logging.getLogger(__name__)

# From a 3B model on a GPU (tens of milliseconds) to a busy CPU with a long prompt (a minute).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# One answer's decoding speed: a few tokens a second in a full CPU batch, a few hundred for a
# 135M model alone, 30-100 for a 3B model on a GPU.
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0,
                             500.0)


class MetricsError(Exception):
    """The metrics endpoint cannot start. str() is one line for the operator."""


class Metrics(Observer):
    def __init__(self) -> None:
        super().__init__()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.queue_depth = Gauge(
            "smolbot_queue_depth", "Replies waiting for the model: asked for, no text yet (waiting for a "
            "place, or their prompt being read)", registry=registry)
        self.model_slots = Gauge(
            "smolbot_model_slots", "Replies the model can write at once (the batching engine's slots; 1 for the "
            "one-at-a-time worker; 0 for a remote server, which decides)", registry=registry)
        self.model_slots_in_use = Gauge(
            "smolbot_model_slots_in_use", "Replies the model is reading or writing now, as the model counts them",
            registry=registry)
        self.active_generations = Gauge(
            "smolbot_active_generations", "Replies the model is writing now", registry=registry)
        self.replies_in_progress = Gauge(
            "smolbot_replies_in_progress", "Messages being answered, those waiting for their channel's "
            "previous answer included", registry=registry)
        self.time_to_first_token = Histogram(
            "smolbot_time_to_first_token_seconds", "From asking the model for an answer to its first text, "
            "waiting for a place included", buckets=TTFT_BUCKETS, registry=registry)
        self.tokens_per_second = Histogram(
            "smolbot_tokens_per_second", "Decoding speed of each answer: output tokens after the first over "
            "the seconds from the first to the last (tokens from the model's tokenizer where this process "
            "has it, else streamed pieces)", buckets=TOKENS_PER_SECOND_BUCKETS, registry=registry)
        self.output_tokens = Counter(
            "smolbot_output_tokens", "Tokens the model wrote (counted as for smolbot_tokens_per_second)",
            registry=registry)
        self.replies = Counter("smolbot_replies", "Answers written by the model and given, those cut short "
                               "included", registry=registry)
        self.refusals = Counter("smolbot_refusals", "Messages refused, by reason", ["reason"], registry=registry)
        self.errors_by_kind = Counter("smolbot_errors", "Failures, by kind", ["kind"], registry=registry)
        for reason in REFUSAL_REASONS:  # every series exists from the start, at 0
            self.refusals.labels(reason)
        for kind in ERROR_KINDS:
            self.errors_by_kind.labels(kind)
        self._count_tokens: Callable[[ReplyTrace], int] = lambda trace: trace.pieces
        self._server: Any = None
        self._thread: Any = None

    def watch(self, service: Any) -> None:
        self.queue_depth.set_function(lambda: service.load().waiting)
        self.active_generations.set_function(lambda: service.load().writing)
        self.replies_in_progress.set_function(lambda: service.load().in_progress)
        model = service.model
        self.model_slots.set(model.abilities.max_batch)
        self.model_slots_in_use.set_function(lambda: model.load().active)
        self._count_tokens = output_token_counter(model)

    def reply_done(self, trace: ReplyTrace) -> None:
        super().reply_done(trace)
        if trace.time_to_first_token is not None:
            self.time_to_first_token.observe(trace.time_to_first_token)
        if trace.outcome == "answered":
            self.replies.inc()
        elif trace.outcome == "refused":
            self.refusals.labels(trace.reason).inc()
        if trace.error_kind:
            self.errors_by_kind.labels(trace.error_kind).inc()
        if trace.answer:
            tokens = self._count_tokens(trace)
            self.output_tokens.inc(tokens)
            speed = trace.tokens_per_second(tokens) if trace.outcome == "answered" else None
            if speed is not None:
                self.tokens_per_second.observe(speed)

    def error(self, kind: str) -> None:
        super().error(kind)
        self.errors_by_kind.labels(kind).inc()

    def exposition(self) -> bytes:
        """The metrics as Prometheus scrapes them."""
        return generate_latest(self.registry)

    # The HTTP endpoint --------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise MetricsError(messages.METRICS_CANNOT_LISTEN.format(
                address=f"{host}:{port}", reason=error.strerror or error)) from None
        log.info("Prometheus metrics at http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None


def output_token_counter(model: ChatModel) -> Callable[[ReplyTrace], int]:
    """How to count an answer's tokens: with the model's tokenizer where it is here, else its pieces."""
    return lambda trace: model.output_tokens(trace.answer) or trace.pieces


def serving_metrics(settings: MetricsSettings) -> Metrics:
    """New metrics, served at [metrics] host:port."""
    metrics = Metrics()
    metrics.serve(settings.host, settings.port)
    return metrics
