"""Prompt building: persona + speakers + token budget, with the model's own template counting."""

import pytest

from bot.core.prompt import PromptTooLong, RenderedPrompt, build_prompt
from bot.core.types import Turn


def words(messages):
    """A render anyone can check by hand: one token per word, four per message."""
    return RenderedPrompt(messages, sum(len(m["content"].split()) + 4 for m in messages))


class CountingRender:
    def __init__(self):
        self.rendered: list[int] = []  # how many messages each render had

    def __call__(self, messages):
        self.rendered.append(len(messages))
        return words(messages)


def conversation(n):
    turns = []
    for i in range(n):
        turns.append(Turn("user", f"question number {i} here", author_name=f"user{i % 3}"))
        turns.append(Turn("assistant", f"answer number {i} here"))
    return turns


def test_persona_is_the_system_message_and_each_user_turn_names_its_speaker():
    turns = [Turn("user", "hi", author_name="Ann"), Turn("assistant", "hello Ann"),
             Turn("user", "and me?", author_name="Bob")]
    prompt = build_prompt("Be kind.", turns, words, budget=1000)
    assert prompt.messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Ann: hi"},
        {"role": "assistant", "content": "hello Ann"},
        {"role": "user", "content": "Bob: and me?"},
    ]
    assert prompt.dropped_turns == 0
    assert prompt.tokens == words(prompt.messages).tokens


def test_oldest_turns_go_first_and_persona_and_newest_turn_stay():
    turns = conversation(20) + [Turn("user", "the newest one", author_name="Ann")]
    prompt = build_prompt("Persona.", turns, words, budget=100)
    assert prompt.tokens <= 100
    assert prompt.messages[0] == {"role": "system", "content": "Persona."}
    assert prompt.messages[-1]["content"] == "Ann: the newest one"
    assert prompt.dropped_turns == len(turns) - (len(prompt.messages) - 1)
    assert prompt.dropped_turns > 0
    # The kept history is the newest part, in order, and starts with a question.
    kept = [m["content"] for m in prompt.messages[1:]]
    assert kept == [m["content"] for m in build_prompt("Persona.", turns, words, 10**6).messages[-len(kept):]]
    assert prompt.messages[1]["role"] == "user"


def test_trimming_happens_in_a_chunk_so_the_prefix_stays_stable_for_the_next_turns():
    turns = conversation(30)
    budget = 200
    first = build_prompt("P", turns, words, budget)
    assert first.trimmed and first.tokens <= int(budget * 0.75)
    # Two exchanges later, started where the last prompt started, the prompt only grew at the end.
    more = turns + conversation(32)[-4:]
    later = build_prompt("P", more, words, budget, start=first.first_turn)
    assert not later.trimmed
    assert later.messages[:len(first.messages)] == first.messages
    # Once the budget is exceeded again, one more chunk goes.
    much_more = more + conversation(50)[-30:]
    cut = build_prompt("P", much_more, words, budget, start=first.first_turn)
    assert cut.trimmed and cut.first_turn > first.first_turn and cut.tokens <= int(budget * 0.75)


def test_turn_limit_also_cuts_in_a_chunk():
    turns = conversation(30)  # 60 turns
    prompt = build_prompt("P", turns, words, budget=10**6, max_turns=40, start=0)
    assert prompt.trimmed and len(prompt.messages) - 1 == 30
    assert build_prompt("P", turns[:40], words, budget=10**6, max_turns=40).trimmed is False


def test_persona_plus_newest_turn_that_cannot_fit_is_refused_not_cut():
    with pytest.raises(PromptTooLong) as caught:
        build_prompt("P " * 50, [Turn("user", "word " * 100, author_name="A")], words, budget=60)
    assert caught.value.budget == 60 and caught.value.needed > 60


def test_count_with_the_real_chat_template_matches_the_tokenizer(embedded_worker):
    backend = embedded_worker.backend
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Ann: hello there"}]
    expected = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
    rendered = embedded_worker.render(messages)
    assert rendered.tokens == len(expected) and list(rendered.token_ids) == expected
    turns = conversation(200)
    prompt = build_prompt("You are terse.", turns, embedded_worker.render, budget=500)
    assert 0 < prompt.tokens <= 500
    assert prompt.rendered.token_ids == embedded_worker.render(prompt.messages).token_ids


def test_a_prompt_that_fits_is_rendered_once_and_that_render_is_the_prompt():
    render = CountingRender()
    prompt = build_prompt("P", conversation(10), render, budget=10**6, max_turns=40, start=0)
    assert render.rendered == [1 + 20]
    assert prompt.rendered.messages == prompt.messages and prompt.tokens == words(prompt.messages).tokens


def test_cutting_older_turns_renders_each_candidate_start_at_most_once():
    render = CountingRender()
    prompt = build_prompt("P", conversation(100), render, budget=300)
    assert prompt.trimmed and prompt.tokens <= 300
    assert len(render.rendered) == len(set(render.rendered))  # no suffix rendered twice
    assert len(render.rendered) <= 12  # a binary search over 200 turns, not a render per turn
