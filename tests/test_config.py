"""Settings: defaults, environment overrides, and one clear line for every bad value."""

import os
import subprocess
import sys

import pytest

from bot.config import ConfigError, describe_settings, load_settings
from tests.support.settings import REPO_ROOT


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_documents_every_setting_with_the_seed_values():
    settings = load_settings(REPO_ROOT / "config.toml", environ={})
    assert settings.model.name == "HuggingFaceTB/SmolLM3-3B"
    g = settings.generation
    assert (g.max_new_tokens, g.temperature, g.do_sample, g.top_p, g.repetition_penalty) == (200, 0.8, True, 0.9, 1.1)
    text = (REPO_ROOT / "config.toml").read_text()
    for key, _default, _doc in describe_settings():
        assert f"{key.split('.')[1]} =" in text, f"config.toml does not document {key}"


def test_environment_overrides_the_file_and_is_typed(tmp_path):
    path = write(tmp_path, "[generation]\ntemperature = 0.5\n")
    settings = load_settings(path, environ={"BOT_GENERATION_TEMPERATURE": "0.2", "BOT_MODEL_THINKING": "on",
                                            "BOT_HISTORY_MAX_TURNS": "12", "BOT_MODEL_NAME": "embedded"})
    assert settings.generation.temperature == 0.2
    assert settings.model.thinking is True
    assert settings.history.max_turns == 12
    assert settings.model.name == "embedded"


def test_token_comes_from_the_environment_only(tmp_path):
    assert load_settings(write(tmp_path, ""), environ={"DISCORD_TOKEN": " abc "}).discord_token == "abc"
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_settings(write(tmp_path, '[discord]\ntoken = "abc"\n'), environ={})


@pytest.mark.parametrize("text, expected", [
    ('[generation]\ntemperature = "hot"\n', "[generation] temperature must be a number (got 'hot')"),
    ("[generation]\ntop_p = 7\n", "[generation] top_p must be from 0 to 1 (got 7.0)"),
    ('[model]\ndtype = "int3"\n', "[model] dtype must be one of 'auto', 'bfloat16', 'float16', 'float32'"),
    ("[model]\nnmae = 1\n", "unknown key [model] nmae"),
    ("[modle]\nname = 1\n", "unknown section [modle]"),
    ("[generation]\nmax_new_tokens = true\n", "[generation] max_new_tokens must be a whole number"),
    ("[generation\nx = 1\n", "is not valid TOML"),
    ("dev_guild_id = 1\n", "dev_guild_id is outside any section; did you mean [discord] dev_guild_id?"),
    ('[model]\nname = " "\n', "[model] name is empty"),
    ("[discord]\ndev_guild_id = 123456789012345678901\n", "[discord] dev_guild_id must be from 0 to"),
    ('[model]\nbase_url = "127.0.0.1:8000/v1"\n',
     "[model] base_url '127.0.0.1:8000/v1' is not an http:// or https:// address; did you mean "
     '"http://127.0.0.1:8000/v1"?'),
    ('[model]\ndevice_map = "gpu"\n', "[model] device_map 'gpu' is no place for the weights: use \"auto\""),
])
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_environment_value_is_refused_naming_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"^BOT_MODEL_THINKING \(setting \[model\] thinking\) must be true or false"):
        load_settings(write(tmp_path, ""), environ={"BOT_MODEL_THINKING": "maybe"})


def test_the_quotes_hint_comes_only_where_a_value_is_the_problem(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "[discord\n"), environ={})
    assert "text values need quotes" not in str(caught.value)


def test_cli_prints_one_line_not_a_traceback_for_a_corrupt_config(tmp_path):
    path = write(tmp_path, "this is = = not toml")
    result = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "migrate"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ")
    assert "is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_away_from_a_config_file_the_cli_says_the_defaults_apply_and_it_has_a_version(tmp_path):
    env = {**os.environ, "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"}
    env.pop("BOT_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "bot", "migrate"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"No config.toml in {tmp_path}: the built-in defaults apply" in result.stderr
    version = subprocess.run([sys.executable, "-m", "bot", "--version"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("smolbot ")
