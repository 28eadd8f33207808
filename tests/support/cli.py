"""`python -m bot ...` run as a user runs it: a real process, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.settings import REPO_ROOT


def run_bot(*args: str, timeout: float, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    """`python -m bot ARGS` in `cwd`, with `env` (this process's environment when None) and
    `input` on its standard input; returns the finished process, its output as text."""
    return subprocess.run([sys.executable, "-m", "bot", *args], input=input, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def chat(database, text, *extra_args, env: dict[str, str] | None = None):
    """Run the terminal chat on the embedded model, greedy, as user Ann; return the finished process."""
    env = {**os.environ, "BOT_MODEL_NAME": "embedded", "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
           "BOT_GENERATION_DO_SAMPLE": "false", "BOT_MODEL_DTYPE": "float32", "BOT_GENERATION_MAX_NEW_TOKENS": "40",
           **(env or {})}
    return run_bot("chat", "--user", "Ann", *extra_args, input=text, env=env, timeout=300)


def bot_lines(output):
    """The terminal chat's answers ("bot> ..." lines)."""
    return [line for line in output.splitlines() if line.startswith("bot> ")]


def chat_env(database, **extra: str) -> dict[str, str]:
    """The environment `chat` runs the terminal chat in: the embedded model, greedy, on `database`."""
    return {**os.environ, "BOT_MODEL_NAME": "embedded", "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "BOT_GENERATION_DO_SAMPLE": "false", "BOT_MODEL_DTYPE": "float32", "BOT_GENERATION_MAX_NEW_TOKENS": "40",
            "TERM": "xterm", **extra}


class TerminalSession:
    """`python -m bot ARGS` on a pseudo-terminal, as a person at a keyboard runs it: `type` sends
    keys (b"\\r" is Enter, b"\\x03" Ctrl-C, b"\\x04" Ctrl-D, b"\\x1b[A" the Up arrow), `expect`
    waits for output. `output` is everything the terminal was sent so far."""

    def __init__(self, *args: str, env: dict[str, str], cwd: Path = REPO_ROOT, stderr_path: Path):
        import fcntl
        import termios

        master, slave = os.openpty()
        self._master = master
        self._stderr = open(stderr_path, "wb")

        def controlling_terminal() -> None:  # the child gets Ctrl-C as SIGINT, as in a shell
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen([sys.executable, "-m", "bot", *args], stdin=slave, stdout=slave,
                                        stderr=self._stderr, cwd=cwd, env=env, preexec_fn=controlling_terminal,
                                        close_fds=True)
        os.close(slave)
        self.output = ""
        self._seen = 0  # where the next expect starts looking

    def type(self, keys: bytes | str) -> None:
        os.write(self._master, keys.encode() if isinstance(keys, str) else keys)

    def expect(self, text: str, timeout: float = 300) -> str:
        """Wait until `text` appears after what the previous expect matched; returns the output
        in between (with `text`)."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self._seen)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} never came; the terminal shows:\n{self.output[self._seen:]!r}")
            ready, _, _ = select.select([self._master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk:
                    if self.process.poll() is not None:
                        raise AssertionError(f"the chat ended before {text!r}; it showed:\n"
                                             f"{self.output[self._seen:]!r}")
                    continue
                self.output += chunk.decode(errors="replace")
        start, self._seen = self._seen, found + len(text)
        return self.output[start:self._seen]

    def close(self, timeout: float = 60) -> int:
        """Wait for the process to end (killing it past `timeout`); returns its exit code."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self._stderr.close()
        return code

    def kill(self) -> None:
        """End it now, if it still runs (a test that failed half-way)."""
        if self.process.poll() is None:
            self.process.kill()
        self.close()
