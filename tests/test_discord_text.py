"""The Discord adapter's pure parts: mention markup to names, notes under a reply, .env files."""

from __future__ import annotations

import discord
import pytest

from bot import messages
from bot.core.types import Reply
from bot.discord_bot.launch import DiscordSetupError, cleaned_token, discord_token, read_dotenv
from bot.discord_bot.mentions import MentionNames, readable_text
from bot.discord_bot.posting import parts_to_post, preview, retry_after
from tests.support.settings import settings_for

BOT, BOT_ROLE, MOD, ADMINS, GENERAL = 100, 101, 200, 300, 400
NAMES = MentionNames(users={MOD: "Mod", BOT: "Bot"}, roles={ADMINS: "Admins"}, channels={GENERAL: "general"},
                     own=frozenset({BOT, BOT_ROLE}))


def test_the_bots_own_mention_is_removed():
    assert readable_text(f"<@{BOT}> hello", NAMES) == "hello"
    assert readable_text(f"hey <@!{BOT}>, how are you?", NAMES) == "hey, how are you?"
    assert readable_text(f"<@&{BOT_ROLE}> what is 2+2?", NAMES) == "what is 2+2?"


def test_other_mentions_become_names():
    text = f"<@{BOT}> ask <@!{MOD}> or <@&{ADMINS}> in <#{GENERAL}>"
    assert readable_text(text, NAMES) == "ask @Mod or @Admins in #general"


def test_unknown_mentions_and_custom_emoji_read_plainly():
    assert readable_text("<@999> <@&998> <#997> nice <:pepe:123> <a:dance:456>", NAMES) == (
        "@unknown-user @deleted-role #deleted-channel nice :pepe: :dance:")


def test_lines_and_indentation_are_kept():
    assert readable_text(f"<@{BOT}> fix this:\n```py\n    x = 1\n```", NAMES) == "fix this:\n```py\n    x = 1\n```"


def test_notes_go_under_the_last_part_as_subtext():
    reply = Reply("one " * 600 + "two", notes=["3 older message(s) were left out."])
    parts = parts_to_post(reply)
    assert len(parts) == 2 and parts[-1].endswith("two\n-# 3 older message(s) were left out.")


def test_a_note_that_does_not_fit_gets_its_own_part():
    reply = Reply("x" * 1995, notes=["a note"])
    assert parts_to_post(reply) == ["x" * 1995, "-# a note"]


def test_notes_and_the_still_writing_mark_follow_a_code_block_cut_off_at_its_end():
    cut_off = "Here:\n```python\nprint(i)"  # the model ran out of tokens inside the block
    reply = Reply(cut_off, notes=["The answer was cut short."])
    assert parts_to_post(reply) == ["Here:\n```python\nprint(i)\n```\n-# The answer was cut short."]
    assert preview(cut_off) == "Here:\n```python\nprint(i)\n``` \u2026"


def test_a_reply_without_notes_is_posted_as_is():
    assert parts_to_post(Reply("just this")) == ["just this"]


def test_a_long_reply_is_split_at_discords_limit_only_here():
    text = "\n\n".join(f"Paragraph {n}: " + "words " * 60 for n in range(20))
    parts = parts_to_post(Reply(text))
    assert len(parts) > 1 and all(len(part) <= 2000 for part in parts)
    assert " ".join(parts).split() == text.split()  # nothing lost or added


def test_dotenv(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# secrets\n\nexport DISCORD_TOKEN='abc.def'\nOTHER = \"x y\"\nnot a pair\n")
    assert read_dotenv(path) == {"DISCORD_TOKEN": "abc.def", "OTHER": "x y"}
    assert read_dotenv(tmp_path / "missing") == {}


async def test_text_that_comes_while_an_edit_is_on_its_way_is_shown_after_it():
    """The newest text is shown even when nothing follows it: say a queue notice, and then the
    model is silent for a while. Here it arrives while the previous edit waits for Discord."""
    import asyncio
    from types import SimpleNamespace

    from bot.discord_bot.posting import StreamedReply
    from tests.support.waiting import until

    class HeldMessage:
        id = 1

        def __init__(self) -> None:
            self.edits: list[str] = []
            self.editing, self.release = asyncio.Event(), asyncio.Event()

        async def edit(self, content: str, **_options) -> None:
            self.editing.set()
            await self.release.wait()
            self.edits.append(content)

    message = HeldMessage()

    async def send(text: str, **_options) -> HeldMessage:
        return message

    trigger = SimpleNamespace(channel=SimpleNamespace(id=5, send=send), guild=None, id=9,
                              to_reference=lambda **_options: None)
    streamed = StreamedReply(trigger, interval=0.001)
    await streamed.update("Writing")
    await until(lambda: streamed.message is not None)  # posted
    await streamed.update("Writing an")
    await message.editing.wait()  # that edit is on its way ...
    await streamed.update("You are number 2 in line.")  # ... when this comes, and then nothing
    message.release.set()
    await until(lambda: message.edits[-1:] == ["You are number 2 in line. …"])


async def test_previews_take_turns_spaced_by_the_edit_budget_first_come_first_served():
    from bot.discord_bot.posting import EditBudget

    clock, waits = [100.0], []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))

    budget = EditBudget(4, now=lambda: clock[0], sleep=sleep)  # a turn every 0.25 s
    for _ in range(3):  # three answers ask at once: the first goes now, then 0.25 s apart
        await budget.turn()
    assert waits == [0.25, 0.5]
    clock[0] = 101.0  # later than every turn given: the next goes at once
    await budget.turn()
    assert waits == [0.25, 0.5]


def test_dotenv_saved_by_notepad_with_a_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes("\ufeffDISCORD_TOKEN=abc.def\r\n".encode())
    assert read_dotenv(path) == {"DISCORD_TOKEN": "abc.def"}


@pytest.mark.parametrize("pasted", ["MTA5.abc-D_E.f", " Bot MTA5.abc-D_E.f\n", '"MTA5.abc-D_E.f"',
                                    "\u201cMTA5.abc-D_E.f\u201d"])
def test_a_pasted_token_loses_quotes_and_the_bot_prefix(pasted):
    assert cleaned_token(pasted) == "MTA5.abc-D_E.f"


@pytest.mark.parametrize("pasted, named", [("MTA5.abc D_E.f", "a space"), ("MTA5.abc\nD_E.f", "a line break"),
                                           ("MTA5.abc\u00e9.f", "the character 'é'")])
def test_a_token_with_what_no_token_has_says_what_and_where_to_copy_it(pasted, named):
    with pytest.raises(DiscordSetupError) as error:
        cleaned_token(pasted)
    assert str(error.value) == messages.DISCORD_TOKEN_MALFORMED.format(character=named)
    assert "MTA5" not in str(error.value)


def test_a_token_in_dotenv_under_another_name_is_pointed_out(tmp_path):
    path = tmp_path / ".env"
    path.write_text("DISCORD_BOT_TOKEN=abc.def\n")
    with pytest.raises(DiscordSetupError) as error:
        discord_token(settings_for(tmp_path / "bot.db"), dotenv=path)
    assert str(error.value) == messages.DISCORD_TOKEN_MISSING + messages.DISCORD_TOKEN_NAMED_OTHERWISE.format(
        names="DISCORD_BOT_TOKEN")


class Answered:
    """What discord.HTTPException reads of an aiohttp response."""

    def __init__(self, status: int, headers: dict):
        self.status, self.reason, self.headers = status, "Too Many Requests", headers


@pytest.mark.parametrize("headers, wait", [
    ({"Content-Type": "application/json", "Retry-After": "2"}, 2.0),  # what Discord documents
    ({"Content-Type": "application/json", "Retry-After": "2", "X-RateLimit-Reset-After": "0.25"}, 0.25),
    ({"Content-Type": "application/json", "Retry-After": "2", "Via": "1.1 google"}, None),  # discord.py's own
    ({"Content-Type": "text/html", "Retry-After": "2"}, None),  # a ban's page: never sent again
    ({"Content-Type": "application/json"}, None),  # no wait named
])
def test_only_a_429_discord_py_gave_up_on_is_waited_out_again(headers, wait):
    error = discord.HTTPException(Answered(429, headers), {"message": "You are being rate limited.", "code": 0})
    assert retry_after(error) == wait
