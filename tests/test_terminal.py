"""The terminal chat, driven as a user drives it: a real process with piped input, or on a
pseudo-terminal as a person at a keyboard."""

import pytest

from tests.support.cli import bot_lines, chat


def test_two_turns_with_memory_commands_and_history_kept_across_runs(tmp_path):
    database = tmp_path / "chat.db"
    first = chat(database, "My favourite fruit is mango.\nWhat is my favourite fruit?\n/history\n"
                           "/persona set You are a grumpy pirate.\n/persona show\n/quit\n")
    assert first.returncode == 0, first.stderr
    replies = bot_lines(first.stdout)
    assert len(replies) == 2
    assert "mango" in replies[1]  # the second answer uses the first turn
    assert "[bot] " in first.stdout and "My favourite fruit is mango." in first.stdout
    assert "The terminal's persona:\nYou are a grumpy pirate." in first.stdout
    assert first.stdout.rstrip().endswith("Bye.")
    assert "Model ready in" in first.stderr and "\r" not in first.stderr  # no progress bars redrawn in a pipe

    # A new process on the same database: history and persona are still there; end of input ends cleanly.
    second = chat(database, "/history\n/persona show\n/reset\n/history\n")
    assert second.returncode == 0, second.stderr
    assert "My favourite fruit is mango." in second.stdout
    assert "You are a grumpy pirate." in second.stdout
    assert "History cleared: 4 messages forgotten" in second.stdout
    assert second.stdout.rstrip().endswith("This conversation has no history yet.\nBye.")


def test_bad_input_in_the_terminal_gets_clear_answers(tmp_path):
    result = chat(tmp_path / "chat.db", "/persona set " + "p" * 100_000 + "\n" + "x" * 20_000 + "\n/frobnicate\n"
                                        "/history\n/persona thinking maybe\n/persona sett hi\n/persona reset all\n"
                                        "/persona set channel\n/History\n/quit now\nnot read: the chat has ended\n")
    assert result.returncode == 0, result.stderr
    assert "Unknown command /frobnicate. Type /help for the commands." in result.stdout
    assert "Use /persona thinking on or /persona thinking off." in result.stdout
    assert "There is no /persona sett: use /persona show, set, reset, adapter or thinking" in result.stdout
    assert 'There is no persona scope "all": use /persona reset' in result.stdout
    assert "To drop this conversation's own persona, use /persona reset channel." in result.stdout
    assert "Commands:" not in result.stdout  # nobody was shown the whole help for a slip
    assert result.stdout.count("This conversation has no history yet.") == 2  # /History is /history
    assert len(bot_lines(result.stdout)) == 1  # the refusal; /quit now quit: the last line was never answered
    assert "That persona is 100,013 characters; the limit is 4,000." not in result.stdout  # counted without the command
    assert "That persona is 100,000 characters; the limit is 4,000. The persona was not changed." in result.stdout
    assert "Your message is 20,000 characters; the limit is 4,000. Nothing was saved." in result.stdout
    assert "Unknown command /frobnicate." in result.stdout
    assert "This conversation has no history yet." in result.stdout


def test_a_database_that_is_not_a_database_is_one_clear_line(tmp_path):
    database = tmp_path / "chat.db"
    database.write_text("not a database " * 100)
    result = chat(database, "hello\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: The database at ")
    assert "Traceback" not in result.stderr


def test_a_person_named_bot_is_not_mistaken_for_the_bot_in_the_history(tmp_path):
    finished = chat(tmp_path / "named.db", "Say hello.\n/history\n/quit\n", "--user", "bot",
                    env={"BOT_GENERATION_MAX_NEW_TOKENS": "5"})
    history = [line for line in finished.stdout.splitlines() if line.startswith("[")]
    assert history[0] == "[user: bot] Say hello."
    assert len(history) == 2 and history[1].startswith("[bot] ")


# A person at a keyboard: the real chat on a pseudo-terminal -----------------------------------

_sessions = []


@pytest.fixture(autouse=True)
def _no_session_left_running():
    yield
    while _sessions:
        _sessions.pop().kill()


def _session(tmp_path, *args, **env):
    from tests.support.cli import TerminalSession, chat_env

    session = TerminalSession("chat", *args, env=chat_env(tmp_path / "chat.db", **env),
                              stderr_path=tmp_path / "stderr.txt")
    _sessions.append(session)
    session.expect("Type /help for commands, /quit to leave.")
    session.expect("you> ")
    return session


def _finish(session, tmp_path):
    code = session.close()
    assert code == 0, (tmp_path / "stderr.txt").read_text()


def test_up_recalls_a_line_ctrl_c_clears_the_line_and_ctrl_d_leaves(tmp_path):
    session = _session(tmp_path, "--user", "Ann", BOT_GENERATION_MAX_NEW_TOKENS="5")
    session.type("Say hello.\r")
    assert session.expect("you> ").count("bot> ") == 1
    session.type("\x1b[A\r")  # Up, Enter: the same line again, edited by readline
    shown = session.expect("you> ")
    assert "Say hello." in shown and shown.count("bot> ") == 1
    session.type("not sent after all\x03")  # Ctrl-C at the prompt: the line goes
    session.type("/history\r")
    history = [line for line in session.expect("you> ").split("\r\n") if line.startswith("[")]
    assert history.count("[user: Ann] Say hello.") == 2  # Up sent the same line, free of escape codes
    assert len(history) == 4 and sum(line.startswith("[bot] ") for line in history) == 2
    assert not any("not sent" in line for line in history)  # Ctrl-C cleared it: /history ran alone
    session.type("\x04")  # Ctrl-D
    session.expect("Bye.")
    _finish(session, tmp_path)


def test_what_is_typed_while_an_answer_streams_waits_for_the_prompt(tmp_path):
    session = _session(tmp_path, "--user", "Ann", BOT_GENERATION_MAX_NEW_TOKENS="30")
    session.type("Tell me about dragons.\r")
    session.expect("bot> ")
    session.expect(" ")  # a word or so has come
    session.type("typed ahead")  # while the answer streams: not echoed into it
    answer = session.expect("you> ")
    assert "typed ahead" not in answer and "bot> " not in answer
    session.expect("typed ahead")  # readline shows it at the next prompt, ready to send
    session.type("\r")
    assert session.expect("you> ").count("bot> ") == 1
    session.type("/history\r")
    history = session.expect("you> ")
    assert "[user: Ann] Tell me about dragons.\r\n" in history and "[user: Ann] typed ahead\r\n" in history
    session.type("/quit\r")
    session.expect("Bye.")
    _finish(session, tmp_path)
    assert session.output.count("bot> ") == 2  # no answer is printed twice


def test_ctrl_c_stops_an_answer_and_the_chat_goes_on(tmp_path):
    from bot import messages

    session = _session(tmp_path, "--user", "Ann", BOT_GENERATION_MAX_NEW_TOKENS="400")
    session.type("Tell me a long story about a dragon and a knight.\r")
    session.expect("bot> ")
    session.expect(" ")  # a word or so has come
    session.type("\x03")  # Ctrl-C: the answer stops, what it wrote stays, with a note
    answer = session.expect(f"({messages.CUT_SHORT_STOPPED})")
    assert "bot> " not in answer
    assert "bot> " not in session.expect("you> ")
    session.type("/history\r")
    history = session.expect("you> ")
    assert "[user: Ann] Tell me a long story about a dragon and a knight." in history
    assert "\n[bot] " in history.replace("\r", "")  # what it wrote before the stop is kept
    session.type("/quit\r")
    session.expect("Bye.")
    _finish(session, tmp_path)
    assert session.output.count("bot> ") == 1  # no answer is printed twice


def test_a_kill_while_an_answer_is_written_keeps_what_was_shown_and_ends_the_chat(tmp_path):
    """SIGTERM (`kill`, `docker stop`; SIGHUP, a closed window, is handled the same): before, the
    process ended with the answer's start on the screen and only the question in the history."""
    import signal

    from bot import messages

    session = _session(tmp_path, "--user", "Ann", BOT_GENERATION_MAX_NEW_TOKENS="400")
    session.type("Tell me a long story about a dragon and a knight.\r")
    session.expect("bot> ")
    session.expect(" ")  # a word or so has come
    session.process.send_signal(signal.SIGTERM)
    session.expect(f"({messages.CUT_SHORT_STOPPED})")
    session.expect("Bye.")
    _finish(session, tmp_path)
    history = chat(tmp_path / "chat.db", "/history\n")
    assert "[user: Ann] Tell me a long story about a dragon and a knight." in history.stdout
    assert "\n[bot] " in history.stdout  # what it wrote before the signal is kept


def test_the_terminal_chat_has_no_per_user_rate_limit(tmp_path):
    # One message at once and one a minute on Discord; the person at the terminal is not slowed.
    finished = chat(tmp_path / "bot.db", "Count to 2.\nCount to 3.\nCount to 4.\n/quit\n",
                    env={"BOT_GENERATION_MAX_NEW_TOKENS": "3", "BOT_LIMITS_USER_BURST": "1",
                         "BOT_LIMITS_USER_MESSAGES_PER_MINUTE": "1"})
    assert finished.returncode == 0
    assert len(bot_lines(finished.stdout)) == 3 and "wait" not in finished.stdout.lower()


def test_at_a_terminal_a_revised_answer_is_rewritten_in_place_not_printed_again():
    import asyncio
    import io

    from bot.terminal import LivePrinter

    out = io.StringIO()
    printer = LivePrinter(out, spinner=False, erase=True)
    asyncio.run(printer.update("Hi there <"))
    printer.finish("Hi there.")
    assert out.getvalue() == "bot> Hi there <" + "\r\x1b[J" + "bot> Hi there.\n"  # back to its start, cleared


def test_the_terminal_chat_has_a_persona_of_its_own_over_the_servers_in_its_own_words(tmp_path):
    persona = "You are the bot of this server's channel."  # shown as written, not in terminal words
    result = chat(tmp_path / "chat.db", f"/persona set {persona}\n/persona set channel You are a cat.\n"
                                        "/persona show\n/persona reset channel\n/persona show\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Persona set (41 characters). It applies to every terminal conversation without a persona" in out
    assert "This conversation's persona set (14 characters). It overrides the terminal's persona" in out
    assert "This conversation's own persona (it overrides the terminal's here):\nYou are a cat." in out
    assert "This conversation's own persona is removed: the terminal's persona applies here again." in out
    assert out.index("is removed") < out.index(f"The terminal's persona:\n{persona}")
    assert "server" not in out.replace(persona, "")  # Discord's words stay in Discord


async def test_an_answer_that_fails_unexpectedly_is_a_sentence_and_the_chat_goes_on(store, settings, caplog):
    """Whatever escapes the service (a bug, a library's error it does not know) ends in one
    sentence, with the error in the log, and the next line is answered."""
    import io
    import logging

    from bot import messages
    from bot.llm.worker import ModelWorker
    from bot.service import ChatService
    from bot.terminal import TerminalChat
    from tests.support.scripted import ScriptedBackend

    class FailingOnce(ChatService):
        failed = False

        async def reply(self, message, on_progress=None):
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug nobody caught")
            return await super().reply(message, on_progress)

    service = FailingOnce(store, ModelWorker(ScriptedBackend(), timeout_s=5), settings)
    shown = io.StringIO()
    with caplog.at_level(logging.ERROR, logger="bot.terminal"):
        await TerminalChat(service, io.StringIO("first\nsecond\n"), shown, user_name="Ann").run()
    assert messages.TERMINAL_ANSWER_FAILED in shown.getvalue()
    assert "bot> echo: Ann: second" in shown.getvalue() and shown.getvalue().rstrip().endswith("Bye.")
    assert "RuntimeError: a bug nobody caught" in caplog.text


def test_ctrl_c_while_the_model_loads_says_it_stops_once_loaded(tmp_path):
    """A load cannot be cut short (a first start converts the model): before, Ctrl-C then met
    silence until the load ended."""
    import signal
    import time

    from tests.support.cli import TerminalSession, chat_env

    log = tmp_path / "stderr.txt"
    session = TerminalSession("chat", env=chat_env(tmp_path / "chat.db"), stderr_path=log)
    _sessions.append(session)
    deadline = time.monotonic() + 120
    while "Loading model" not in log.read_text():  # the load has begun (it then takes seconds)
        assert time.monotonic() < deadline and session.process.poll() is None, log.read_text()
        time.sleep(0.02)
    session.process.send_signal(signal.SIGINT)
    assert session.close() == 130
    said = log.read_text()
    assert "Stopping once the model has finished loading" in said and "Traceback" not in said
