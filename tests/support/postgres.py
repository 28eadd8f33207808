"""A throwaway PostgreSQL server for the suite: initdb into a temp dir, started on loopback.

Loaded as a pytest plugin (tests/conftest.py). The `postgres_server` session fixture starts the
server once (about a second) and stops it at the end of the session; `fresh_postgres_url` hands
each test its own empty database. When the server cannot start (no binaries, no `postgres`
user to run it as root), the PostgreSQL tests are skipped and the terminal summary says so in
capitals: a silent skip would let PostgreSQL support rot unnoticed.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.loud_skips import skip_loudly
from tests.support.ports import free_port

SERVER_BINARY_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30
_database_numbers = itertools.count(1)


class PostgresUnavailable(Exception):
    """The server cannot be started here; str() says why."""


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    bin_dir: Path
    run_as: str | None  # the OS user the server runs as, when we are root

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        _run(self, "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", check=False)


def find_bin_dir() -> Path:
    """Debian's versioned server binaries (newest first), else whatever initdb is on PATH."""
    for candidate in sorted(glob.glob(SERVER_BINARY_GLOB), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailable(f"no initdb/pg_ctl in {SERVER_BINARY_GLOB} or on PATH "
                              "(install Debian's `postgresql` package)")


def os_user_for_server() -> str | None:
    """PostgreSQL refuses to run as root; then it runs as the `postgres` OS user."""
    if os.geteuid() != 0:
        return None
    try:
        import pwd
        pwd.getpwnam(SUPERUSER)
    except KeyError as error:
        raise PostgresUnavailable("running as root and there is no `postgres` OS user to run the server as") from error
    return SUPERUSER


def _run(server: PostgresServer, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [str(server.bin_dir / tool), *args]
    if server.run_as:
        command = ["runuser", "-u", server.run_as, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if check and result.returncode != 0:
        raise PostgresUnavailable(f"{tool} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result


def start_server() -> tuple[PostgresServer, Path]:
    """initdb and start; returns the server and the temp dir to remove after it stops."""
    bin_dir, run_as = find_bin_dir(), os_user_for_server()
    # Not under pytest's tmp dir: that is private to root, and the server may run as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="bot-tests-pg-"))
    if run_as:
        shutil.chown(root, user=run_as)
    server = PostgresServer(root / "data", free_port(), bin_dir, run_as)
    # No fsync: the data is thrown away, and syncing would make each test's CREATE DATABASE slow.
    _run(server, "initdb", "-D", str(server.data_dir), "-U", SUPERUSER, "--auth=trust", "-N", "-E", "UTF8")
    options = f"-h 127.0.0.1 -p {server.port} -k {root} -F -c full_page_writes=off"
    _run(server, "pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D", str(server.data_dir),
         "-l", str(root / "server.log"), "-o", options)
    return server, root


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server, root = start_server()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as error:
        skip_loudly(f"PostgreSQL TESTS SKIPPED: the test server could not start: {error}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_server) -> str:
    """A new, empty database on the session's server: tests never see each other's rows.
    Synchronous (its own loop, in a thread) so that sync fixtures and tests can use it too."""
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, create_database(postgres_server, name)).result()
    return postgres_server.url(name)


async def create_database(server: PostgresServer, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(host="127.0.0.1", port=server.port, user=SUPERUSER, database="postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()

