"""Shared HTTP helpers: Discord-style JSON responses and errors.

discord.py only parses a body as JSON when ``Content-Type`` is exactly
``application/json``; aiohttp's ``json_response`` appends ``; charset=utf-8``
(as does ``web.Response(text=...)``), which makes discord.py treat every body
as a string and breaks login. So we always send bytes with an explicit header.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from aiohttp import web

# Discord JSON error codes used by the fake.
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
MISSING_ACCESS = 50001
CANNOT_EDIT_OTHERS_MESSAGE = 50005
EMPTY_MESSAGE = 50006
MISSING_PERMISSIONS = 50013
INVALID_FORM_BODY = 50035
ALREADY_ACKNOWLEDGED = 40060
THREAD_LOCKED = 160005


class ApiError(Exception):
    """Raised by handlers; rendered as Discord's ``{"message", "code"}`` body."""

    def __init__(self, status: int, code: int, message: str, errors: Optional[dict] = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict:
        data: Dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def not_found(code: int, what: str) -> ApiError:
    return ApiError(404, code, f"Unknown {what}")


def form_error(field: str, code: str, message: str) -> ApiError:
    """400 Invalid Form Body with Discord's nested ``errors`` structure."""
    return ApiError(
        400, INVALID_FORM_BODY, "Invalid Form Body", {field: {"_errors": [{"code": code, "message": message}]}}
    )


def json_response(data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


def error_response(error: ApiError, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return json_response(error.body(), error.status, headers)
