"""The terminal chat: the same conversation flow as the Discord bot, in a shell.

Works interactively (a prompt and a spinner while the model thinks) and with
piped input (`printf 'hi\\n/history\\n/quit\\n' | python -m bot chat`), which is
how scripts and tests drive it. End of input ends the chat cleanly.
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
import logging
import os
import signal
import sys
from contextlib import contextmanager, nullcontext
from typing import Iterator, TextIO

from . import messages
from .core.types import TERMINAL_CHANNEL_ID, TERMINAL_GUILD_ID, IncomingMessage, Turn
from .server_settings import SCOPES, SERVER
from .service import Actor, ChatService, UserError
from .terminal_keys import ctrl_c_is_a_key, enable_line_editing, typing_waits, without_escapes


log = logging.getLogger(__name__)

HELP = """Commands:
  /persona show         show the persona the bot is using, and where it comes from
  /persona set <text>   give the bot a new persona ("set channel <text>": this chat's own)
  /persona reset        go back to the default persona ("reset channel": drop this chat's own)
  /persona adapter <name>  pick a fine-tuned adapter ("default", "base", or one of [model] adapters_dir)
  /persona thinking on|off  let the model (SmolLM3) think before it answers, or not
  /history              show this chat's stored history
  /reset                forget this chat's history
  /status               model, backend, queue, uptime
  /help                 this list
  /quit                 leave (so does end of input, Ctrl-D)"""


class TerminalChat:
    def __init__(self, service: ChatService, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                 channel_id: int = TERMINAL_CHANNEL_ID, user_name: str | None = None):
        self.service = service
        self.stdin, self.stdout = stdin, stdout
        self.channel_id = channel_id
        self.interactive = stdin.isatty() and stdout.isatty()
        self._ctrl_c_is_a_key = self.interactive and enable_line_editing()
        name = user_name or _login_name()
        self.actor = Actor(id=0, name=name)
        self._answer: asyncio.Future | None = None  # the answer being written, which Ctrl-C stops
        self._stopped = False  # Ctrl-C stopped it before it had a word
        self._quitting = False  # told to end (SIGTERM, SIGHUP) while an answer was written

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    async def run(self) -> None:
        self.say(f"Chatting with {self.service.model_name}. Type /help for commands, /quit to leave.")
        with self._ctrl_c_stops_answers():
            while not self._quitting and (line := await self._read_line()) is not None:
                line = line.strip()
                if line.split(" ", 1)[0].lower() in ("/quit", "/exit"):
                    break
                if line.startswith("/"):
                    await self._command(line)
                elif line:
                    await self._chat(line)
        self.say("Bye.")

    async def _read_line(self) -> str | None:
        if not self.interactive:
            line = await asyncio.to_thread(self.stdin.readline)
            return line if line else None
        keys = ctrl_c_is_a_key(self.stdin.fileno()) if self._ctrl_c_is_a_key else nullcontext()
        with keys:
            try:
                return without_escapes(await asyncio.to_thread(input, "you> "))
            except EOFError:  # Ctrl-D
                self._write("\n")
                return None

    @contextmanager
    def _ctrl_c_stops_answers(self) -> Iterator[None]:
        """At a terminal, Ctrl-C stops the answer being written (see bot/terminal_keys.py);
        with none being written it does nothing (at the prompt it is a key that clears the line)."""
        if not self.interactive:
            yield
            return
        loop = asyncio.get_running_loop()
        previous_handler = signal.getsignal(signal.SIGINT)
        loop.add_signal_handler(signal.SIGINT, self._stop_answer)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, previous_handler)

    @contextmanager
    def _signals_end_the_chat_once_the_answer_is_kept(self) -> Iterator[None]:
        """While an answer is written, SIGTERM and SIGHUP (`kill`, `docker stop`, the window
        closed), and Ctrl-C when input is piped, stop it and end the chat once what it wrote is
        stored and shown: by default they would end the process with the answer on the screen
        and not in the history. (While it reads a line, the default stays: nothing is lost.)"""
        numbers = [number for number in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None),
                                         None if self.interactive else signal.SIGINT) if number is not None]
        loop = asyncio.get_running_loop()
        previous = {number: signal.getsignal(number) for number in numbers}
        for number in numbers:
            loop.add_signal_handler(number, self._stop_answer_and_quit)
        try:
            yield
        finally:
            for number in numbers:
                loop.remove_signal_handler(number)
                signal.signal(number, previous[number])

    def _stop_answer_and_quit(self) -> None:
        self._quitting = True
        self._stop_answer()

    def _stop_answer(self) -> None:
        if self._answer is None or self._answer.done():
            return
        if self.service.stop_answer(self.channel_id):
            return  # it stops at its next piece and keeps what was written, with a note
        self._stopped = True  # still waiting for its turn: nothing was written
        self._answer.cancel()

    async def _chat(self, text: str) -> None:
        message = IncomingMessage(channel_id=self.channel_id, guild_id=TERMINAL_GUILD_ID,
                                  author_id=self.actor.id, author_name=self.actor.name, content=text)
        printer = LivePrinter(self.stdout, spinner=self.interactive, erase=self.interactive)
        self._answer = asyncio.ensure_future(self.service.reply(message, on_progress=printer.update))
        self._stopped = False
        try:
            with typing_waits(self.stdin.fileno()) if self.interactive else nullcontext(), \
                    self._signals_end_the_chat_once_the_answer_is_kept():
                reply = await self._answer
        except asyncio.CancelledError:
            printer.stop_spinner()
            if not self._stopped:  # the chat itself is being stopped
                raise
            self.say(f"({messages.CUT_SHORT_STOPPED})")
            return
        except Exception as error:  # nothing else caught it (a bug, say): a sentence, and the chat goes on
            printer.stop_spinner()
            log.error("answering failed: %s: %s", type(error).__name__, error)
            log.debug("answering failed", exc_info=True)  # the traceback with -v
            self.say(messages.TERMINAL_ANSWER_FAILED)
            return
        finally:
            printer.stop_spinner()
            self._answer = None
        if reply.text:
            printer.finish(reply.text)
        for note in reply.notes:
            self.say(f"({note})")

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    async def _command(self, line: str) -> None:
        name, _, argument = line.partition(" ")
        name = name.lower()  # /Reset is /reset
        try:
            answer = await self._run_command(name, argument.strip())
        except UserError as error:
            answer = str(error)
        # Settings answers speak Discord's words; /history's and /status's carry other text.
        self.say(in_terminal_words(answer) if name in ("/persona", "/reset") else answer)

    async def _run_command(self, name: str, argument: str) -> str:
        service = self.service
        if name == "/help":
            return HELP
        if name == "/reset":
            return await service.reset_channel(TERMINAL_GUILD_ID, self.channel_id, self.actor)
        if name == "/history":
            return format_history(await service.history(self.channel_id))
        if name == "/status":
            return await service.status()
        if name == "/persona":
            return await self._persona(*argument.partition(" ")[::2])
        return messages.TERMINAL_UNKNOWN_COMMAND.format(command=line_head(name, argument))

    async def _persona(self, action: str, text: str) -> str:
        """/persona show|set|reset|adapter|thinking: a wrong word gets what the right ones are."""
        servers, action, word = self.service.servers, action.lower(), text.strip().lower()
        if action == "show" or not action:
            return await servers.show_persona(TERMINAL_GUILD_ID, self.channel_id)
        if action == "set":
            scope, text = persona_scope(text)
            return await servers.set_persona(TERMINAL_GUILD_ID, self.actor, text, scope=scope,
                                             channel_id=self.channel_id)
        if action == "reset":
            if word not in ("", *SCOPES):
                return messages.TERMINAL_PERSONA_RESET_SCOPE.format(scope=line_head(text, ""))
            return await servers.reset_persona(TERMINAL_GUILD_ID, self.actor, scope=word or SERVER,
                                               channel_id=self.channel_id)
        if action == "adapter":
            return await servers.set_adapter(TERMINAL_GUILD_ID, self.actor, text)
        if action == "thinking":
            if word not in ("on", "off"):
                return messages.TERMINAL_THINKING_ON_OFF
            return await servers.set_thinking(TERMINAL_GUILD_ID, self.actor, word == "on")
        return messages.TERMINAL_PERSONA_ACTIONS.format(action=line_head(action, ""))


# The settings' answers are written for Discord, where a persona belongs to a server or a
# channel. Here the terminal is the "server" and each --channel number a conversation. The
# scope words people type ("set channel ...", "server") stay as they are: they are commands.
TERMINAL_WORDS = (
    ("/persona reset with the channel scope", "/persona reset channel"),
    ("every channel of this server", "every terminal conversation"),
    ("in this server", "in the terminal"),
    ("This server's", "The terminal's"), ("this server's", "the terminal's"),
    ("This server uses", "The terminal uses"),
    ("the server's", "the terminal's"),
    ("This channel", "This conversation"), ("this channel", "this conversation"),
    ("the channel's", "the conversation's"),
    ("Channels with", "Conversations with"),
)


def in_terminal_words(text: str) -> str:
    """A settings answer in the terminal's words. Only its first line: what follows a line
    break is shown text (a persona) that must stay exactly as written."""
    first_line, line_break, shown = text.partition("\n")
    for discord_words, terminal_words in TERMINAL_WORDS:
        first_line = first_line.replace(discord_words, terminal_words)
    return first_line + line_break + shown


def persona_scope(text: str) -> tuple[str, str]:
    """"/persona set channel <text>" (or "server <text>") names its scope; without one, the server's."""
    first, _, rest = text.partition(" ")
    return (first, rest) if first in SCOPES else (SERVER, text)


class LivePrinter:
    """Prints the answer as the model writes it ("bot> " then the words as they come), with a
    spinner before the first word when a person is watching."""

    PREFIX = "bot> "

    def __init__(self, out: TextIO, spinner: bool, erase: bool = False):
        self.out = out
        self.printed: str | None = None
        self.erase = erase  # a terminal: a streamed start that the final text revises is rewritten
        self._spinner = asyncio.ensure_future(_spin(out)) if spinner else None

    async def update(self, text: str) -> None:
        if not text:
            return
        if self.printed is None:
            self.stop_spinner()
            self._write(self.PREFIX)
            self.printed = ""
        if text.startswith(self.printed):  # it only grows; a revised start waits for the end
            self._write(text[len(self.printed):])
            self.printed = text

    def finish(self, final: str) -> None:
        if self.printed is None:
            self._write(self.PREFIX + final + "\n")
        elif final.startswith(self.printed):
            self._write(final[len(self.printed):] + "\n")
        elif self.erase:  # the cleaned final text differs from what streamed: rewrite it in place
            self._write(_erase_lines(self.PREFIX + self.printed, self.out) + self.PREFIX + final + "\n")
        else:  # piped output cannot be rewritten: show it whole
            self._write("\n" + self.PREFIX + final + "\n")

    def stop_spinner(self) -> None:
        if self._spinner is not None:
            self._spinner.cancel()
            self._spinner = None
            self._write("\r" + " " * 20 + "\r")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


async def _spin(out: TextIO) -> None:
    for frame in itertools.cycle("|/-\\"):
        out.write(f"\r{frame} writing...")
        out.flush()
        await asyncio.sleep(0.1)


def format_history(turns: list[Turn]) -> str:
    """A person's lines read "[user: NAME] ...", the bot's "[bot] ...": never mistaken for one
    another, whatever the person is called (in a container the login name is often "bot")."""
    if not turns:
        return in_terminal_words(messages.HISTORY_EMPTY)
    lines = []
    for turn in turns:
        who = f"user: {turn.author_name or 'someone'}" if turn.role == "user" else "bot"
        lines.append(f"[{who}] {turn.content}")
    return "\n".join(lines)


def _erase_lines(shown: str, out: TextIO) -> str:
    """The escape codes that take the cursor back to the start of `shown` (the text last
    written, on the current line and those above it) and clear from there on."""
    try:
        width = os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        width = 80
    rows = sum(max(1, -(-len(part) // width)) for part in shown.split("\n"))
    return "\r" + "\x1b[A" * (rows - 1) + "\x1b[J"


def line_head(name: str, argument: str) -> str:
    return f"{name} {argument}".strip()[:40]


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "you"
