"""Operators' mistakes end in one line they can act on, never a traceback (issue 13).

Each test runs the real CLI, `python -m bot ...`, in an empty directory with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.cli import run_bot
from tests.support.settings import REPO_ROOT


def clean_env(tmp_path, **variables: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1", **variables}


def database_env(tmp_path, **variables: str) -> dict[str, str]:
    return clean_env(tmp_path, BOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", **variables)


def refused(tmp_path, *args: str, env: dict[str, str]) -> str:
    """Run the CLI, expect it to fail with one line on stderr and no traceback; return that line.
    (Informational log lines before it, such as "No config.toml in ...", are not the failure.)"""
    done = run_bot(*args, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# 5. A config file that is named must exist -------------------------------------------------

@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_a_missing_config_file_is_an_error_not_silent_defaults(tmp_path, where):
    missing = tmp_path / "nope.toml"
    args = {"before": ("--config", str(missing), "migrate"), "after": ("migrate", "--config", str(missing)),
            "env": ("migrate",)}[where]
    env = database_env(tmp_path, **({"BOT_CONFIG": str(missing)} if where == "env" else {}))
    assert refused(tmp_path, *args, env=env) == f"error: The config file {missing} does not exist."
    assert not (tmp_path / "bot.db").exists()


def test_without_a_named_config_file_the_defaults_apply(tmp_path):
    done = run_bot("migrate", cwd=tmp_path, env=database_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bot.db").exists()


# 6. A BOT_ variable must name a setting -----------------------------------------------------

def test_a_misspelt_environment_variable_suggests_the_setting(tmp_path):
    line = refused(tmp_path, "migrate", env=database_env(tmp_path, BOT_GENERATION_TOPP="0.5"))
    assert "BOT_GENERATION_TOPP" in line and "did you mean BOT_GENERATION_TOP_P?" in line


@pytest.mark.parametrize("name", ["BOT_DISCORD_TOKEN", "BOT_TOKEN"])
def test_the_discord_token_under_a_settings_name_points_to_discord_token(tmp_path, name):
    line = refused(tmp_path, "migrate", env=database_env(tmp_path, **{name: "abc"}))
    assert f"{name} names no setting: the Discord token is read from DISCORD_TOKEN" in line


def test_a_text_value_without_quotes_gets_a_hint(tmp_path):
    (tmp_path / "config.toml").write_text("[model]\nname = embedded\n")
    line = refused(tmp_path, "migrate", env=database_env(tmp_path))
    assert "is not valid TOML" in line and 'text values need quotes, as in name = "embedded"' in line


def test_a_database_that_cannot_be_opened_says_what_to_check(tmp_path):
    (tmp_path / "data").write_text("a file where the database's folder should be")
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}"
    line = refused(tmp_path, "migrate", env=clean_env(tmp_path, BOT_DATABASE_URL=url))
    assert "could not be opened" in line and "check that its folder exists and this user may write there" in line


def test_a_config_file_key_gets_the_same_suggestion(tmp_path):
    (tmp_path / "config.toml").write_text("[generation]\ntopp = 0.5\n")
    line = refused(tmp_path, "migrate", env=database_env(tmp_path))
    assert "unknown key [generation] topp; did you mean top_p?" in line


def test_variables_the_bot_reads_that_are_not_settings_are_allowed(tmp_path):
    (tmp_path / "mine.toml").write_text("")
    env = database_env(tmp_path, BOT_CONFIG=str(tmp_path / "mine.toml"), BOT_MODEL_API_KEY="sk-test",
                       BOT_CACHE_DIR=str(tmp_path / "cache"), BOT_GENERATION_TOP_P="0.5")
    done = run_bot("migrate", cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


# 7. Database URLs are checked before use; passwords never shown --------------------------

@pytest.mark.parametrize("command", ["migrate", "export"])
@pytest.mark.parametrize("url, expected", [
    ("sqlite:///x.db", "use sqlite+aiosqlite:///x.db"),
    ("postgresql://bot:hunter2@db.example/bot", "use postgresql+asyncpg://bot:***@db.example/bot"),
    ("postgres://bot:hunter2@db.example/bot", "use postgresql+asyncpg://bot:***@db.example/bot"),
    ("mysql+aiomysql://bot:hunter2@db.example/bot", "use sqlite+aiosqlite://... or postgresql+asyncpg://..."),
    ("not a url", "use sqlite+aiosqlite://... or postgresql+asyncpg://..."),
])
def test_an_unusable_database_url_says_what_to_write(tmp_path, command, url, expected):
    line = refused(tmp_path, command, env=clean_env(tmp_path, BOT_DATABASE_URL=url))
    assert expected in line
    assert "hunter2" not in line
    assert not (tmp_path / "x.db").exists()


def test_printed_database_urls_hide_the_password():
    from bot.config import mask_url_password

    masked = mask_url_password("postgresql+asyncpg://bot:hunter2@db:5432/bot")
    assert masked == "postgresql+asyncpg://bot:***@db:5432/bot"
    assert mask_url_password("sqlite+aiosqlite:///data/bot.db") == "sqlite+aiosqlite:///data/bot.db"


# 12. Ids out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("chat", "--channel", "99999999999999999999999"),
                                  ("export", "--channel", "99999999999999999999999"),
                                  ("export", "--server", "-1")])
def test_an_out_of_range_id_is_one_line(tmp_path, args):
    line = refused(tmp_path, *args, env=database_env(tmp_path))
    assert "out of range" in line and "OverflowError" not in line
    assert f"python -m bot {args[0]} --help" in line


# 14. Global options after the subcommand; help everywhere; the benchmarks' help -------------

def test_global_options_work_after_the_subcommand(tmp_path):
    (tmp_path / "other.toml").write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path / "other.db"}"\n')
    done = run_bot("migrate", "--config", str(tmp_path / "other.toml"), "-v", "--log-format", "json",
                   cwd=tmp_path, env=clean_env(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "other.db").exists()
    assert "Traceback" not in done.stderr
    before = run_bot("-v", "migrate", cwd=tmp_path, env=database_env(tmp_path), timeout=120)
    assert before.returncode == 0, before.stderr
    assert "DEBUG" in before.stderr  # -v before the subcommand is not undone by the subcommand's default


@pytest.mark.parametrize("command", ["run", "chat", "export", "finetune", "migrate"])
def test_every_subcommand_help_has_a_description_and_the_global_options(tmp_path, command):
    done = run_bot(command, "--help", cwd=tmp_path, env=clean_env(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    usage, _, rest = done.stdout.partition("\n\n")
    assert rest.split("\n\n")[0].strip() and not rest.startswith(("positional arguments", "options"))
    for option in ("--config", "--verbose", "--log-format"):
        assert option in done.stdout


def test_an_unknown_subcommand_is_one_line(tmp_path):
    line = refused(tmp_path, "chta", env=clean_env(tmp_path))
    assert "'chta'" in line and "chat" in line


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT)}, timeout=60)


def test_bench_help_lists_the_benchmarks_with_their_duration():
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    for name in ("window", "recall", "recall-postgresql", "latency", "engine", "overhead", "load", "remote", "adapters"):
        line = next(line for line in done.stdout.splitlines() if line.strip().startswith(name + " "))
        assert "min" in line


def test_an_unknown_benchmark_is_one_line_listing_the_real_ones():
    done = bench("windw")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "KeyError" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: there is no benchmark named 'windw'; the benchmarks are: "
        "window, recall, recall-postgresql, latency, engine, overhead, load, remote, fair, adapters"]


@pytest.mark.parametrize("args, command", [(("chat", "--modle", "embedded"), "chat"), (("export", "--chanel", "5"), "export")])
def test_a_misspelt_option_points_to_its_commands_help(tmp_path, args, command):
    line = refused(tmp_path, *args, env=clean_env(tmp_path))
    assert line == f"error: unrecognized arguments: {' '.join(args[1:])} (see `python -m bot {command} --help`)"


def test_a_python_without_the_bots_packages_is_told_to_use_the_venv():
    """`python -m bot` with the system's Python after `make setup` (no site-packages: -S)."""
    done = subprocess.run([sys.executable, "-S", "-m", "bot", "chat"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "lacks the bot's packages (No module named" in done.stderr and "source .venv/bin/activate" in done.stderr
