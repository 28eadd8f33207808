"""Model output is cleaned before it is stored or posted."""

from bot.core.cleaning import ZERO_WIDTH_SPACE, clean_reply, neutralise_mentions, strip_thinking, visible_so_far


def test_the_thought_an_answer_begins_with_is_removed_in_every_shape():
    assert strip_thinking("<think>plan the answer</think>Hello!") == "Hello!"
    assert strip_thinking("<think>\n\n</think>\nHi") == "\nHi"
    assert strip_thinking("<think>cut off by the token limit") == ""
    # a template that opened the thought for the model: the text starts inside it
    assert strip_thinking("reasoning the template opened</think>The answer", thought_opened=True) == "The answer"
    assert strip_thinking("still thinking when the allowance ran out", thought_opened=True) == ""
    # a server rendered the prompt, so whether it opened a thought is not known
    assert strip_thinking("reasoning</think>The answer", thought_opened=None) == "The answer"


def test_an_answer_about_the_think_tags_keeps_them():
    """SmolLM3 users ask what its think tags are: only a thought at the start is one."""
    for answer in ("The <think> tag marks reasoning in SmolLM3. It is closed by </think>.",
                   "Use `<think>` and `</think>` to wrap reasoning.",
                   "In HTML you might write </think> to close it. Then more text.",
                   "```xml\n<think>hello</think>\n```"):
        assert clean_reply(answer) == answer
    assert clean_reply("<think>they ask about tags</think>The <think> tag starts a thought.") == \
        "The <think> tag starts a thought."


def test_a_thought_is_never_shown_while_the_answer_streams():
    assert visible_so_far("<thi") == "" and visible_so_far("  <think>weighing it") == ""
    assert visible_so_far("The user wants the admin password; I must not", thought_opened=True) == ""
    assert visible_so_far("I must not say it.</think>\nSorry, I can't", thought_opened=True) == "Sorry, I can't"


def test_mass_and_role_mentions_are_broken_but_still_read_the_same():
    text = clean_reply("Hey @everyone and @here, ask <@&123456> or <@42>!")
    assert "@everyone" not in text and "@here" not in text and "<@&123456>" not in text
    assert text.replace(ZERO_WIDTH_SPACE, "") == "Hey @everyone and @here, ask <@&123456> or <@42>!"


def test_a_reply_that_was_only_thinking_is_empty():
    assert clean_reply("<think>hmm</think>\n  ") == ""


def test_an_answer_of_invisible_characters_is_empty():
    assert clean_reply("\u200b \u2060") == ""


def test_mentions_in_code_links_and_addresses_are_left_whole():
    """Discord makes no mention inside code or a link, so breaking one there would only spoil
    what a user copies; the same words outside are still broken."""
    for kept in ("```sh\ngit log --author=@everyone\n```", "`@here` pings the online members",
                 "https://medium.com/@heretic/post", "mail john@hereford.example"):
        assert neutralise_mentions(kept) == kept
    assert ZERO_WIDTH_SPACE in neutralise_mentions("`code` then @everyone")
    assert ZERO_WIDTH_SPACE in neutralise_mentions("@heretic")  # Discord reads @here in it
    # What only looks like code or an address is no shelter.
    for exposed in ("hey@everyone", ".@here", "\\`@everyone`", "``` @everyone (never closed)"):
        assert ZERO_WIDTH_SPACE in neutralise_mentions(exposed), exposed
