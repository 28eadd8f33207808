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
