"""A real OpenAI-compatible server on loopback for the remote-backend tests and bench:
`transformers serve` (shipped with transformers, extra `transformers[serving]`) pinned to the
embedded SmolLM2-135M model's local directory, offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Iterator

from tests.support.ports import free_port

READY_TIMEOUT_S = 90


@asynccontextmanager
async def stub_server(app) -> AsyncIterator[str]:
    """Serve an aiohttp web.Application on a free loopback port, for answers a real server will not
    give on demand; yields the API root (http://127.0.0.1:PORT/v1)."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@contextmanager
def transformers_server(model_dir: Path, log_path: Path) -> Iterator[str]:
    """Start `transformers serve` on a free port, wait until /health answers, yield the API root
    (http://127.0.0.1:PORT/v1), and stop the server at the end."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32", str(model_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_until_healthy(server, f"http://127.0.0.1:{port}/health", log_path)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_until_healthy(server: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"transformers serve exited ({server.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"transformers serve was not ready within {READY_TIMEOUT_S} s; see {log_path}")
