"""Persona + channel history -> chat messages that fit the model's context.

Token counts come from the model's `render`, which renders the messages with the
model's own chat template, so the budget is exact, never a characters-per-token
guess. The render that fits is kept: its token ids go to the model as they are,
so a turn is rendered once (more only when older turns must be cut).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .cleaning import neutralise_mentions
from .types import IncomingMessage, Turn

ChatMessages = list[dict[str, str]]


@dataclass(frozen=True)
class RenderedPrompt:
    """Chat messages as a model reads them: rendered by its chat template, with their length.
    `token_ids` are the ids a local model prefills as they are (None where the prompt is sent
    as messages, to a server that renders it itself)."""

    messages: ChatMessages
    tokens: int
    token_ids: tuple[int, ...] | None = None
    thinking: bool | None = None  # SmolLM3's reasoning switch it was rendered with (None: the model's default)
    # The prompt ends inside a thought its chat template opened, so the answer starts in one
    # (None: not known, where a server renders the prompt).
    opens_thought: bool | None = False


Render = Callable[[ChatMessages], RenderedPrompt]

# When the history no longer fits, trim it down to this share of the limit in
# one go. Dropping a single turn each time would change the start of the prompt
# on every turn; trimming in a large chunk (and then keeping that start while it
# fits) keeps the prompt's prefix stable for many turns, which is what a prefix
# (KV) cache needs to be reused.
TRIM_TO_SHARE = 0.75


class PromptTooLong(Exception):
    """Even the persona and the newest message alone exceed the token budget."""

    def __init__(self, needed: int, budget: int):
        super().__init__(f"the prompt needs {needed} tokens but only {budget} fit")
        self.needed = needed
        self.budget = budget


@dataclass(frozen=True)
class Prompt:
    rendered: RenderedPrompt
    first_turn: int  # index into the given turns of the oldest turn kept
    trimmed: bool  # this call had to cut older turns (the previous prompt's start no longer fit)

    @property
    def messages(self) -> ChatMessages:
        return self.rendered.messages

    @property
    def tokens(self) -> int:
        return self.rendered.tokens

    @property
    def dropped_turns(self) -> int:
        return self.first_turn


def turn_to_message(turn: Turn) -> dict[str, str]:
    """A user turn carries its speaker's name, so the model can tell people apart."""
    if turn.role == "user" and turn.author_name:
        return {"role": "user", "content": f"{turn.author_name}: {turn.content}"}
    return {"role": turn.role, "content": turn.content}


def build_prompt(persona: str, turns: Sequence[Turn], render: Render, budget: int, *,
                 max_turns: int | None = None, start: int = 0,
                 trim_to_share: float = TRIM_TO_SHARE) -> Prompt:
    """The persona as system message, then the channel's turns from `start` on, within limits.

    `start` is where the channel's previous prompt began: keeping it while it still
    fits keeps the prompt append-only. When the turns from there exceed `max_turns`
    or `budget` tokens, older turns are cut in one chunk, down to `trim_to_share` of
    the limit. The persona and the newest turn are never dropped; PromptTooLong is
    raised when those two alone do not fit.
    """
    system = [{"role": "system", "content": persona}]
    history = [turn_to_message(t) for t in turns]
    renders: dict[int, RenderedPrompt] = {}

    def rendered_from(first: int) -> RenderedPrompt:  # each suffix is rendered at most once
        if first not in renders:
            renders[first] = render(system + history[first:])
        return renders[first]

    start = min(max(start, 0), len(history) - 1)
    trimmed = False
    if max_turns and len(history) - start > max_turns:
        start = len(history) - max(1, int(max_turns * trim_to_share))
        trimmed = True
    if rendered_from(start).tokens > budget:
        newest_only = rendered_from(len(history) - 1).tokens
        if newest_only > budget:
            raise PromptTooLong(newest_only, budget)
        target = max(newest_only, int(budget * trim_to_share))
        start = _first_turn_that_fits(lambda first: rendered_from(first).tokens, len(history), target, start)
        trimmed = True
    if trimmed:
        start = _start_at_user_turn(history, start)
    return Prompt(rendered_from(start), first_turn=start, trimmed=trimmed)


UNREAD_ATTACHMENTS = "[attached, not readable by the bot: {names}]"
MOST_ATTACHMENTS_NAMED = 5


def as_the_model_reads(message: IncomingMessage) -> str:
    """The new message's text as the model reads it (the stored turn keeps the words alone):
    after what it replies to, where that is someone else's message, on one line (so it cannot
    pass for a message of its own) and with its mentions broken, as recalled text is; and
    followed by the names of its files, so that the model does not answer as if it saw them."""
    text = message.content
    if message.replied_text:
        quoted = neutralise_mentions(" ".join(message.replied_text.split()))
        text = f"(replying to {quoted})\n{text}"
    if message.attachment_names:
        names = [*message.attachment_names[:MOST_ATTACHMENTS_NAMED],
                 *(["..."] if len(message.attachment_names) > MOST_ATTACHMENTS_NAMED else [])]
        text += "\n" + UNREAD_ATTACHMENTS.format(names=neutralise_mentions(", ".join(names)))
    return text


RECALL_HEADER = "Earlier in this channel (recalled; times in UTC):"


def with_recall(prompt: Prompt, recalled: Sequence[Turn], render: Render, budget: int, max_tokens: int) -> Prompt:
    """The prompt with older turns of the channel (`recalled`, best match first) shown as a marked
    block at the start of its newest message: the best ones that fit in `max_tokens` more
    tokens and in `budget` in all. Put there, not in the system message, it leaves the start of
    the prompt as it was, so a prefix cache of the channel's earlier turns stays valid.
    Recalled text is user content like any message: it goes through the same render (control
    tokens stay plain text) and its mentions are broken."""
    def fits(rendered: RenderedPrompt) -> bool:
        return rendered.tokens <= budget and rendered.tokens - prompt.tokens <= max_tokens

    everything = render(_with_recall_block(prompt.messages, recalled))
    if fits(everything):  # the usual case: one render more than the prompt alone
        return replace(prompt, rendered=everything)
    kept: list[Turn] = []
    best = prompt
    for turn in recalled:  # all of them did not fit: the best that do, one at a time
        rendered = render(_with_recall_block(prompt.messages, [*kept, turn]))
        if fits(rendered):
            kept.append(turn)
            best = replace(prompt, rendered=rendered)
    return best


def _with_recall_block(messages: ChatMessages, recalled: Sequence[Turn]) -> ChatMessages:
    lines = [_recalled_line(turn) for turn in sorted(recalled, key=lambda turn: turn.id or 0)]  # oldest first
    newest = messages[-1]
    block = "\n".join([RECALL_HEADER, *lines])
    return [*messages[:-1], {**newest, "content": f"{block}\n\n{newest['content']}"}]


def _recalled_line(turn: Turn) -> str:
    """`[2026-11-30 14:02] Ann: what she said`, on one line so no message can pass for another."""
    when = f"[{turn.created_at:%Y-%m-%d %H:%M}] " if turn.created_at else ""
    speaker = turn.author_name or ("you" if turn.role == "assistant" else "someone")
    return f"{when}{speaker}: {neutralise_mentions(' '.join(turn.content.split()))}"


def _first_turn_that_fits(tokens_from: Callable[[int], int], length: int, target: int, low: int) -> int:
    """Smallest start index whose suffix fits in `target` tokens (binary search: counts grow with length)."""
    high = length - 1  # the newest turn alone is known to fit
    while low < high:
        middle = (low + high) // 2
        if tokens_from(middle) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def _start_at_user_turn(history: ChatMessages, start: int) -> int:
    """Begin the kept history with a user turn: an answer without its question only confuses the model."""
    while start < len(history) - 1 and history[start]["role"] != "user":
        start += 1
    return start
