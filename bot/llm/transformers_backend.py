"""The local backend: a Hugging Face transformers causal LM on this machine's CPU or GPU."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator
import warnings
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList,
                          PreTrainedTokenizerFast, StoppingCriteria, StoppingCriteriaList)

from ..config import GenerationSettings, ModelSettings
from . import embedded
from .adapters import NO_ADAPTERS, AdapterProblem, Adapters, plan_adapters
from .model_source import ModelLoadError, locate_model
from .chat_template import TokenizerPool, render_prompt_ids
from .decoding import generate_arguments
from .port import ChatMessages, RenderedPrompt
from .thought_cap import ThoughtCap, thought_markers
from .worker import Emit, StopSignal

log = logging.getLogger(__name__)

PEFT_BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


# generate() needs an upper bound up front: room for this many forced thought closings.
MOST_CLOSINGS = 4


class _StopWhenAsked(StoppingCriteria):
    """Lets the event loop stop a generation between two tokens (time limit, cancel)."""

    def __init__(self, should_stop: StopSignal):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class _CloseThoughtAtLimit(LogitsProcessor):
    """generate()'s side of the thought cap (bot/llm/thought_cap.py): at the limit, every token
    but the closing's next is ruled out. One row: the worker generates one reply at a time."""

    def __init__(self, thought: ThoughtCap, prompt_length: int):
        self.thought = thought
        self.prompt_length = prompt_length
        self.forced = 0  # tokens put in so far, the one being chosen now included

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_length:  # the token chosen last time
            self.thought.observe(int(input_ids[0, -1]))
        forced = self.thought.forced_next()
        if forced is None:
            return scores
        self.forced += 1
        only = torch.full_like(scores, float("-inf"))
        only[:, forced] = 0.0
        return only


class _StopAtAllowance(StoppingCriteria):
    """The reply's allowance, grown by each forced thought closing (as the engine's rows grow)."""

    def __init__(self, closer: _CloseThoughtAtLimit, allowed_length: int):
        self.closer = closer
        self.allowed_length = allowed_length

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[1] >= self.allowed_length + self.closer.forced
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class TransformersBackend:
    """The loaded model and tokenizer. The batching engine runs it for many channels at once;
    the one-at-a-time worker calls `generate_stream` (the TextGenerator of bot/llm/worker.py)."""

    streams = False  # transformers' generate() gives the whole answer at once

    def __init__(self, model, tokenizer, name: str, thinking: bool, context_tokens: int = 0,
                 adapters: Adapters = NO_ADAPTERS):
        self.model = model  # a peft model holding every adapter when there are any
        self.adapters = adapters
        self.tokenizer = tokenizer  # the model thread's: decoding as it generates
        self._tokenizers = TokenizerPool(tokenizer)  # for render and output_tokens, from any thread
        self.name = name
        self.thinking = thinking
        self.context_tokens = context_tokens or _model_context_length(model)
        self.stop_ids = _stop_token_ids(model, tokenizer)
        # Read once: the tokenizer builds this list anew on every access, and decode runs per token.
        self._removed_specials = [t for t in tokenizer.all_special_tokens if t not in ("<think>", "</think>")]
        self._decode_ids = _decoder(tokenizer)
        self.thought_markers = thought_markers(tokenizer)  # None: the model does not think
        self._active_adapter: str | None = None  # unknown until the first single-adapter batch switches

    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt:
        """The prompt's token ids, built by the model's own chat template. Message contents are
        always plain text: control tokens typed by a user cannot open or end a turn."""
        thinking = self.thinking if thinking is None else thinking
        with self._tokenizers.borrowed() as tokenizer:
            ids = render_prompt_ids(tokenizer, messages, enable_thinking=thinking)
        opens_thought = self.thought_markers is not None and self.thought_markers.open_at_end(ids)
        return RenderedPrompt(messages, len(ids), tuple(ids), thinking, opens_thought)

    def output_tokens(self, text: str) -> int:
        with self._tokenizers.borrowed() as tokenizer:
            return len(tokenizer.encode(text, add_special_tokens=False))

    @contextmanager
    def adapters_for(self, loras: list[str | None]) -> Iterator[dict]:
        """Run a forward with each row on its own adapter (None: the base model); yields the
        forward's extra arguments. Rows that all share one adapter (or all none) run peft's
        single-adapter path, the adapter switched on for the batch; only a mix of adapters
        needs the mixed-batch path (`adapter_names`), where every LoRA layer splits the batch
        by adapter in Python. Nothing at all when no adapter is loaded."""
        if not self.adapters.any:
            yield {}
            return
        chosen = set(loras)
        if len(chosen) > 1:
            yield {"adapter_names": [lora or PEFT_BASE for lora in loras]}
        elif None in chosen:
            with self.model.disable_adapter():
                yield {}
        else:
            self._switch_to(chosen.pop())
            yield {}

    def _switch_to(self, adapter: str) -> None:
        if self._active_adapter != adapter:  # peft walks every layer to switch: only on a change
            self.model.set_adapter(adapter)
            self._active_adapter = adapter

    def generate_stream(self, prompt: RenderedPrompt, params: GenerationSettings, should_stop: StopSignal,
                        emit: Emit, lora: str | None) -> None:
        """One reply with transformers' generate(), emitted whole; `lora` is the adapter (None: the base model)."""
        input_ids = torch.tensor([prompt.token_ids], device=self.model.device)
        arguments, processors = generate_arguments(params), LogitsProcessorList()
        stops = StoppingCriteriaList([_StopWhenAsked(should_stop)])
        if self.thought_markers is not None:
            thought = ThoughtCap(self.thought_markers, params.max_thinking_tokens, prompt.token_ids)
            closer = _CloseThoughtAtLimit(thought, input_ids.shape[1])
            processors.append(closer)
            # Forced closings come on top of the allowance: generate() may run past it, and
            # stops where the allowance and the closings forced so far end.
            arguments["max_new_tokens"] += MOST_CLOSINGS * len(self.thought_markers.closing)
            stops.append(_StopAtAllowance(closer, input_ids.shape[1] + params.max_new_tokens))
        with self.adapters_for([lora]) as lora_arguments:
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                stopping_criteria=stops,
                logits_processor=processors,
                pad_token_id=self.tokenizer.pad_token_id or self.stop_ids[0],
                eos_token_id=self.stop_ids,
                **arguments,
                **lora_arguments,
            )
        emit(self.decode(output[0, input_ids.shape[1]:].tolist()))

    def decode(self, token_ids: list[int]) -> str:
        """Text of the new tokens up to the end-of-turn token. Special tokens are kept in the
        decode and removed after, so that <think> markers survive for the cleaner to strip
        the whole reasoning block (skipping them would leave the reasoning text behind)."""
        for position, token in enumerate(token_ids):
            if token in self.stop_ids:
                token_ids = token_ids[:position]
                break
        text = self._decode_ids(token_ids)
        for special in self._removed_specials:
            if special in text:
                text = text.replace(special, "")
        return text


def _decoder(tokenizer) -> Callable[[list[int]], str]:
    """The tokenizer's decode of token ids, special tokens kept. A fast tokenizer that cleans up
    nothing decodes straight in its Rust tokenizer: transformers' wrapper around it costs five
    times the decode itself (16 of 19 us a call, measured), and the batching engine decodes
    twice per token of every row."""
    if isinstance(tokenizer, PreTrainedTokenizerFast) and not tokenizer.clean_up_tokenization_spaces:
        rust = tokenizer.backend_tokenizer
        return lambda token_ids: rust.decode(token_ids, skip_special_tokens=False)
    return lambda token_ids: tokenizer.decode(token_ids, skip_special_tokens=False)


def _model_context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 2048)


def _stop_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    for token in ("<|im_end|>", tokenizer.eos_token):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return ids


def resolve_dtype(name: str) -> torch.dtype:
    """"auto": bfloat16 where the hardware runs it fast, float32 elsewhere.

    Measured on the embedded model: bfloat16 was 1.6x faster than float32 on a CPU with
    native bf16 (avx512_bf16 / AMX), and it halves a GPU's memory; on CPUs without
    it, bfloat16 is emulated and slower, so float32 stays."""
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo, encoding="utf-8") as file:
            flags = set(file.read().split())
    except OSError:  # not Linux: be conservative
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def load_transformers_backend(settings: ModelSettings) -> TransformersBackend:
    """Load the configured model once, with progress on the console."""
    try:  # checked before the (slow) model load, so that a wrong path fails at once
        plan = plan_adapters(settings)
    except AdapterProblem as error:
        raise ModelLoadError(str(error)) from None
    source, label, local_only = settings.name, settings.name, True
    try:
        if embedded.is_embedded(settings.name):
            source = embedded.converted_model_dir()
            label = "embedded SmolLM2-135M-Instruct"
        else:  # fails in a second or two where the model cannot be had, saying what to do
            located = locate_model(settings.name)
            source, local_only = located.location, located.local_files_only
    except embedded.EmbeddedModelMissing as error:
        raise ModelLoadError(str(error)) from None
    dtype = resolve_dtype(settings.dtype)
    _check_device_is_here(settings.device_map)
    started = time.monotonic()
    log.info("Loading model %s (%s, device_map=%s)...", label, str(dtype).removeprefix("torch."),
             settings.device_map)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=settings.device_map,
                                                     local_files_only=local_only)
    except OSError as error:
        raise ModelLoadError(_explain_load_error(settings.name, error)) from None
    if plan.folders:
        model = with_adapters(model, plan.folders, label)
        log.info("LoRA adapters loaded: %s (default: %s).", ", ".join(plan.folders),
                 plan.adapters.label or "none, the base model")
    model.eval()
    log.info("Model ready in %.1f s on %s.", time.monotonic() - started, model.device)
    return TransformersBackend(model, tokenizer, name=label, thinking=settings.thinking,
                               context_tokens=settings.context_tokens, adapters=plan.adapters)


def _check_device_is_here(device_map: str) -> None:
    """A GPU named in device_map that this machine (or this torch build) lacks: one sentence, not
    torch's assertion from inside the load."""
    kind, _, number = device_map.strip().partition(":")
    if kind != "cuda" and not (kind.isdigit() and not number):
        return
    if not torch.cuda.is_available():
        raise ModelLoadError(f'[model] device_map = "{device_map}" asks for a GPU, but this torch has no CUDA device '
                             f"here (torch {torch.__version__}): set device_map = \"auto\" or \"cpu\", or install "
                             "torch with CUDA on a machine with an NVIDIA GPU.")
    index = int(number) if number else int(kind) if kind.isdigit() else 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f'[model] device_map = "{device_map}" names GPU {index}, but this machine has '
                             f"{torch.cuda.device_count()} (numbered from 0).")


def with_adapters(model, folders: dict[str, Path], model_label: str):
    """The model wrapped by peft with every adapter loaded by name (the base weights stay shared,
    loaded once). An adapter that does not fit this model ends start-up with ModelLoadError."""
    from peft import PeftModel  # only where adapters are configured: no peft otherwise

    peft_model = None
    for name, folder in folders.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers property
                # In the model's own dtype (peft would upcast bf16/fp16 adapters to float32 for
                # training): no casts around every LoRA layer at every step.
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=name,
                                                           autocast_adapter_dtype=False)
                else:
                    peft_model.load_adapter(str(folder), adapter_name=name, autocast_adapter_dtype=False)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            raise ModelLoadError(_explain_adapter_error(folder, model_label, error)) from None
        _check_adapter_fits(peft_model, name, folder, model_label)
    return peft_model


def _check_adapter_fits(peft_model, name: str, folder: Path, model_label: str) -> None:
    """peft only warns when an adapter's file lacks weights for layers it adapts, or holds weights
    for layers this model does not have (an adapter made for another base model): refuse both."""
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    expected = {key for key in get_peft_model_state_dict(peft_model, adapter_name=name) if "lora_" in key}
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
        stored = {key for key in weights.keys() if "lora_" in key}
    if expected != stored:
        raise ModelLoadError(f'The adapter "{folder}" does not fit the model {model_label}: '
                             f"{len(stored - expected)} of its weights have no place in the model and "
                             f"{len(expected - stored)} are missing, so it was made for another base model.")


def _explain_adapter_error(folder: Path, model_label: str, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if "size mismatch" in str(error):
        return (f'The adapter "{folder}" does not fit the model {model_label}: its weights have other shapes, '
                "so it was made for another base model (set [model] name to that model, or train one for this).")
    if "Target modules" in str(error):
        return f'The adapter "{folder}" does not fit the model {model_label}: {detail}'
    return f'Could not load the adapter "{folder}": {detail}'


def _explain_load_error(name: str, error: OSError) -> str:
    return (f'Could not load the model "{name}": it is not in the local cache and the Hugging Face hub '
            f'could not be reached ({str(error).splitlines()[0][:200]}). '
            'Set [model] name = "embedded" in config.toml (or BOT_MODEL_NAME=embedded) '
            "to use the built-in SmolLM2-135M-Instruct.")
