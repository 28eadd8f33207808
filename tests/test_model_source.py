"""A model that cannot be had fails at once, with one line saying what to do (bot/llm/model_source.py)."""

from __future__ import annotations

import logging
import os

import pytest

from bot.llm import model_source
from bot.llm.model_source import ModelLoadError, ModelSource, hub_reachable, locate_model
from tests.support.cli import run_bot
from tests.support.ports import free_port

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def test_a_folder_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(ModelLoadError, match=f"The model folder {tmp_path / 'nope'} does not exist: .*--model embedded"):
        locate_model(str(tmp_path / "nope"), environ=OFFLINE)


def test_a_folder_without_a_model_says_it_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a model folder \\(it has no config.json\\)"):
        locate_model(str(tmp_path), environ=OFFLINE)


def test_a_model_folder_loads_from_disk_without_the_hub(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert locate_model(str(tmp_path), environ=OFFLINE) == model_source.ModelSource(str(tmp_path), True)


def test_a_hub_model_not_downloaded_cannot_be_had_offline():
    with pytest.raises(ModelLoadError, match='"nobody/not-downloaded" is not on this machine .* --model embedded'):
        locate_model("nobody/not-downloaded", environ=OFFLINE)


def test_a_downloaded_hub_model_loads_from_the_cache_when_the_hub_is_out_of_reach(monkeypatch):
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda repo_id: True)
    monkeypatch.setattr(model_source, "hub_reachable", lambda: False)
    assert locate_model("HuggingFaceTB/SmolLM3-3B", environ={}) == model_source.ModelSource(
        "HuggingFaceTB/SmolLM3-3B", local_files_only=True)


def test_a_closed_port_is_not_a_reachable_hub():
    assert not hub_reachable("127.0.0.1", free_port())


@pytest.mark.parametrize("model, expected", [
    ("nobody/not-downloaded", 'The model "nobody/not-downloaded" is not on this machine'),
    ("/no/such/folder", "The model folder /no/such/folder does not exist"),
])
def test_chat_with_a_model_it_cannot_have_is_one_line_and_no_retries(tmp_path, model, expected):
    env = {**os.environ, **OFFLINE, "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"}
    result = run_bot("chat", "--model", model, cwd=tmp_path, env=env, input="", timeout=120)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: " + expected) and "--model embedded" in lines[-1]
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr


def test_a_model_about_to_be_downloaded_says_so_first(monkeypatch, caplog):
    """Where it goes and that it takes a while: otherwise nothing shows for minutes."""
    monkeypatch.setattr(model_source, "_in_hub_cache", lambda repo_id: False)
    monkeypatch.setattr(model_source, "hub_reachable", lambda: True)
    with caplog.at_level(logging.INFO, logger="bot.llm.model_source"):
        source = locate_model("HuggingFaceTB/SmolLM3-3B", environ={})
    assert source == ModelSource("HuggingFaceTB/SmolLM3-3B", local_files_only=False)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        'The model "HuggingFaceTB/SmolLM3-3B" is not on this machine yet']
