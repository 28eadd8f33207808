"""The /status text: what an admin wants to know at a glance, for every front end.

It reads the model through getattr, so any model front works: the batching engine (max_batch,
cached_keys), the one-at-a-time worker, the remote server's client (base_url).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import messages
from .telemetry import Load, Observer


def status_text(model: Any, load: Load, observer: Observer, extra_lines: tuple[str, ...] = ()) -> str:
    lines = [messages.STATUS.format(
        model=model.name, context=model.context_tokens, backend=describe_backend(model),
        queue=load.waiting + load.writing, waiting=load.waiting, writing=load.writing,
        uptime=format_duration(observer.uptime()), answered=observer.outcomes["answered"],
        refused=observer.outcomes["refused"], failed=observer.outcomes["failed"])]
    cached_keys = getattr(model, "cached_keys", None)
    if callable(cached_keys):
        lines.append(messages.STATUS_PROMPT_CACHES.format(count=len(cached_keys())))
    return "\n".join([*lines, *extra_lines])


def describe_backend(model: Any) -> str:
    base_url = getattr(model, "base_url", None)
    if base_url:
        return messages.STATUS_BACKEND_REMOTE.format(url=without_credentials(base_url))
    max_batch = getattr(model, "max_batch", None)
    if max_batch:
        return messages.STATUS_BACKEND_BATCHING.format(max_batch=max_batch)
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
