"""Persona + channel history -> chat messages that fit the model's context.

Token counts come from a callable that renders the messages with the model's
own chat template, so the budget is exact, never a characters-per-token guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .types import Turn

ChatMessages = list[dict[str, str]]
TokenCounter = Callable[[ChatMessages], int]

# When the history no longer fits, trim it down to this share of the budget in
# one go. Dropping a single turn each time would change the start of the prompt
# on every turn; trimming in a large chunk keeps the prompt's prefix stable for
# many turns after, which is what a prefix (KV) cache needs to be reused.
TRIM_TO_SHARE = 0.75


class PromptTooLong(Exception):
    """Even the persona and the newest message alone exceed the token budget."""

    def __init__(self, needed: int, budget: int):
        super().__init__(f"the prompt needs {needed} tokens but only {budget} fit")
        self.needed = needed
        self.budget = budget


@dataclass(frozen=True)
class Prompt:
    messages: ChatMessages
    tokens: int
    dropped_turns: int


def turn_to_message(turn: Turn) -> dict[str, str]:
    """A user turn carries its speaker's name, so the model can tell people apart."""
    if turn.role == "user" and turn.author_name:
        return {"role": "user", "content": f"{turn.author_name}: {turn.content}"}
    return {"role": turn.role, "content": turn.content}


def build_prompt(persona: str, turns: Sequence[Turn], count_tokens: TokenCounter,
                 budget: int, trim_to_share: float = TRIM_TO_SHARE) -> Prompt:
    """The persona as system message, then as many of the newest turns as fit in `budget` tokens.

    The oldest turns go first; the persona and the newest turn are never dropped.
    Raises PromptTooLong when those two alone do not fit.
    """
    system = [{"role": "system", "content": persona}]
    history = [turn_to_message(t) for t in turns]
    tokens = count_tokens(system + history)
    if tokens <= budget:
        return Prompt(system + history, tokens, dropped_turns=0)

    newest_only = count_tokens(system + history[-1:])
    if newest_only > budget:
        raise PromptTooLong(newest_only, budget)
    target = max(newest_only, int(budget * trim_to_share))
    start = _first_turn_that_fits(system, history, count_tokens, target)
    start = _start_at_user_turn(history, start)
    kept = system + history[start:]
    return Prompt(kept, count_tokens(kept), dropped_turns=start)


def _first_turn_that_fits(system: ChatMessages, history: ChatMessages,
                          count_tokens: TokenCounter, target: int) -> int:
    """Smallest start index whose suffix fits in `target` tokens (binary search: counts grow with length)."""
    low, high = 0, len(history) - 1  # the newest turn alone is known to fit
    while low < high:
        middle = (low + high) // 2
        if count_tokens(system + history[middle:]) <= target:
            high = middle
        else:
            low = middle + 1
    return low


def _start_at_user_turn(history: ChatMessages, start: int) -> int:
    """Begin the kept history with a user turn: an answer without its question only confuses the model."""
    while start < len(history) - 1 and history[start]["role"] != "user":
        start += 1
    return start
