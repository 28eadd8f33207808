"""llama.cpp's two servers for the remote-backend tests, serving the embedded SmolLM2 GGUF on
loopback, as people run them:

- PyPI's `llama-cpp-python[server]` (`python -m llama_cpp.server`), in a virtual environment of
  its own (build/llama-venv, made by `make test`: the build from source takes minutes once,
  then pip's wheel cache makes a new environment quick);
- llama.cpp's own C++ `llama-server`, built by `make test` from the llama.cpp source that
  llama-cpp-python's source package carries (tests/support/build_llama_server.sh), kept in
  ~/.cache/smolbot-tests.

Where one is missing its tests are skipped, and the summary says so in capitals, as for
PostgreSQL.
"""

from __future__ import annotations

import json
import re
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
CONTEXT_TOKENS = 2048  # what the tests start them with (their own default too)
LLAMA_CPP_PYTHON, LLAMA_SERVER = "llama-cpp-python", "llama-server"  # the two servers
# One thread: llama.cpp's threads spin at each step's barrier, and on two cores shared with the
# suite two of them slowed a 48-token answer past two minutes.
THREADS = "1"


def llama_server_binary() -> Path:
    """Where `make test` puts llama-server: named by the llama-cpp-python version the Makefile builds."""
    version = re.search(r"^LLAMA_CPP_VERSION := (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    return Path.home() / ".cache" / "smolbot-tests" / f"llama.cpp-{version.group(1)}" / "llama-server"


def unavailable(flavour: str) -> str | None:
    """Why that server cannot run here, or None."""
    if flavour == LLAMA_SERVER:
        binary = llama_server_binary()
        return None if binary.exists() else f"no {binary} (make test builds it: `make llama-server`)"
    if not LLAMA_PYTHON.exists():
        return f"no {LLAMA_PYTHON.relative_to(REPO_ROOT)} (make test builds it: `make llama-server`)"
    check = subprocess.run([str(LLAMA_PYTHON), "-c", "import llama_cpp.server"], capture_output=True, text=True)
    if check.returncode != 0:
        return f"llama_cpp.server does not import: {check.stderr.strip().splitlines()[-1:]}"
    return None


def _command(flavour: str, gguf: Path, port: int, interrupt_requests: bool) -> list[str]:
    if flavour == LLAMA_SERVER:  # one slot, as llama-cpp-python serves one request at a time
        return [str(llama_server_binary()), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--ctx-size", str(CONTEXT_TOKENS), "--parallel", "1", "--threads", THREADS,
                "--threads-batch", THREADS, "--jinja"]
    return [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(CONTEXT_TOKENS), "--n_threads", THREADS, "--n_threads_batch", THREADS,
            "--interrupt_requests", str(interrupt_requests)]


class LlamaServer:
    """A running llama.cpp server (`flavour`: LLAMA_CPP_PYTHON or LLAMA_SERVER); `stop` and
    `start` again on the same port (a server killed and restarted mid-conversation)."""

    def __init__(self, gguf: Path, log_path: Path, *, flavour: str = LLAMA_CPP_PYTHON,
                 interrupt_requests: bool = False):
        self.flavour = flavour
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._command = _command(flavour, gguf, self.port, interrupt_requests)
        self._log_path = log_path
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self._log_path, "ab")
        self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.flavour} exited ({self._process.returncode}); see {self._log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if json.loads(response.read()).get("data"):
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.flavour} was not ready within {READY_TIMEOUT_S} s; see {self._log_path}")

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

