"""The batching engine as the engine tests drive it: the tiny SmolLM3 loaded as a backend, chat
prompts, and an engine whose runner a test can hold or fail at one channel's row."""

from __future__ import annotations

import threading

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.llm.batch_runner import BatchRunner
from bot.llm.engine import BatchingEngine
from bot.llm.transformers_backend import TransformersBackend

PERSONA = {"role": "system", "content": "You are a friendly bot in a Discord server."}


def chat(*texts: str) -> list[dict[str, str]]:
    """A conversation: the persona, then alternating user and assistant turns."""
    roles = ["user", "assistant"]
    return [PERSONA] + [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]


def load_tiny(model_dir, weight_scale: float = 1.0) -> TransformersBackend:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(weight_scale)
    return TransformersBackend(model, AutoTokenizer.from_pretrained(model_dir), name="tiny-smollm3", thinking=False)


class SteeredRunner(BatchRunner):
    """The engine thread's runner, with two test controls on one channel's row as it takes its
    fourth token (three already sent): `failing_channel` raises there (a fault inside one row's
    step); `held_channel` holds the engine thread there (and sets `holding`) until `release` is
    set, so that an answer is certainly still being written, whatever this machine's speed,
    until the test says so."""

    def __init__(self, engine, *args, **options):
        super().__init__(*args, **options)
        self.engine = engine

    def _take_token(self, row, token):
        if row.generated == 3 and row.request.cache_key is not None:
            if row.request.cache_key == self.engine.failing_channel:
                raise RuntimeError("simulated fault")
            if row.request.cache_key == self.engine.held_channel:
                self.engine.holding.set()  # the engine thread is held now: nothing else moves
                self.engine.release.wait(timeout=120)  # the limit only guards against a hung test
        super()._take_token(row, token)


class SteeredEngine(BatchingEngine):
    failing_channel = held_channel = None

    def __init__(self, *args, **options):
        self.release = threading.Event()
        self.holding = threading.Event()
        super().__init__(*args, **options)

    def _new_runner(self):
        return SteeredRunner(self, self.backend, **self._runner_options())
