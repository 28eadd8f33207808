"""Tests for the tiny offline SmolLM3 model (tests/support/tiny_smollm3.py).

They check that the test double really is a SmolLM3 (architecture, NoPE layers,
tokenizer, real chat template with its thinking switch) and that generation
works and is deterministic, so other tests can rely on it in place of
HuggingFaceTB/SmolLM3-3B.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, SmolLM3ForCausalLM

from tests.support.tiny_smollm3 import (
    SMOLLM3_CHAT_TEMPLATE,
    build_tiny_smollm3,
    is_tiny_smollm3_complete,
)

# SmolLM3's default system instructions (from its chat template).
THINK_DEFAULT_INSTRUCTIONS = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an "
    "assistant involves thoroughly exploring questions through a systematic thinking process "
    "before providing the final precise and accurate solutions."
)
NO_THINK_DEFAULT_INSTRUCTIONS = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."

EMPTY_THINK = "<think>\n\n</think>\n"
DATE_LINE = re.compile(r"^Today Date: \d{2} [A-Z][a-z]+ \d{4}$", re.MULTILINE)

CONVERSATION = [
    {"role": "system", "content": "You are Smol, a friendly Discord bot."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


def expected_prompt(mode: str, instructions: str, *, history_think_block: bool) -> str:
    """The exact SmolLM3 rendering of CONVERSATION (with a placeholder date line)."""
    think = EMPTY_THINK if history_think_block else ""
    return (
        "<|im_start|>system\n"
        "## Metadata\n\n"
        "Knowledge Cutoff Date: June 2025\n"
        "Today Date: <DATE>\n"
        f"Reasoning Mode: {mode}\n\n"
        "## Custom Instructions\n\n"
        f"{instructions}\n\n"
        # The real template closes the system block with <|im_end|> only when
        # tools are given, so the user turn follows directly.
        "<|im_start|>user\nHi there!<|im_end|>\n"
        f"<|im_start|>assistant\n{think}Hello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        f"<|im_start|>assistant\n{think}"
    )


def normalise_date(prompt: str) -> str:
    assert len(DATE_LINE.findall(prompt)) == 1, prompt
    return DATE_LINE.sub("Today Date: <DATE>", prompt)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_smollm3(tmp_path_factory.mktemp("tiny-smollm3"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )


# --------------------------------------------------------------------------- model


def test_model_loads_as_smollm3(model_dir, model, tokenizer):
    assert model.config.model_type == "smollm3"
    assert isinstance(model, SmolLM3ForCausalLM)
    assert model.config.num_hidden_layers == 2
    assert model.config.hidden_size == 64
    # SmolLM3's NoPE feature: layer 0 uses RoPE, layer 1 does not.
    assert list(model.config.no_rope_layers) == [1, 0]
    assert [bool(layer.self_attn.use_rope) for layer in model.model.layers] == [True, False]
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 64)
    assert (model_dir / "model.safetensors").is_file()
    assert is_tiny_smollm3_complete(model_dir)


def test_tokenizer_special_tokens(model, tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    unk = tokenizer.unk_token_id
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != unk, (token, ids)
    # Reasoning tags are ordinary added tokens (as in SmolLM3): they survive
    # skip_special_tokens, while <|im_end|> is dropped.
    ids = tokenizer.encode("<think>\nhm\n</think>\nHi<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhm\n</think>\nHi"
    # No BOS is prepended (SmolLM3's template does not use one either).
    assert tokenizer("hello").input_ids == tokenizer.encode("hello", add_special_tokens=False)


def test_chat_template_is_smollm3(tokenizer):
    assert tokenizer.chat_template == SMOLLM3_CHAT_TEMPLATE
    assert "enable_thinking" in tokenizer.chat_template


# ------------------------------------------------------------------ chat template


def test_thinking_off_prefills_empty_think_block(tokenizer):
    prompt = render(tokenizer, CONVERSATION, enable_thinking=False)
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    system_block = prompt.split("<|im_start|>user")[0]
    assert "Reasoning Mode: /no_think\n" in system_block
    assert "Reasoning Mode: /think" not in system_block
    # Assistant history turns also get the empty think block.
    assert prompt.count(EMPTY_THINK) == 2
    assert normalise_date(prompt) == expected_prompt(
        "/no_think", "You are Smol, a friendly Discord bot.", history_think_block=True
    )


def test_thinking_on_does_not_prefill_think_block(tokenizer):
    prompt = render(tokenizer, CONVERSATION, enable_thinking=True)
    assert prompt.endswith("<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in prompt and "</think>" not in prompt
    assert "Reasoning Mode: /think\n" in prompt
    assert "/no_think" not in prompt
    assert normalise_date(prompt) == expected_prompt(
        "/think", "You are Smol, a friendly Discord bot.", history_think_block=False
    )


def test_thinking_is_on_by_default(tokenizer):
    assert render(tokenizer, CONVERSATION) == render(tokenizer, CONVERSATION, enable_thinking=True)


def test_no_think_flag_in_system_message_switches_thinking_off(tokenizer):
    messages = [dict(CONVERSATION[0], content="You are Smol, a friendly Discord bot. /no_think")]
    messages += CONVERSATION[1:]
    # The flag wins even though enable_thinking=True is passed.
    prompt = render(tokenizer, messages, enable_thinking=True)
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    # The flag is stripped from the custom instructions.
    assert normalise_date(prompt) == expected_prompt(
        "/no_think", "You are Smol, a friendly Discord bot.", history_think_block=True
    )
    assert render(tokenizer, messages) == prompt


def test_think_flag_in_system_message_switches_thinking_on(tokenizer):
    messages = [dict(CONVERSATION[0], content="You are Smol, a friendly Discord bot. /think")]
    messages += CONVERSATION[1:]
    prompt = render(tokenizer, messages, enable_thinking=False)
    assert normalise_date(prompt) == expected_prompt(
        "/think", "You are Smol, a friendly Discord bot.", history_think_block=False
    )


def test_default_system_instructions_depend_on_mode(tokenizer):
    user_only = [{"role": "user", "content": "Hi"}]
    on = render(tokenizer, user_only, enable_thinking=True)
    off = render(tokenizer, user_only, enable_thinking=False)
    assert THINK_DEFAULT_INSTRUCTIONS in on
    assert THINK_DEFAULT_INSTRUCTIONS not in off
    assert f"## Custom Instructions\n\n{NO_THINK_DEFAULT_INSTRUCTIONS}\n\n<|im_start|>user\nHi<|im_end|>\n" in off
    assert off.endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    # A system message consisting only of the flag falls back to the defaults.
    flag_only = [{"role": "system", "content": "/no_think"}] + user_only
    assert render(tokenizer, flag_only) == off


def test_tokenized_prompt_ends_with_think_token_ids(tokenizer):
    ids = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, enable_thinking=False, tokenize=True,
        return_dict=True,
    )["input_ids"]
    think, end_think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    tail = ids[-8:]
    assert think in tail and end_think in tail and im_start in tail
    assert tail.index(im_start) < tail.index(think) < tail.index(end_think)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n" + EMPTY_THINK)


# -------------------------------------------------------------------- generation


def test_greedy_generation_is_deterministic(model, tokenizer):
    inputs = tokenizer.apply_chat_template(
        CONVERSATION, add_generation_prompt=True, enable_thinking=False,
        return_tensors="pt", return_dict=True,
    )
    prompt_len = inputs["input_ids"].shape[1]

    def generate():
        with torch.no_grad():
            return model.generate(
                **inputs, do_sample=False, max_new_tokens=10, min_new_tokens=10,
            )

    first, second = generate(), generate()
    assert first.shape == (1, prompt_len + 10)
    assert torch.equal(first, second)
    assert torch.equal(first[0, :prompt_len], inputs["input_ids"][0])
    assert isinstance(tokenizer.decode(first[0, prompt_len:], skip_special_tokens=True), str)


def test_build_is_idempotent_and_deterministic(model_dir, tmp_path):
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_smollm3(model_dir) == model_dir
    assert weights.stat().st_mtime_ns == mtime  # reused, not rewritten

    other = build_tiny_smollm3(tmp_path / "again")
    a = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_the_thinking_switch_can_differ_per_prompt(model_dir, tokenizer):
    """A server's /persona thinking reaches the chat template for its prompts only."""
    from bot.config import ModelSettings
    from bot.llm.transformers_backend import load_transformers_backend

    backend = load_transformers_backend(ModelSettings(name=str(model_dir), device_map="cpu", dtype="float32",
                                                      thinking=False))
    default, thinking = backend.render(CONVERSATION), backend.render(CONVERSATION, thinking=True)
    assert tokenizer.decode(default.token_ids).endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert "Reasoning Mode: /think\n" in tokenizer.decode(thinking.token_ids)
    assert (default.thinking, thinking.thinking) == (False, True)
