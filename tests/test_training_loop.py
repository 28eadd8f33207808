"""The whole fine-tuning loop as the README gives it, each step a real `python -m bot` process on
the embedded model: chat, export what the bot said, train an adapter on it, chat with the adapter."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from tests.support.cli import bot_lines, chat, run_bot

T = TypeVar("T")
QUESTIONS = ["Hello! What is your name?", "Tell me about the sea."]
NEW_QUESTION = "What is two plus two?"  # in no training conversation


def bot(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_bot(*args, env={**os.environ, **env}, timeout=600)


def both(run: Callable[[T], subprocess.CompletedProcess], first: T, second: T) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(run, (first, second)))


def test_export_a_conversation_train_on_it_and_serve_the_adapter(tmp_path):
    database = tmp_path / "bot.db"
    database_env = {"BOT_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "BOT_MODEL_NAME": "embedded"}
    # 1. The bot talks in two terminal conversations (the terminal chat is server 0), at once:
    # each process loads the model, and two cores load two faster than one after the other.
    talks = both(lambda channel: chat(database, "\n".join(QUESTIONS) + "\n/quit\n", "--channel", channel),
                 "1", "2")
    for talk in talks:
        assert talk.returncode == 0 and len(bot_lines(talk.stdout)) == len(QUESTIONS), talk.stderr

    # 2. Export them.
    data = tmp_path / "train.jsonl"
    exported = bot("export", "--server", "0", "--out", str(data), env=database_env)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(lines) == 2 and all(len(line["messages"]) == 1 + 2 * len(QUESTIONS) for line in lines)
    assert lines[0]["messages"][1]["content"] == f"User 1: {QUESTIONS[0]}"  # "Ann" pseudonymised

    # 3. Train briefly: one conversation trained on, one held out.
    adapter = tmp_path / "adapters" / "ours"
    trained = bot("finetune", "--data", str(data), "--out", str(adapter), "--max-steps", "4",
                  "--learning-rate", "3e-3", "--batch-size", "1", "--gradient-accumulation", "1",
                  "--eval-fraction", "0.5", env=database_env)
    assert trained.returncode == 0, trained.stderr
    report = json.loads((adapter / "finetune.json").read_text())
    assert report["loss_after"] < report["loss_before"]

    # 4. The bot serves the adapter, and it answers a new question differently from the base model.
    base, with_adapter = both(lambda adapter_env: chat(tmp_path / f"fresh-{len(adapter_env)}.db",
                                                       NEW_QUESTION + "\n", env=adapter_env),
                              {}, {"BOT_MODEL_ADAPTER": str(adapter)})
    assert base.returncode == 0, base.stderr
    assert with_adapter.returncode == 0, with_adapter.stderr
    assert bot_lines(with_adapter.stdout) != bot_lines(base.stdout)
