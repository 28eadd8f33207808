"""llama.cpp's server for the remote-backend tests: the one in PyPI's `llama-cpp-python[server]`,
serving the embedded SmolLM2 GGUF on loopback, as people run it.

It lives in a virtual environment of its own (build/llama-venv, made by `make test`: the build
from source takes minutes once, then pip's wheel cache makes a new environment quick), apart
from the bot's. Where it is missing the tests of it are skipped, and the summary says so in
capitals, as for PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.ports import free_port
from tests.support.settings import REPO_ROOT

LLAMA_PYTHON = REPO_ROOT / "build" / "llama-venv" / "bin" / "python"
READY_TIMEOUT_S = 120
CONTEXT_TOKENS = 2048  # what the tests start it with (its own default too)


def unavailable() -> str | None:
    """Why llama-cpp-python's server cannot run here, or None."""
    if not LLAMA_PYTHON.exists():
        return f"no {LLAMA_PYTHON.relative_to(REPO_ROOT)} (make test builds it: `make llama-server`)"
    check = subprocess.run([str(LLAMA_PYTHON), "-c", "import llama_cpp.server"], capture_output=True, text=True)
    if check.returncode != 0:
        return f"llama_cpp.server does not import: {check.stderr.strip().splitlines()[-1:]}"
    return None


class LlamaServer:
    """A running `python -m llama_cpp.server`; `stop` and `start` again on the same port (a
    server killed and restarted mid-conversation)."""

    def __init__(self, gguf: Path, log_path: Path, *, interrupt_requests: bool = False):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._command = [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                         "--port", str(self.port), "--n_ctx", str(CONTEXT_TOKENS),
                         # One thread: llama.cpp's threads spin at each step's barrier, and on two cores
                         # shared with the suite two of them slowed a 48-token answer past two minutes.
                         "--n_threads", "1", "--n_threads_batch", "1",
                         "--interrupt_requests", str(interrupt_requests)]
        self._log_path = log_path
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self._log_path, "ab")
        self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self._process.returncode}); see {self._log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if json.loads(response.read()).get("data"):
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"llama_cpp.server was not ready within {READY_TIMEOUT_S} s; see {self._log_path}")

    def kill(self) -> None:
        """Gone at once, as a crashed or killed server is."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def llama_server(gguf: Path, log_path: Path, **options) -> Iterator[LlamaServer]:
    server = LlamaServer(gguf, log_path, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()

