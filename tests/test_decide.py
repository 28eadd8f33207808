"""The reply decision, with plain values: when the bot answers, and why not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.core.decide import Action, could_be_answered, is_addressed, should_answer
from bot.core.types import IncomingMessage

IN_A_SERVER = IncomingMessage(channel_id=10, guild_id=1, author_id=7, author_name="Alice", content="hello")


def message(**changes) -> IncomingMessage:
    return replace(IN_A_SERVER, **changes)


@pytest.mark.parametrize("spoken_to", [
    {"mentions_bot": True},
    {"replies_to_bot": True},
    {"guild_id": None},  # a DM
])
def test_answers_when_spoken_to_even_with_auto_reply_off(spoken_to):
    decision = should_answer(message(**spoken_to), auto_reply=False)
    assert decision.action is Action.ANSWER and not decision.ignored


def test_answers_everything_where_auto_reply_is_on():
    decision = should_answer(message(), auto_reply=True)
    assert decision.action is Action.ANSWER
    assert decision.reason == "auto-reply is on in this channel"


def test_ignores_a_message_not_meant_for_it():
    decision = should_answer(message(), auto_reply=False)
    assert decision.ignored and decision.reason == "not addressed to the bot"


@pytest.mark.parametrize("auto_reply", [False, True])
def test_never_answers_bots_even_when_they_mention_it(auto_reply):
    decision = should_answer(message(author_is_bot=True, mentions_bot=True), auto_reply)
    assert decision.ignored and decision.reason == "the author is a bot"


def test_never_answers_system_messages():
    decision = should_answer(message(is_system=True, guild_id=None), auto_reply=True)
    assert decision.ignored and decision.reason == "a system message"


@pytest.mark.parametrize("content", ["", "   \n "])
def test_ignores_empty_text(content):
    decision = should_answer(message(content=content, mentions_bot=True), auto_reply=False)
    assert decision.ignored and decision.reason == "no text"


def test_attachments_without_text_get_a_note():
    decision = should_answer(message(content="", attachment_names=("cat.png",), mentions_bot=True), auto_reply=False)
    assert decision.action is Action.EXPLAIN_TEXT_ONLY


def test_attachments_with_text_are_answered():
    decision = should_answer(message(attachment_names=("cat.png",), mentions_bot=True), auto_reply=False)
    assert decision.action is Action.ANSWER


def test_attachments_not_meant_for_it_are_ignored():
    decision = should_answer(message(content="", attachment_names=("cat.png",)), auto_reply=False)
    assert decision.ignored


def test_reasons_say_how_it_was_addressed():
    assert should_answer(message(guild_id=None), False).reason == "a direct message"
    assert should_answer(message(mentions_bot=True), False).reason == "mentions the bot"
    assert should_answer(message(replies_to_bot=True), False).reason == "replies to the bot"


def test_is_addressed():
    assert not is_addressed(message())
    assert is_addressed(message(guild_id=None))
    assert is_addressed(message(mentions_bot=True))
    assert is_addressed(message(replies_to_bot=True))


def test_attachments_alone_in_an_auto_reply_channel_are_passed_over_unless_addressed():
    """Auto-reply answers what people write; a picture posted there is not a question to the bot."""
    assert should_answer(message(content="", attachment_names=("cat.png",)), auto_reply=True).action is Action.IGNORE
    addressed = should_answer(message(content="", attachment_names=("cat.png",), mentions_bot=True), auto_reply=True)
    assert addressed.action is Action.EXPLAIN_TEXT_ONLY


@pytest.mark.parametrize("incoming, could", [
    (message(author_is_bot=True), False),
    (message(is_system=True), False),
    (message(content="", attachment_names=("cat.png",)), False),  # a picture in any channel: not noted there
    (message(content="", attachment_names=("cat.png",), replies_to_unknown=99), True),  # maybe a reply to an answer
    (message(content="", replies_to_unknown=99), False),  # nothing to read, nothing to note
    (message(), True),  # auto-reply may be on in its channel
])
def test_could_be_answered_keeps_every_message_the_service_might_answer(incoming, could):
    assert could_be_answered(incoming) is could
