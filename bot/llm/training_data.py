"""Training data for `python -m bot finetune`: the exported conversations, checked, split and tokenized.

The data is what `python -m bot export` writes: a JSONL file, one {"messages": [...]} conversation
per line (the persona as the system message, "Name: text" user turns, the bot's answers). Each
conversation is rendered exactly as the bot renders its prompts (bot.llm.chat_template: the
model's own chat template, contents as plain text, SmolLM3's thinking switch from the config),
and only the assistant's answers and their end-of-turn tokens carry loss.

How the mask is found, for any template: the tokens of the prompt the bot would give the model
before answer i (the conversation so far plus the generation prompt) are a prefix of the whole
conversation's tokens; answer i is what follows, up to and including the next end-of-turn token.
Contents are encoded without control tokens, so an end-of-turn token there is always the
template's own. SmolLM2/SmolLM3 templates have no {% generation %} markers, so TRL's
assistant_only_loss cannot find these spans itself; TRL gets a pre-tokenized dataset instead
(`input_ids` + `assistant_masks`, which it folds into `labels`).

Nothing here imports torch, transformers, datasets or jinja2 at module level: bot.llm.finetune
imports this module, and the CLI loads that one cheaply.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from ..core.tokens import common_prefix_length

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


class FinetuneError(Exception):
    """Training cannot start or finish; str() is one sentence saying what to fix."""


@dataclass(frozen=True)
class Conversation:
    line: int  # 1-based line in the data file, for messages about it
    messages: Messages


# Reading and checking the data ------------------------------------------------------------------


def read_conversations(path: Path) -> list[Conversation]:
    """The conversations of an export file, checked; a FinetuneError names the first bad line.
    Conversations without an assistant turn teach nothing and are skipped (with a log line);
    messages after the last assistant turn are dropped for the same reason."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"{path}: no such file." if not path.exists() else f"{path} is not a file.")
    conversations: list[Conversation] = []
    skipped = 0
    try:
        with path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                messages = _check_line(path, number, line)
                last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
                if last_answer is None:
                    skipped += 1
                    continue
                conversations.append(Conversation(number, messages[:last_answer + 1]))
    except UnicodeDecodeError as error:
        raise FinetuneError(f"{path} is not UTF-8 text (byte {error.start} of a line cannot be read).") from None
    except OSError as error:
        raise FinetuneError(f"{path} cannot be read: {error.strerror or error}.") from None
    if skipped:
        log.warning("Skipped %d conversation(s) of %s without an assistant turn.", skipped, path)
    if not conversations:
        raise FinetuneError(f"{path} has no conversation with an assistant turn: there is nothing to learn."
                            if skipped else f"{path} holds no conversations.")
    return conversations


def _check_line(path: Path, number: int, line: str) -> Messages:
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise FinetuneError(f"{where} is not JSON ({error.msg} at column {error.colno}); "
                            'the data must be JSONL, one {"messages": [...]} object per line.') from None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise FinetuneError(f'{where} has no "messages" list; each line must be {{"messages": [...]}}.')
    messages = record["messages"]
    if not messages:
        raise FinetuneError(f'{where} has an empty "messages" list.')
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise FinetuneError(f"{where}, message {index} is not an object with a role and a content.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise FinetuneError(f"{where}, message {index} has the unknown role {role!r} "
                                "(allowed: system, user, assistant).")
        if not isinstance(content, str):
            raise FinetuneError(f"{where}, message {index} has no text content.")
        if role == "system" and index != 1:
            raise FinetuneError(f"{where}, message {index} is a system message; only the first message may be one.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def split_conversations(conversations: list[Conversation], eval_fraction: float,
                        seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held out): a seeded shuffle, at least one conversation on each side."""
    if len(conversations) < 2:
        raise FinetuneError(f"Fine-tuning needs at least 2 conversations with an assistant turn (one to train on, "
                            f"one held out to measure the loss); the data has {len(conversations)}.")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held_out = min(len(order) - 1, max(1, round(len(order) * eval_fraction)))
    eval_set = sorted(order[:held_out])
    train_set = sorted(order[held_out:])
    return [conversations[i] for i in train_set], [conversations[i] for i in eval_set]


# Tokens and the loss mask ------------------------------------------------------------------------


def tokenize_conversation(backend, messages: Messages, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_mask) of one conversation, rendered as `backend` renders the bot's
    prompts (backend: a TransformersBackend, or anything with render(), stop_ids). The mask is 1 on
    each assistant answer and its end-of-turn token, 0 elsewhere (persona, user turns, the template's
    markup, SmolLM3's empty think block). Cut to max_length tokens."""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    if not answers:
        return [], []
    stops = set(backend.stop_ids)
    # The whole conversation up to its last answer: render() ends with a generation prompt for one
    # more answer, which is cut off below, after the last answer's end-of-turn token.
    full = list(backend.render(messages[:answers[-1] + 1]).token_ids)
    mask = [0] * len(full)
    end = 0
    for i in answers:
        prompt = list(backend.render(messages[:i]).token_ids)
        start = common_prefix_length(prompt, full)  # len(prompt), unless a token spans the seam
        if max_length is not None and start >= max_length:
            break
        stop = next((p for p in range(start, len(full)) if full[p] in stops), len(full) - 1)
        mask[start:stop + 1] = [1] * (stop + 1 - start)
        end = stop + 1
    limit = end if max_length is None else min(end, max_length)
    return full[:limit], mask[:limit]


def build_dataset(backend, conversations: list[Conversation], max_length: int, what: str):
    """A pre-tokenized datasets.Dataset as TRL's SFTTrainer takes it: `input_ids` and
    `assistant_masks` (TRL turns the mask into `labels`, -100 where it is 0)."""
    from datasets import Dataset
    from jinja2 import TemplateError

    ids, masks = [], []
    for conversation in conversations:
        try:
            tokens, mask = tokenize_conversation(backend, conversation.messages, max_length)
        except TemplateError as error:
            raise FinetuneError(f"The chat template of {backend.name} refuses the conversation on line "
                                f"{conversation.line} of the data: {error}.") from None
        if any(mask):  # an answer past max_length leaves nothing to learn from
            ids.append(tokens)
            masks.append(mask)
    if not ids:
        raise FinetuneError(f"No {what} conversation has an answer within the first {max_length} tokens; "
                            "raise --max-length.")
    if len(ids) < len(conversations):
        log.warning("%d %s conversation(s) have no answer within the first %d tokens and are left out.",
                    len(conversations) - len(ids), what, max_length)
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks})
