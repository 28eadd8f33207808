"""Model output is cleaned before it is stored or posted."""

from bot.core.cleaning import ZERO_WIDTH_SPACE, clean_reply, strip_thinking


def test_think_blocks_are_removed_whole_in_every_shape():
    assert strip_thinking("<think>plan the answer</think>Hello!") == "Hello!"
    assert strip_thinking("<think>\n\n</think>\nHi") == "\nHi"
    assert strip_thinking("reasoning that the template opened</think>The answer") == "The answer"
    assert strip_thinking("Sure.<think>cut off by the token limit") == "Sure."
    assert strip_thinking("A <THINK>x</THINK>B") == "A B"


def test_mass_and_role_mentions_are_broken_but_still_read_the_same():
    text = clean_reply("Hey @everyone and @here, ask <@&123456> or <@42>!")
    assert "@everyone" not in text and "@here" not in text and "<@&123456>" not in text
    assert text.replace(ZERO_WIDTH_SPACE, "") == "Hey @everyone and @here, ask <@&123456> or <@42>!"


def test_a_reply_that_was_only_thinking_is_empty():
    assert clean_reply("<think>hmm</think>\n  ") == ""
