"""Recording of every REST request, and fault injection.

Tests assert on what the bot *sent* (``RequestLog``) and make Discord
misbehave on purpose (``FaultInjector``). Paths are stored without the
``/api/v10`` prefix, e.g. ``/channels/123/messages``. Patterns may contain
``{placeholders}`` matching one path segment: ``/channels/{id}/messages``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from aiohttp import web

_PLACEHOLDER = re.compile(r"\\\{[^/]*?\\\}")


def compile_pattern(pattern: str) -> "re.Pattern[str]":
    """``/channels/{id}/messages`` -> regex matching exactly one path."""
    regex = _PLACEHOLDER.sub(r"[^/]+", re.escape(pattern))
    return re.compile(f"^{regex}$")


def method_matches(wanted: str, method: str) -> bool:
    return wanted == "*" or wanted.upper() == method.upper()


@dataclass
class RecordedFile:
    field: str  # form field name, e.g. "files[0]"
    filename: Optional[str]
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    raw_body: bytes
    # Parsed JSON body; for multipart requests the parsed ``payload_json`` part,
    # so tests can check ``.json`` regardless of whether files were attached.
    json: Any = None
    files: List[RecordedFile] = field(default_factory=list)
    form: Dict[str, Any] = field(default_factory=dict)  # non-file multipart fields
    time: float = field(default_factory=time.monotonic)
    status: Optional[int] = None  # filled in once answered
    response: Any = None  # parsed JSON we answered with, if any
    fault: bool = False  # answered by an injected fault

    def matches(self, method: str, pattern: str) -> bool:
        return method_matches(method, self.method) and bool(compile_pattern(pattern).match(self.path))


def parse_body(content_type: str, body: bytes) -> tuple:
    """-> (json, files, form) for a JSON, multipart or empty body."""
    if not body:
        return None, [], {}
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json":
        return json.loads(body), [], {}
    if mime == "multipart/form-data":
        return _parse_multipart(content_type, body)
    return None, [], {}


def _parse_multipart(content_type: str, body: bytes) -> tuple:
    # The stdlib MIME parser handles form-data fine once given the header
    # carrying the boundary; it saves us a hand-written multipart parser.
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    payload, files, form = None, [], {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files.append(RecordedFile(name, filename, part.get_content_type(), data))
        elif name == "payload_json":
            payload = json.loads(data)
        else:
            form[name] = data.decode("utf-8", "replace")
    return payload, files, form


# Where the middleware stores the RecordedRequest on the aiohttp request.
# (RequestKey avoids aiohttp's NotAppKeyWarning; older aiohttp lacks it.)
RECORDED_KEY: Any = web.RequestKey("recorded", RecordedRequest) if hasattr(web, "RequestKey") else "recorded"


class RequestLog:
    """Append-only list of requests plus async waiting on them."""

    def __init__(self) -> None:
        self.requests: List[RecordedRequest] = []
        self._changed = asyncio.Condition()

    def add(self, request: RecordedRequest) -> None:
        self.requests.append(request)

    async def completed(self) -> None:
        """Wake waiters; called once a recorded request has been answered."""
        async with self._changed:
            self._changed.notify_all()

    def matching(self, method: str, pattern: str, *, answered_only: bool = False) -> List[RecordedRequest]:
        regex = compile_pattern(pattern)
        return [
            r
            for r in self.requests
            if method_matches(method, r.method) and regex.match(r.path) and (r.status is not None or not answered_only)
        ]

    async def wait_for(
        self,
        method: str,
        pattern: str,
        *,
        count: int = 1,
        predicate: Optional[Callable[[RecordedRequest], bool]] = None,
        timeout: float = 2.0,
    ) -> RecordedRequest:
        """Wait until ``count`` answered requests match; return the last of them."""

        def found() -> List[RecordedRequest]:
            hits = self.matching(method, pattern, answered_only=True)
            return [r for r in hits if predicate is None or predicate(r)]

        async def wait() -> RecordedRequest:
            async with self._changed:
                await self._changed.wait_for(lambda: len(found()) >= count)
                return found()[count - 1]

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            seen = [f"{r.method} {r.path} -> {r.status}" for r in self.requests]
            raise AssertionError(
                f"no {count} answered request(s) {method} {pattern} within {timeout}s; seen: {seen}"
            ) from None


@dataclass
class FaultRule:
    method: str
    pattern: str
    status: int
    remaining: int
    retry_after: float = 0.05
    is_global: bool = False
    body: Optional[dict] = None
    via: bool = True  # a 429 with Discord's Via header (see FakeDiscord.fail_next)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and method_matches(self.method, method)
            and bool(compile_pattern(self.pattern).match(path))
        )


class FaultInjector:
    def __init__(self) -> None:
        self.rules: List[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> Optional[FaultRule]:
        """The first armed rule for this request, consuming one use of it."""
        for rule in self.rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                return rule
        return None

    def clear(self) -> None:
        self.rules.clear()
