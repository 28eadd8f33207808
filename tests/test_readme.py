"""The README says what the program does (issue 13, point 19).

The settings table names every key of config.toml, and every error message the README quotes is
what the real CLI prints, checked by running `python -m bot ...` where that costs no model load."""

from __future__ import annotations

import os
import re
import tomllib

import pytest

from tests.support.cli import run_bot
from tests.support.settings import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


# (a) The Configuration section's table of settings ----------------------------------------

def settings_table() -> dict[str, str]:
    """README's `| `[section]` | keys |` rows: section name -> the row's text."""
    rows = re.findall(r"^\| `\[([a-z_]+)\]` \| (.*) \|$", README, flags=re.MULTILINE)
    table = {}
    for section, keys in rows:
        assert section not in table, f"README's settings table has two rows for [{section}]"
        table[section] = keys
    return table


def config_keys() -> dict[str, list[str]]:
    with open(REPO_ROOT / "config.toml", "rb") as file:
        config = tomllib.load(file)
    return {section: list(keys) for section, keys in config.items()}


def test_the_readme_settings_table_has_every_section_of_config_toml():
    table, config = settings_table(), config_keys()
    assert sorted(table) == sorted(config)


@pytest.mark.parametrize("section", sorted(config_keys()))
def test_the_readme_settings_table_names_every_key_of_config_toml(section):
    row = settings_table().get(section)
    assert row is not None, f"README's settings table has no row for [{section}]"
    missing = [key for key in config_keys()[section] if f"`{key}`" not in row]
    assert not missing, f"README's [{section}] row lacks {missing}"


# (b) The error messages the README quotes -------------------------------------------------

def clean_env(tmp_path, **variables: str) -> dict[str, str]:
    """No BOT_ variable or token from outside; the database in tmp_path; no network."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT),
            "HF_HUB_OFFLINE": "1", "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
            **variables}


def error_line(tmp_path, *args: str, env: dict[str, str]) -> str:
    """Run the CLI in tmp_path, expect one `error: ...` line on stderr; return it."""
    done = run_bot(*args, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def quoted(text: str) -> str:
    """`text` as the README has it (in code quotes); fails when the README no longer says it."""
    assert f"`{text}`" in README, f"README no longer quotes `{text}`"
    return text


def out_of_range_top_p(tmp_path) -> str:
    (tmp_path / "config.toml").write_text("[generation]\ntop_p = 7.0\n", encoding="utf-8")
    return error_line(tmp_path, "migrate", env=clean_env(tmp_path))


def finetune_data_not_json(tmp_path) -> str:
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    (tmp_path / "export.jsonl").write_text(good * 6 + "not json\n", encoding="utf-8")
    return error_line(tmp_path, "--config", str(REPO_ROOT / "config.toml"), "finetune",
                      "--data", "export.jsonl", "--out", "adapters/pond", env=clean_env(tmp_path))


# Every `error: ...` the README quotes, with how to make the CLI print it.
ERROR_EXAMPLES = {
    "error: [generation] top_p must be from 0 to 1 (got 7.0)": out_of_range_top_p,
    "error: export.jsonl line 7 is not JSON ...": finetune_data_not_json,
}


def test_every_error_example_in_the_readme_is_checked():
    assert sorted(re.findall(r"`(error: [^`]*)`", README)) == sorted(ERROR_EXAMPLES)


@pytest.mark.parametrize("example", sorted(ERROR_EXAMPLES))
def test_the_readme_error_examples_are_what_the_cli_prints(tmp_path, example):
    printed = ERROR_EXAMPLES[example](tmp_path)
    if example.endswith(" ..."):  # the README shortens the line
        assert printed.startswith(example.removesuffix(" ...")), printed
    else:
        assert printed == example


def test_the_readme_misspelt_variable_example_is_what_the_cli_prints(tmp_path):
    name, suggestion = quoted("BOT_GENERATION_TOPP"), quoted("did you mean BOT_GENERATION_TOP_P?")
    printed = error_line(tmp_path, "--config", str(REPO_ROOT / "config.toml"), "migrate",
                         env=clean_env(tmp_path, **{name: "0.5"}))
    assert name in printed and suggestion in printed, printed


def test_the_readme_sync_database_url_example_is_what_the_cli_prints(tmp_path):
    assert "(`sqlite:///x.db`: use `sqlite+aiosqlite:///x.db`)" in README
    printed = error_line(tmp_path, "--config", str(REPO_ROOT / "config.toml"), "migrate",
                         env=clean_env(tmp_path, BOT_DATABASE_URL="sqlite:///x.db"))
    assert "'sqlite:///x.db'" in printed and printed.endswith(": use sqlite+aiosqlite:///x.db"), printed
