"""A scripted model backend for tests about the bot, not the words.

It implements the same Backend protocol as the transformers backend and runs
inside the real ModelWorker, so the executor, time limits and error paths are
the real ones; only the words are scripted.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

from bot.config import GenerationSettings

ChatMessages = list[dict[str, str]]


def echo_last_user_message(messages: ChatMessages) -> str:
    return "echo: " + messages[-1]["content"]


class ScriptedBackend:
    def __init__(self, reply: Callable[[ChatMessages], str] | str = echo_last_user_message,
                 context_tokens: int = 4096, delay_s: float = 0.0, name: str = "scripted",
                 word_delay_s: float = 0.0):
        self.reply = reply
        self.word_delay_s = word_delay_s  # when set, the reply streams out word by word
        self.context_tokens = context_tokens
        self.delay_s = delay_s
        self.name = name
        self.prompts: list[ChatMessages] = []
        self.stopped_early = threading.Event()

    def count_tokens(self, messages: ChatMessages) -> int:
        """One token per word plus a few per message for the template: deterministic and easy to reason about."""
        return sum(len(m["content"].split()) + 4 for m in messages) + 2

    def generate(self, messages: ChatMessages, params: GenerationSettings, should_stop) -> str:
        self.prompts.append([dict(m) for m in messages])
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if should_stop():
                self.stopped_early.set()
                return ""
            time.sleep(0.005)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate_stream(self, messages: ChatMessages, params: GenerationSettings, should_stop, emit) -> None:
        text = self.generate(messages, params, should_stop)
        for word in re.split(r"(?<= )", text):
            if should_stop():
                self.stopped_early.set()
                return
            emit(word)
            time.sleep(self.word_delay_s)
