"""A scripted model backend for tests about the bot, not the words.

It is a TextGenerator (bot/llm/worker.py), like the transformers backend, and
runs inside the real ModelWorker, so the executor, time limits and error paths
are the real ones; only the words are scripted.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Callable

from bot.config import GenerationSettings
from bot.core.prompt import RenderedPrompt
from bot.llm.adapters import NO_ADAPTERS

ChatMessages = list[dict[str, str]]


def echo_last_user_message(messages: ChatMessages) -> str:
    return "echo: " + messages[-1]["content"]


class ScriptedBackend:
    adapters = NO_ADAPTERS
    streams = True

    def __init__(self, reply: Callable[[ChatMessages], str] | str = echo_last_user_message,
                 context_tokens: int = 4096, delay_s: float = 0.0, name: str = "scripted",
                 word_delay_s: float = 0.0, gate: threading.Event | None = None, gate_after_words: int = 0):
        self.reply = reply
        self.word_delay_s = word_delay_s  # when set, the reply streams out word by word
        self.context_tokens = context_tokens
        self.delay_s = delay_s
        self.name = name
        # With a gate, each answer waits until it is set: before the answer is given, or, when
        # streamed with gate_after_words > 0, once that many words are out. Asked to stop while
        # waiting, the model stops there, as a real one does at its next token. A test holds the
        # model for as long as it needs, with no guess at how long anything takes.
        self.gate = gate
        self.gate_after_words = gate_after_words
        self.prompts: list[ChatMessages] = []
        self.answer_limits: list[int] = []  # max_new_tokens each answer was given
        self.thinking: list[bool | None] = []  # the thinking switch each render was asked for
        self.renders = 0  # chat-template renders asked for
        self.stopped_early = threading.Event()
        self.opens_thought = False  # as a chat template that opens the thought for the model

    def count_tokens(self, messages: ChatMessages) -> int:
        """One token per word plus a few per message for the template: deterministic and easy to reason about."""
        return sum(len(m["content"].split()) + 4 for m in messages) + 2

    def render(self, messages: ChatMessages, thinking: bool | None = None) -> RenderedPrompt:
        self.renders += 1
        self.thinking.append(thinking)
        return RenderedPrompt(messages, self.count_tokens(messages), thinking=thinking,
                              opens_thought=self.opens_thought)

    def output_tokens(self, text: str) -> int | None:
        return None

    def generate(self, messages: ChatMessages, params: GenerationSettings, should_stop) -> str:
        self.prompts.append([dict(m) for m in messages])
        self.answer_limits.append(params.max_new_tokens)
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if should_stop():
                self.stopped_early.set()
                return ""
            time.sleep(0.005)
        if self.gate_after_words == 0 and not self._through_gate(should_stop):
            return ""
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate_stream(self, prompt: RenderedPrompt, params: GenerationSettings, should_stop, emit,
                        lora: str | None = None) -> None:
        text = self.generate(prompt.messages, params, should_stop)
        for index, word in enumerate(re.split(r"(?<= )", text)):
            if index and index == self.gate_after_words and not self._through_gate(should_stop):
                return
            if should_stop():
                self.stopped_early.set()
                return
            emit(word)
            time.sleep(self.word_delay_s)

    def _through_gate(self, should_stop) -> bool:
        """Wait for the gate (if any); False when asked to stop meanwhile."""
        while self.gate is not None and not self.gate.wait(0.005):
            if should_stop():
                self.stopped_early.set()
                return False
        return True


class Gate:
    """Holds the scripted model inside generate() until the test opens it, so a test can act
    while an answer is being written (without guessing how long anything takes)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wrap(self, reply: Callable[[list], str]) -> Callable[[list], str]:
        def held(messages_: list) -> str:
            self.entered.set()
            if not self.opened.wait(timeout=10):
                raise TimeoutError("the test never opened the gate")
            return reply(messages_)
        return held

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 5), "the model was never asked"
