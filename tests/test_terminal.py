"""The terminal chat, driven as a user drives it: a real process with piped input."""

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
    assert "This server's persona:\nYou are a grumpy pirate." in first.stdout
    assert first.stdout.rstrip().endswith("Bye.")

    # A new process on the same database: history and persona are still there; end of input ends cleanly.
    second = chat(database, "/history\n/persona show\n/reset\n/history\n")
    assert second.returncode == 0, second.stderr
    assert "My favourite fruit is mango." in second.stdout
    assert "You are a grumpy pirate." in second.stdout
    assert "History cleared: 4 message(s) forgotten" in second.stdout
    assert second.stdout.rstrip().endswith("This channel has no history yet.\nBye.")


def test_bad_input_in_the_terminal_gets_clear_answers(tmp_path):
    result = chat(tmp_path / "chat.db", "/persona set " + "p" * 100_000 + "\n" + "x" * 20_000 + "\n/frobnicate\n"
                                        "/history\n")
    assert result.returncode == 0, result.stderr
    assert "That persona is 100,013 characters; the limit is 4,000." not in result.stdout  # counted without the command
    assert "That persona is 100,000 characters; the limit is 4,000. The persona was not changed." in result.stdout
    assert "Your message is 20,000 characters; the limit is 4,000. Nothing was saved." in result.stdout
    assert "Unknown command /frobnicate." in result.stdout
    assert "This channel has no history yet." in result.stdout


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


def test_the_terminal_chat_has_no_per_user_rate_limit(tmp_path):
    # One message at once and one a minute on Discord; the person at the terminal is not slowed.
    finished = chat(tmp_path / "bot.db", "Count to 2.\nCount to 3.\nCount to 4.\n/quit\n",
                    env={"BOT_GENERATION_MAX_NEW_TOKENS": "3", "BOT_LIMITS_USER_BURST": "1",
                         "BOT_LIMITS_USER_MESSAGES_PER_MINUTE": "1"})
    assert finished.returncode == 0
    assert len(bot_lines(finished.stdout)) == 3 and "wait" not in finished.stdout.lower()
