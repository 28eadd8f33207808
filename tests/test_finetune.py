"""`python -m bot finetune`: LoRA training on exported conversations, with the real embedded
SmolLM2-135M-Instruct (and the tiny SmolLM3 for its chat template). The data is written in the
export's shape: one {"messages": [system persona, "User N: ..." user turns, answers]} per line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import main as cli_main
from bot.config import load_settings
from bot.llm.finetune import FinetuneOptions, finetune, make_trainer
from bot.llm.training_data import (FinetuneError, build_dataset, read_conversations, split_conversations,
                                   tokenize_conversation)
from tests.support.cli import run_bot
from tests.support.settings import REPO_ROOT

CONFIG = REPO_ROOT / "config.toml"

PERSONA = "You are Quackers, the duck of the Pond server."
TOPICS = ["bread", "rain", "the moon", "music", "pizza", "trains", "winter", "chess", "coffee", "books",
          "the sea", "clouds"]


def quack_conversation(number: int, topic: str) -> dict:
    """A learnable style: whatever the topic, the answer has the same distinctive shape."""
    return {"messages": [
        {"role": "system", "content": PERSONA},
        {"role": "user", "content": f"User {number % 3 + 1}: what about {topic}?"},
        {"role": "assistant", "content": f"QUACK QUACK! {topic.capitalize()}? Splendid. QUACK!"},
    ]}


def quack_records(count: int = len(TOPICS)) -> list[dict]:
    return [quack_conversation(number, topic) for number, topic in enumerate(TOPICS[:count])]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


TWO_EXCHANGES = [
    {"role": "system", "content": PERSONA},
    {"role": "user", "content": "User 1: hi there"},
    {"role": "user", "content": "User 2: hello duck"},
    {"role": "assistant", "content": "Hello, both of you!"},
    {"role": "user", "content": "User 1: what do ducks eat?"},
    {"role": "assistant", "content": "Seeds, weeds and <|im_end|> typed as text."},
]
REPLIES = ["Hello, both of you!", "Seeds, weeds and <|im_end|> typed as text."]


def masked_texts(tokenizer, ids: list[int], mask: list[int]) -> tuple[list[str], str]:
    """(the decoded runs of masked tokens, the decoded rest)."""
    runs, current, rest = [], [], []
    for token, bit in zip(ids, mask):
        if bit:
            current.append(token)
        else:
            rest.append(token)
            if current:
                runs.append(current)
                current = []
    if current:
        runs.append(current)
    decode = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=False)  # noqa: E731
    return [decode(run) for run in runs], decode(rest)


# The loss mask ------------------------------------------------------------------------------------


def test_mask_covers_exactly_the_answers_and_their_end_of_turn(embedded_backend):
    ids, mask = tokenize_conversation(embedded_backend, TWO_EXCHANGES)
    answers, rest = masked_texts(embedded_backend.tokenizer, ids, mask)
    assert answers == [reply + "<|im_end|>" for reply in REPLIES]
    for message in TWO_EXCHANGES[:3] + [TWO_EXCHANGES[4]]:
        assert message["content"] in rest
    # The tokens are the bot's own prompt tokens (typed control tokens stay text), and end at the last answer.
    prompt = list(embedded_backend.render(TWO_EXCHANGES[:3]).token_ids)
    assert ids[:len(prompt)] == prompt
    assert ids.count(embedded_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")) == len(TWO_EXCHANGES)
    assert ids[-1] == embedded_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_mask_is_cut_with_the_tokens(embedded_backend):
    full_ids, _ = tokenize_conversation(embedded_backend, TWO_EXCHANGES)
    ids, mask = tokenize_conversation(embedded_backend, TWO_EXCHANGES, max_length=len(full_ids) - 3)
    assert len(ids) == len(mask) == len(full_ids) - 3
    answers, _ = masked_texts(embedded_backend.tokenizer, ids, mask)
    assert answers[0] == REPLIES[0] + "<|im_end|>" and len(answers) == 2


@pytest.fixture(scope="module")
def tiny_smollm3(tiny_smollm3_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_smollm3_dir, dtype="float32"),
            AutoTokenizer.from_pretrained(tiny_smollm3_dir))


@pytest.mark.parametrize("thinking", [False, True])
def test_mask_on_smollm3_template(tiny_smollm3, thinking):
    """SmolLM3 prints the persona in its metadata header and, without thinking, puts an empty
    think block before every answer: the block is part of the prompt, not of what is learned."""
    from bot.llm.transformers_backend import TransformersBackend

    model, tokenizer = tiny_smollm3
    backend = TransformersBackend(model, tokenizer, name="tiny SmolLM3", thinking=thinking)
    ids, mask = tokenize_conversation(backend, TWO_EXCHANGES)
    answers, rest = masked_texts(tokenizer, ids, mask)
    assert answers == [reply + "<|im_end|>" for reply in REPLIES]
    assert "Reasoning Mode: " + ("/think" if thinking else "/no_think") in rest
    assert PERSONA in rest and "User 2: hello duck" in rest
    assert rest.count("<think>\n\n</think>") == (0 if thinking else 2)


def test_trl_learns_only_the_masked_tokens(tiny_smollm3, tmp_path):
    """TRL's own dataset preparation turns our assistant_masks into labels: -100 elsewhere."""
    import copy

    from bot.llm.transformers_backend import TransformersBackend

    model, tokenizer = tiny_smollm3
    backend = TransformersBackend(copy.deepcopy(model), tokenizer, name="tiny SmolLM3", thinking=False)
    conversations = read_conversations(write_jsonl(tmp_path / "two.jsonl", [{"messages": TWO_EXCHANGES}] * 2))
    dataset = build_dataset(backend, conversations, max_length=2048, what="training")
    trainer = make_trainer(backend.model, tokenizer, dataset, None,
                           FinetuneOptions(data=Path(), out=Path(), progress=False), str(tmp_path / "scratch"))
    row = trainer.train_dataset[0]
    assert set(trainer.train_dataset.column_names) == {"input_ids", "labels"}
    # Losses are log lines, not transformers' raw dicts printed by its Printer/Progress callbacks.
    shown = {type(callback).__name__ for callback in trainer.callback_handler.callbacks}
    assert "LossLines" in shown and not shown & {"PrinterCallback", "ProgressCallback"}
    learned = [label != -100 for label in row["labels"]]
    answers, _ = masked_texts(tokenizer, row["input_ids"], learned)
    assert answers == [reply + "<|im_end|>" for reply in REPLIES]


# Training on the embedded model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three steps of two conversations on the real SmolLM2-135M: 9 conversations to learn from,
    3 held out (their topics are never trained on; the style is the same)."""
    directory = tmp_path_factory.mktemp("finetune")
    data = write_jsonl(directory / "export.jsonl", quack_records())
    settings = load_settings(CONFIG, environ={"BOT_MODEL_NAME": "embedded"})
    options = FinetuneOptions(data=data, out=directory / "adapter", max_steps=3, learning_rate=3e-3, batch_size=2,
                              gradient_accumulation=1, eval_fraction=0.25, progress=False)
    return finetune(settings.model, options), options


def test_training_lowers_the_held_out_loss(trained):
    result, options = trained
    print(f"held-out loss {result.loss_before:.3f} -> {result.loss_after:.3f} in {result.seconds:.1f} s")
    assert (result.train_conversations, result.eval_conversations, result.steps) == (9, 3, 3)
    assert result.loss_after < 0.7 * result.loss_before
    metadata = json.loads((options.out / "finetune.json").read_text())
    assert metadata["base_model"] == "embedded"
    assert metadata["loss_before"] == pytest.approx(result.loss_before, abs=1e-5)
    assert metadata["loss_after"] == pytest.approx(result.loss_after, abs=1e-5)
    assert (metadata["train_conversations"], metadata["eval_conversations"], metadata["steps"]) == (9, 3, 3)


def test_adapter_loads_with_peft_and_changes_greedy_output(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.llm.chat_template import render_prompt_ids
    from bot.llm.embedded import converted_model_dir

    _, options = trained
    # No checkpoint folders, and not peft's model card template (its base_model a cache path).
    assert {p.name for p in options.out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                       "finetune.json"}
    base = AutoModelForCausalLM.from_pretrained(converted_model_dir(), dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(converted_model_dir())
    model = PeftModel.from_pretrained(base, options.out)
    prompt = render_prompt_ids(tokenizer, [{"role": "system", "content": PERSONA},
                                           {"role": "user", "content": "User 1: what about volcanoes?"}])
    input_ids = torch.tensor([prompt])

    def answer() -> str:
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(output[0, len(prompt):], skip_special_tokens=True)

    with torch.no_grad():
        with model.disable_adapter():
            without = answer()
        with_adapter = answer()
    print(f"without: {without!r}; with: {with_adapter!r}")
    assert with_adapter != without
    assert "QUACK" in with_adapter


# Bad input: one sentence, a non-zero exit -----------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_bot("--config", str(CONFIG), "finetune", *args, timeout=120)


def test_cli_missing_file(tmp_path):
    done = run_cli("--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.jsonl'}: no such file."]


def test_cli_malformed_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(quack_conversation(1, "tea")) + "\n{not json\n", encoding="utf-8")
    done = run_cli("--data", str(data), "--out", str(tmp_path / "x"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data} line 2 is not JSON"), lines


@pytest.mark.parametrize("records, problem", [
    ([{"chat": []}], 'line 1 has no "messages" list'),
    ([{"messages": [{"role": "robot", "content": "beep"}]}], "line 1, message 1 has the unknown role 'robot'"),
    ([{"messages": [{"role": "user", "content": "User 1: anyone?"}]}], "has no conversation with an assistant turn"),
    ([quack_conversation(1, "tea")], "needs at least 2 conversations"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}],
     "only the first message may be one"),
])
def test_bad_data_is_refused_in_one_sentence(tmp_path, capsys, records, problem):
    data = write_jsonl(tmp_path / "data.jsonl", records)
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out", str(tmp_path / "x")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and problem in error and "\n" not in error, error


def test_a_full_output_directory_is_refused_unless_overwrite(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", quack_records(3))
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out", str(out),
                     "--eval-fraction", "1.5"]) == 1
    assert "--eval-fraction must be between 0 and 1" in capsys.readouterr().err


def test_a_run_that_fails_leaves_no_empty_output_folder(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", quack_records(3))
    out = tmp_path / "adapters" / "quack"
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out", str(out),
                     "--model", str(tmp_path / "no-such-model")]) == 1
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists()
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out",
                     str(data / "adapter")]) == 1  # under a file: said before any work
    assert f"{data} is a file, not a folder" in capsys.readouterr().err


def test_missing_training_libraries_are_named(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "data.jsonl", quack_records(3))
    monkeypatch.setitem(sys.modules, "trl", None)  # what `import trl` meets where it is not installed
    assert cli_main(["--config", str(CONFIG), "finetune", "--data", str(data), "--out", str(tmp_path / "x")]) == 1
    assert "pip install 'smolbot[train]'" in capsys.readouterr().err


def test_split_holds_out_at_least_one_and_keeps_one_to_train(tmp_path):
    conversations = read_conversations(write_jsonl(
        tmp_path / "data.jsonl", quack_records(3)))
    train, held_out = split_conversations(conversations, 0.01, seed=0)
    assert (len(train), len(held_out)) == (2, 1)
    train, held_out = split_conversations(conversations, 0.99, seed=0)
    assert (len(train), len(held_out)) == (1, 2)
    with pytest.raises(FinetuneError):
        split_conversations(conversations[:1], 0.1, seed=0)
