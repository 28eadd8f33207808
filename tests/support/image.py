"""The Docker image, built and run for real (tests/test_image.py).

No registry is reachable from the test machines, so `python:3.11-slim` cannot be pulled: the
image is built `FROM` a local Debian bookworm base (Python 3.11) that debootstrap makes once and
Docker keeps (`BASE_IMAGE`). The base trusts this machine's CA bundle, so that pip inside the
build reaches PyPI the way pip on this machine does. torch comes from a one-package index served
from this machine's CPU wheel (/opt/wheels), passed as the Dockerfile's `TORCH_INDEX`, the same
build argument compose.yaml sets to PyTorch's CPU index.

Where no Docker engine can be reached or started, or debootstrap is missing, `ImageUnavailable`
says why and the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from tests.support.settings import REPO_ROOT

BASE_IMAGE = "smolbot-test-base:bookworm-1"  # bump the tag when the recipe below changes
IMAGE = "smolbot:test"
TEST_LABEL = "smolbot-test-image=1"  # marks the images these tests build, to remove the old ones
BASE_CACHE = Path(os.environ.get("SMOLBOT_TEST_BASE_CACHE", "/var/cache/smolbot-test-base"))
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CPU_TORCH_WHEELS = "/opt/wheels/torch-*+cpu-*.whl"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# A fixed port keeps the TORCH_INDEX build argument, and so Docker's layer cache, the same from
# one session to the next; another port is taken only when this one is busy.
TORCH_INDEX_PORT = 47613

DOCKERD_START_S = 90
DEBOOTSTRAP_S = 900
IMPORT_S = 300
BUILD_S = 1800  # cold on two loaded cores: several minutes, mostly pip
QUICK_S = 60


class ImageUnavailable(Exception):
    """The image cannot be built or run here; str() says why."""


def docker(*args: str, timeout: float = QUICK_S, check: bool = True, input: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                            env=env, **stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=QUICK_S).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# Tried in turn: the default, then settings for hosts without overlayfs or iptables.
DOCKERD_VARIANTS = ([], ["--storage-driver=vfs", "--iptables=false", "--bridge=none"])


def ensure_engine() -> None:
    """A Docker engine answers `docker info`: the running one, else a dockerd started here."""
    if shutil.which("docker") is None:
        raise ImageUnavailable("no `docker` client (install Debian's docker.io)")
    if _engine_answers():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise ImageUnavailable("no Docker engine answers, and dockerd cannot be started here "
                               "(needs Debian's docker.io, run as root)")
    failures = []
    for options in DOCKERD_VARIANTS:
        log = Path(tempfile.gettempdir()) / "smolbot-test-dockerd.log"
        with open(log, "wb") as out:
            # Left running after the session, like a system service: later sessions reuse it.
            process = subprocess.Popen([dockerd, *options], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + DOCKERD_START_S
        while time.monotonic() < deadline:
            if _engine_answers():
                return
            try:
                process.wait(timeout=1)  # exited: this variant failed; otherwise ask again
            except subprocess.TimeoutExpired:
                continue
            break
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        failures.append(f"dockerd {' '.join(options)}: {' | '.join(tail) or 'no output'}")
    raise ImageUnavailable("dockerd did not start: " + "; ".join(failures))


def ensure_base() -> str:
    """The local Debian bookworm base image, made once with debootstrap (about a minute)."""
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise ImageUnavailable("no debootstrap to make the local Debian base image (install Debian's debootstrap)")
    if os.geteuid() != 0:
        raise ImageUnavailable("debootstrap needs root to make the local Debian base image")
    rootfs = BASE_CACHE / "rootfs"
    done = BASE_CACHE / "rootfs.complete"
    if not done.exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        BASE_CACHE.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", str(rootfs), DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=DEBOOTSTRAP_S)
        if made.returncode != 0:
            raise ImageUnavailable(f"debootstrap failed: {(made.stderr or made.stdout).strip()[-800:]}")
        done.touch()
    if HOST_CA_BUNDLE.exists():  # trust what this machine trusts (a proxy's CA, where there is one)
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["docker", "import",
             "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
             "-", BASE_IMAGE],
            stdin=tar.stdout, capture_output=True, text=True, timeout=IMPORT_S)
    finally:
        tar.stdout.close()
        tar.wait(timeout=IMPORT_S)
    if imported.returncode != 0:
        raise AssertionError(f"docker import failed: {imported.stderr[-2000:]}")
    return BASE_IMAGE


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def torch_index() -> Iterator[str]:
    """A package index offering this machine's CPU torch wheel, on loopback, for TORCH_INDEX.
    Without such a wheel: PyTorch's own CPU index."""
    wheels = sorted(glob.glob(CPU_TORCH_WHEELS))
    if not wheels:
        yield PYTORCH_CPU_INDEX
        return
    with tempfile.TemporaryDirectory(prefix="smolbot-torch-index-") as root:
        (Path(root) / "torch").mkdir()
        for wheel in wheels:
            os.symlink(wheel, Path(root) / "torch" / Path(wheel).name)
        handler = functools.partial(_QuietHandler, directory=root)
        port = TORCH_INDEX_PORT if _port_is_free(TORCH_INDEX_PORT) else 0
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            # A directory listing is a valid simple index page: links named after the wheels.
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=30)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def build_image(base: str) -> tuple[subprocess.CompletedProcess, float]:
    """`docker build` of the repository's Dockerfile on `base`; the result and its seconds.
    The classic builder (no buildx plugin here); host networking so that pip reaches PyPI and
    the loopback torch index."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    with torch_index() as index:
        started = time.monotonic()
        built = subprocess.run(
            ["docker", "build", "--network", "host", "--build-arg", f"BASE={base}",
             "--build-arg", f"TORCH_INDEX={index}", "--label", TEST_LABEL, "-t", IMAGE, str(REPO_ROOT)],
            capture_output=True, text=True, timeout=BUILD_S, env=env)
        seconds = time.monotonic() - started
    # Earlier builds of ours that this one replaced (a gigabyte each, when the dependencies changed).
    docker("image", "prune", "-f", "--filter", f"label={TEST_LABEL}", timeout=BUILD_S, check=False)
    return built, seconds


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) where it exists, else `docker-compose`, else None."""
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=QUICK_S).returncode == 0:
                return ["docker", "compose"]
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def parse_duration(text: str) -> float:
    """Compose's duration ("30m", "1h30m", "90s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total, number, rest = 0.0, "", str(text).strip()
    i = 0
    while i < len(rest):
        char = rest[i]
        if char.isdigit() or char == ".":
            number += char
            i += 1
            continue
        unit = "ms" if rest.startswith("ms", i) else "us" if rest.startswith("us", i) else char
        if unit not in units or not number:
            raise ValueError(f"not a Compose duration: {text!r}")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"not a Compose duration (no unit): {text!r}")
    return total
