"""The /status text: what an admin wants to know at a glance, for every front end.

It reads what the model declares (its abilities and load, bot/llm/port.py), so any model
works: the batching engine, the one-at-a-time worker, a remote server.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from . import messages
from .llm.port import Abilities, ChatModel, ModelKind
from .telemetry import Load, Observer


def status_text(model: ChatModel, load: Load, observer: Observer, extra_lines: tuple[str, ...] = ()) -> str:
    lines = [messages.STATUS.format(
        model=model.name, context=model.context_tokens,
        context_source=f", {model.abilities.context_source}" if model.abilities.context_source else "",
        backend=describe_backend(model.abilities),
        queue=load.queue, waiting_turn=load.waiting_turn, waiting=load.waiting, writing=load.writing,
        uptime=format_duration(observer.uptime()), answered=observer.outcomes["answered"],
        refused=observer.outcomes["refused"], failed=observer.outcomes["failed"])]
    model_load = model.load()
    if model.abilities.kind is ModelKind.BATCHING:
        lines.append(messages.STATUS_SLOTS.format(used=model_load.active, slots=model.abilities.max_batch))
    if model.abilities.channel_caches:
        lines.append(messages.counted(messages.STATUS_PROMPT_CACHES, model_load.cached_channels))
    return "\n".join([*lines, *extra_lines])


def describe_backend(abilities: Abilities) -> str:
    if abilities.kind is ModelKind.REMOTE:
        return messages.STATUS_BACKEND_REMOTE.format(url=without_credentials(abilities.server_url or ""))
    if abilities.kind is ModelKind.BATCHING:
        return messages.STATUS_BACKEND_BATCHING.format(max_batch=abilities.max_batch)
    return messages.STATUS_BACKEND_WORKER


def without_credentials(url: str) -> str:
    """The URL without any user:password@ or query string: /status is shown to server admins."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def format_duration(seconds: float) -> str:
    """3 d 4 h, 2 h 5 min, 4 min 10 s, 12 s."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
