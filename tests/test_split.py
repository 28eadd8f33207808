"""Long answers become Discord-sized parts with code blocks kept intact."""

import re

from bot.core.split import split_message


def fences_balanced(part):
    return len(re.findall(r"^```", part, flags=re.M)) % 2 == 0


def test_short_text_is_one_part_and_empty_text_is_none():
    assert split_message("hello") == ["hello"]
    assert split_message("  \n ") == []


def test_a_5000_character_answer_splits_at_paragraphs_with_code_intact():
    paragraph = ("This sentence is filler for a long answer. " * 20).strip()
    code = "```python\n" + "\n".join(f"value_{i} = {i} * 2" for i in range(40)) + "\n```"
    text = "\n\n".join([paragraph, paragraph, code, paragraph, paragraph, paragraph])
    assert len(text) > 5000
    parts = split_message(text)
    assert all(len(p) <= 2000 for p in parts)
    assert all(fences_balanced(p) for p in parts)
    assert "\n\n".join(parts) == text  # cut only at paragraph breaks: nothing lost or changed
    assert any(code in p for p in parts)  # the code block fits in a part, so it is never cut


def test_a_code_block_longer_than_a_message_is_closed_and_reopened_with_its_language():
    code = "```js\n" + "\n".join(f"console.log({i});" for i in range(300)) + "\n```"
    parts = split_message("Here you go:\n" + code)
    assert len(parts) > 2
    assert all(len(p) <= 2000 and fences_balanced(p) for p in parts)
    assert all(p.startswith("```js\n") for p in parts[1:])
    body = [line for p in parts for line in p.splitlines() if line.startswith("console.log")]
    assert body == [f"console.log({i});" for i in range(300)]


def test_unbroken_text_is_cut_hard_but_never_over_the_limit():
    parts = split_message("x" * 4500)
    assert [len(p) for p in parts] == [2000, 2000, 500]


def test_long_lines_are_cut_at_spaces():
    text = " ".join(f"word{i}" for i in range(1000))
    parts = split_message(text)
    assert all(len(p) <= 2000 for p in parts)
    assert " ".join(p.strip() for p in parts).split() == text.split()


def test_a_code_block_left_open_at_the_end_is_closed():
    # The model was cut off inside the block (max_new_tokens): whatever follows the part must not be code.
    assert split_message("Here:\n```python\nprint(i)") == ["Here:\n```python\nprint(i)\n```"]
    assert split_message("~~~\nx = 1\n") == ["~~~\nx = 1\n~~~"]
    assert split_message("Done:\n```python\nprint(i)\n```") == ["Done:\n```python\nprint(i)\n```"]


def test_closing_a_code_block_keeps_the_part_within_the_limit():
    text = "y" * 1980 + "\n\n```\n" + "x" * 12  # 1999 characters: 2003 once closed
    parts = split_message(text)
    assert parts == ["y" * 1980, "```\n" + "x" * 12 + "\n```"]


def test_a_one_line_code_span_in_triple_backticks_opens_no_block():
    text = "Run it with\n```make demo```"
    assert split_message(text) == [text]
