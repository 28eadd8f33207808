"""The image works (issue 13, point 18).

The repository's Dockerfile is built for real (on a local Debian base; tests/support/image.py
says why and how) and `python -m bot chat` runs in it as the user `bot`, with fresh named
volumes on /home/bot/.cache and /app/data as the README says: a fresh named volume takes the
owner of the image's folder, so a folder the image never created (root's) made the embedded
model's conversion fail with PermissionError. compose.yaml is checked by Compose itself.

Skipped, with the reason in capitals, only where no Docker engine can be reached or started or
debootstrap is missing (or, for the compose test, no Compose is installed).
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
import yaml

from tests.support import image
from tests.support.loud_skips import skip_loudly
from tests.support.settings import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
COMPOSE_TEXT = (REPO_ROOT / "compose.yaml").read_text(encoding="utf-8")
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CHAT_S = 600
VOLUME_FOLDERS = ("/app/data", "/home/bot/.cache")


@pytest.fixture(scope="session")
def built_image() -> str:
    """The image, built once per session (Docker's layer cache makes a rebuild quick)."""
    try:
        image.ensure_engine()
        base = image.ensure_base()
    except (image.ImageUnavailable, OSError, subprocess.TimeoutExpired) as error:
        skip_loudly(f"IMAGE TESTS SKIPPED: {error}")
    built, seconds = image.build_image(base)
    assert built.returncode == 0, f"docker build failed:\n{built.stdout[-6000:]}\n{built.stderr[-3000:]}"
    print(f"image built in {seconds:.0f} s")
    return image.IMAGE


@pytest.fixture
def named_volumes(built_image):
    """Two fresh named volumes, for the cache and the data, removed afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = {"cache": f"smolbot-test-cache-{tag}", "data": f"smolbot-test-data-{tag}"}
    yield names
    image.docker("volume", "rm", "-f", *names.values(), check=False)


def run_in_image(built_image: str, volumes: dict[str, str], *command: str, input: str | None = None,
                 environment: dict[str, str] | None = None, timeout: float = image.QUICK_S):
    options = ["-v", f"{volumes['cache']}:/home/bot/.cache", "-v", f"{volumes['data']}:/app/data"]
    for name, value in (environment or {}).items():
        options += ["-e", f"{name}={value}"]
    return image.docker("run", "-i", "--rm", *options, built_image, *command, input=input,
                        timeout=timeout, check=False)


# The image, built and run ------------------------------------------------------------------

def test_the_bot_chats_in_the_image_as_bot_with_named_volumes(built_image, named_volumes):
    done = run_in_image(built_image, named_volumes, "python", "-m", "bot", "chat",
                        input="Say hello.\n/quit\n", timeout=CHAT_S,
                        environment={"BOT_MODEL_NAME": "embedded", "BOT_GENERATION_MAX_NEW_TOKENS": "8",
                                     "BOT_GENERATION_DO_SAMPLE": "false"})
    everything = done.stdout + done.stderr
    assert done.returncode == 0, everything[-5000:]
    assert "Traceback" not in everything and "PermissionError" not in everything, everything[-5000:]
    lines = done.stdout.splitlines()
    answers = [line for line in lines if line.startswith("bot> ")]
    assert answers and answers[0].removeprefix("bot> ").strip(), done.stdout
    assert lines[-1] == "Bye.", done.stdout
    # What the run left lies in the named volumes: the converted model and the database.
    listed = run_in_image(built_image, named_volumes, "sh", "-c",
                          "ls /home/bot/.cache/smolbot; ls /app/data")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^smollm2-135m-instruct-\w+$", listed.stdout, flags=re.MULTILINE), listed.stdout
    assert re.search(r"^bot\.db$", listed.stdout, flags=re.MULTILINE), listed.stdout


def test_the_image_runs_as_bot_who_owns_its_fresh_named_volumes(built_image, named_volumes):
    done = run_in_image(built_image, named_volumes, "sh", "-c",
                        "id -un; stat -c '%n %U' " + " ".join(VOLUME_FOLDERS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bot", "/app/data", "bot", "/home/bot/.cache", "bot"], done.stdout


def test_the_image_declares_its_volumes_and_carries_the_bot(built_image):
    inspected = image.docker("image", "inspect", "--format",
                             "{{json .Config.Volumes}} {{.Config.User}} {{json .Config.Cmd}}", built_image)
    volumes, user, command = inspected.stdout.strip().split(" ", 2)
    assert sorted(yaml.safe_load(volumes)) == sorted(VOLUME_FOLDERS)
    assert user == "bot"
    assert yaml.safe_load(command) == ["python", "-m", "bot", "run"]


# The Dockerfile, read ----------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines()
                                             if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def test_the_dockerfile_makes_the_volume_folders_for_bot_before_declaring_them():
    steps = dockerfile_instructions()
    volume_at = next(i for i, (name, _) in enumerate(steps) if name == "VOLUME")
    declared = yaml.safe_load(steps[volume_at][1])
    assert sorted(declared) == sorted(VOLUME_FOLDERS)
    before = " ".join(arguments for name, arguments in steps[:volume_at] if name == "RUN")
    for folder in declared:
        assert re.search(rf"mkdir -p [^&]*{re.escape(folder)}\b", before), folder
        assert re.search(rf"chown -R bot:bot [^&]*{re.escape(folder)}\b", before), folder
    assert ("USER", "bot") in steps[:volume_at]


def test_the_dockerfile_defaults_are_for_real_users():
    """The tests override the base and the torch index; by default: python:3.11-slim, PyPI's torch."""
    assert re.search(r"^ARG BASE=python:3\.11-slim$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\}$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX=$", DOCKERFILE, flags=re.MULTILINE)


def test_the_dockerfile_and_the_readme_give_the_same_run_command():
    run_lines = re.findall(r"^# Run:\s+(docker run .*)$", DOCKERFILE, flags=re.MULTILINE)
    assert run_lines and run_lines[0] in README
    assert "docker build -t smolbot ." in DOCKERFILE and "docker build -t smolbot ." in README
    assert "-v smolbot-data:/app/data -v smolbot-cache:/home/bot/.cache" in run_lines[0]


# compose.yaml --------------------------------------------------------------------------------

def compose_config(tmp_path, text: str) -> subprocess.CompletedProcess:
    """`docker compose config -q` (or docker-compose's) on `text`, beside an empty .env."""
    command = image.compose_command()
    if command is None:
        skip_loudly("IMAGE TESTS SKIPPED: neither `docker compose` nor `docker-compose` is installed to validate compose.yaml")
    (tmp_path / "compose.yaml").write_text(text, encoding="utf-8")
    (tmp_path / ".env").write_text("", encoding="utf-8")  # the README's first step makes it
    return subprocess.run([*command, "-f", "compose.yaml", "config", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_compose_accepts_compose_yaml(tmp_path):
    checked = compose_config(tmp_path, COMPOSE_TEXT)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_rejects_a_misspelt_key(tmp_path):
    """The check above checks something: Compose refuses a key its schema lacks."""
    broken = COMPOSE_TEXT.replace("start_period:", "start_perod:", 1)
    assert broken != COMPOSE_TEXT
    checked = compose_config(tmp_path, broken)
    assert checked.returncode != 0 and "start_perod" in checked.stdout + checked.stderr


def test_the_model_server_has_time_for_its_first_download():
    healthcheck = yaml.safe_load(COMPOSE_TEXT)["services"]["model"]["healthcheck"]
    assert image.parse_duration(healthcheck["start_period"]) >= 10 * 60


def test_the_compose_bot_is_this_image_with_cpu_torch():
    compose = yaml.safe_load(COMPOSE_TEXT)
    bot = compose["services"]["bot"]
    assert bot["build"]["context"] == "."
    assert bot["build"]["args"]["TORCH_INDEX"] == image.PYTORCH_CPU_INDEX
    assert bot["image"] == "smolbot:cpu"
    # The names agree with the Dockerfile: HF_HOME inside the volume on /home/bot/.cache.
    assert "bot-cache:/home/bot/.cache" in bot["volumes"]
    assert bot["environment"]["HF_HOME"] == "/home/bot/.cache/huggingface"
    assert "HF_HOME=/home/bot/.cache/huggingface" in DOCKERFILE
    for volume in compose["volumes"]:
        assert f"`{volume}`" in README, f"README does not name compose's volume {volume}"
    assert "smolbot:cpu" in README and image.PYTORCH_CPU_INDEX in README


def test_compose_durations_are_read_as_compose_reads_them():
    assert image.parse_duration("30m") == 1800
    assert image.parse_duration("1h30m") == 5400
    assert image.parse_duration("1m30s") == 90
    with pytest.raises(ValueError):
        image.parse_duration("thirty")
