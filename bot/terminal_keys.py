"""The keyboard at the terminal chat: line editing, and what Ctrl-C and typed-ahead text do.

At the prompt, readline edits the line (arrows, Up/Down for earlier lines) and Ctrl-C clears
it. Ctrl-C is made a key there, not a signal: the terminal's interrupt character is switched
off while the prompt waits and readline binds the key to `kill-whole-line`. A signal would have
to reach the one thread blocked in readline's select(), which a process with model and database
threads cannot promise (the kernel hands a process's signal to any of its threads, and readline
only looks at signals that interrupt its own wait), so a signal-based prompt could miss a
Ctrl-C and sit there. While an answer is written, Ctrl-C is a signal again (the event loop
turns it into a call, from whichever thread got it) and the terminal does not echo what is
typed: it waits in the terminal's input queue and the next prompt shows it, ready to send.
"""

from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator

# A terminal's escape sequences (arrow keys and the like) and other control characters.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|.)?|[\x00-\x08\x0b-\x1f\x7f]")


def without_escapes(line: str) -> str:
    """A typed line as text: where line editing is missing, arrow keys arrive as escape
    sequences, which never belong in a message (or the stored history)."""
    return _ESCAPES.sub("", line)


def enable_line_editing() -> bool:
    """input() edits lines and keeps a history once readline is imported. True when Ctrl-C at
    the prompt can be a readline key (GNU readline; macOS's libedit reads bindings its own way)."""
    try:
        readline = importlib.import_module("readline")
    except ImportError:  # not on every platform; the prompt still works, without editing
        return False
    if "libedit" in (readline.__doc__ or ""):
        return False
    readline.parse_and_bind(r'"\C-c": kill-whole-line')
    return True


def ctrl_c_is_a_key(fd: int):
    """While the prompt waits: the terminal sends Ctrl-C to readline as a key, not as SIGINT."""

    def keyed(attributes: list, termios) -> None:
        attributes[6][termios.VINTR] = _disabled_character(fd)

    return _terminal_changed(fd, keyed)


def typing_waits(fd: int):
    """While an answer is written: what is typed is not echoed into it; the terminal keeps it
    for the next prompt."""

    def quiet(attributes: list, termios) -> None:
        attributes[3] &= ~termios.ECHO

    return _terminal_changed(fd, quiet)


@contextmanager
def _terminal_changed(fd: int, change: Callable[[list, object], None]) -> Iterator[None]:
    """The terminal's attributes changed by `change` for the block, as they were after it; no
    change where `fd` is no terminal."""
    termios = _termios()
    saved = _attributes(fd, termios)
    if saved is None:
        yield
        return
    changed = _copy(saved)
    change(changed, termios)
    termios.tcsetattr(fd, termios.TCSANOW, changed)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _termios():
    try:
        return importlib.import_module("termios")
    except ImportError:  # not a POSIX terminal: the keys keep their defaults
        return None


def _attributes(fd: int, termios) -> list | None:
    if termios is None:
        return None
    try:
        return termios.tcgetattr(fd)
    except (OSError, termios.error):  # not a terminal after all
        return None


def _copy(attributes: list) -> list:
    return [list(part) if isinstance(part, list) else part for part in attributes]


def _disabled_character(fd: int) -> bytes:
    """The value that switches a terminal control character off (_POSIX_VDISABLE)."""
    try:
        return bytes([os.fpathconf(fd, "PC_VDISABLE")])
    except (OSError, ValueError):
        return b"\x00"
