"""Command line: `python -m bot run | chat | export | migrate` (and `finetune`).

Every failure a user can fix (bad config, unusable database, model that cannot
be loaded, missing token) ends with one clear line on stderr and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from .config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings, mask_url_password
from .store import Store, StoreError

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    _no_progress_bars_unless_on_a_terminal()
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, args.log_format)
    try:
        settings = load_settings(args.config)
        _say_if_no_config_file(args.config)
        if getattr(args, "model", None):
            settings = settings.with_overrides("model", name=args.model)
        return asyncio.run(args.handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if not _is_user_fixable(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1


def _say_if_no_config_file(named: str | None) -> None:
    """Run away from the checkout, there is no config.toml: the defaults apply without a word
    otherwise (and ./data/bot.db is made there)."""
    if not named and not os.environ.get("BOT_CONFIG") and not DEFAULT_CONFIG_PATH.exists():
        log.info("No %s in %s: the built-in defaults apply, with BOT_* environment variables over them.",
                 DEFAULT_CONFIG_PATH, Path.cwd())


def _no_progress_bars_unless_on_a_terminal() -> None:
    """Progress bars (the model's loading and first conversion, fine-tuning) redraw one line with
    carriage returns: progress on a terminal, hundreds of half-lines in a log file, a pipe or
    `docker logs`. tqdm and the hub read these variables when first imported, which is later."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _is_user_fixable(error: Exception) -> bool:
    from .llm.embedded import EmbeddedModelMissing

    fixable: tuple[type[Exception], ...] = (ConfigError, StoreError, EmbeddedModelMissing)
    if "bot.llm.model_source" in sys.modules:
        fixable += (sys.modules["bot.llm.model_source"].ModelLoadError,)
    if "bot.discord_bot.launch" in sys.modules:
        fixable += (sys.modules["bot.discord_bot.launch"].DiscordSetupError,)
    if "bot.llm.finetune" in sys.modules:
        fixable += (sys.modules["bot.llm.finetune"].FinetuneError,)
    if "bot.metrics" in sys.modules:
        fixable += (sys.modules["bot.metrics"].MetricsError,)
    return isinstance(error, fixable)


# SQLite stores integers as signed 64-bit numbers: the largest id a channel or server can have.
MAX_ID = 2**63 - 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line (with where to look), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option points to its command's help, where the options
        are (`python -m bot chat --help`), not to the top-level one."""
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            subcommands = next((action.choices for action in self._actions
                                if isinstance(action, argparse._SubParsersAction)), {})
            subcommands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--config, -v, --log-format. On the subcommands (suppress=True) they have no defaults, so that
    `python -m bot -v chat` is not undone by chat's own default; the main parser holds the defaults."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--config", default=default(None), help="settings file (default: config.toml, or $BOT_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="debug logging (the only logging that shows what people and the model wrote)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default("text"),
                        help="text: readable lines (default); json: one JSON object a line, for log aggregators")


def _id(text: str) -> int:
    """A channel or server id for --channel / --server: a whole number from 0 to 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is out of range: ids are whole numbers from 0 to {MAX_ID}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smolbot")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    # Called as the installed `smolbot` script, or as `python -m bot`: usage and hints say which.
    prog = "smolbot" if os.path.basename(sys.argv[0]) == "smolbot" else "python -m bot"
    parser = _Parser(prog=prog, description="A Discord chat bot running its own language model.")
    parser.add_argument("--version", action="version", version=f"smolbot {_version()}")
    _add_global_options(parser)
    global_options = _Parser(add_help=False)
    _add_global_options(global_options, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True)

    model_option = _Parser(add_help=False, parents=[global_options])
    model_option.add_argument("--model", help='model to load (overrides config), e.g. "embedded"')

    run = commands.add_parser("run", parents=[model_option],
                              help="connect to Discord and chat there (needs DISCORD_TOKEN)",
                              description="Connect to Discord with the token in DISCORD_TOKEN and answer there: "
                              "when mentioned, replied to, in direct messages and in channels with auto-reply on, and "
                              "through the slash commands.")
    run.set_defaults(handler=_run)

    chat = commands.add_parser("chat", parents=[model_option], help="chat with the bot in this terminal",
                               description="Chat with the bot in this terminal, on the configured model and "
                               "database (type /help in the chat for its commands).")
    chat.add_argument("--channel", type=_id, default=0, help="terminal conversation number (default 0)")
    chat.add_argument("--user", help="your name as the model sees it (default: your login name)")
    chat.set_defaults(handler=_chat)

    export = commands.add_parser("export", parents=[global_options],
                                 help="write stored conversations as a JSONL training set",
                                 description="Write the stored conversations as chat-format JSONL (one "
                                 '{"messages": [...]} conversation per line, the persona as system message), '
                                 "ready for `python -m bot finetune` or TRL's SFTTrainer. People who used "
                                 "/optout or /forget-me are left out, and so are the bot's answers to them.")
    export.add_argument("--out", default="export.jsonl", help="file to write (default: export.jsonl)")
    export.add_argument("--server", type=_id, help="only this server (guild id)")
    export.add_argument("--channel", type=_id, help="only this channel (channel id)")
    export.add_argument("--since", type=_day, help="first day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", type=_day, help="last day, YYYY-MM-DD (UTC), included")
    export.add_argument("--min-turns", type=int, default=2,
                        help="leave out conversations with fewer turns (user + bot; default 2)")
    export.add_argument("--gap-minutes", type=float, default=60,
                        help="a pause this long in a channel starts a new conversation (default 60)")
    export.add_argument("--include-dms", action="store_true", help="include direct-message conversations")
    export.add_argument("--keep-names", action="store_true",
                        help='keep authors\' names instead of "User 1", "User 2", ...')
    export.set_defaults(handler=_export)

    finetune = commands.add_parser("finetune", parents=[model_option],
                                   help="train a LoRA adapter on exported conversations (needs smolbot[train])",
                                   description="Train a LoRA adapter for the configured model (or --model) on "
                                   "a JSONL file from `python -m bot export`; needs the smolbot[train] extra.")
    from .llm.finetune import add_arguments as add_finetune_arguments  # light: the heavy imports come in the handler

    add_finetune_arguments(finetune)
    finetune.set_defaults(handler=_finetune)

    migrate = commands.add_parser("migrate", parents=[global_options],
                                  help="upgrade the database schema to the newest version",
                                  description="Create the database, or upgrade its schema to the newest version "
                                  "([database] url, or BOT_DATABASE_URL).")
    migrate.set_defaults(handler=_migrate)
    return parser


async def _run(settings: Settings, _args: argparse.Namespace) -> int:
    from .discord_bot.launch import run_on_discord

    return await run_on_discord(settings)


async def _chat(settings: Settings, args: argparse.Namespace) -> int:
    from .app import open_app
    from .terminal import TerminalChat

    # One person, the one at the keyboard: a per-user rate limit would only get in their way.
    app = await open_app(settings.with_overrides("limits", user_messages_per_minute=0))
    if not args.verbose:  # a line per reply would only clutter the chat; failures still show
        logging.getLogger("bot.service").setLevel(logging.WARNING)
    try:
        await TerminalChat(app.service, channel_id=args.channel, user_name=args.user).run()
    finally:
        await app.close()
    return 0


def _day(text: str):
    from .export import parse_day

    try:
        return parse_day(text)
    except ValueError as problem:
        raise argparse.ArgumentTypeError(str(problem)) from None


def _check_export_target(out: Path) -> None:
    """--out must be a file that can be written, checked before the database is read: the file is
    written whole at the end (a folder, or a path through a file, would fail only then)."""
    from .paths import why_not_creatable

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file name, such as {out / 'export.jsonl'}")
    if problem := why_not_creatable(out):
        raise ConfigError(f"--out {out} cannot be written: {problem}")


async def _export(settings: Settings, args: argparse.Namespace) -> int:
    from .export import ExportFilter, ExportSummary, export_lines, write_jsonl
    from .llm.adapters import NO_ADAPTERS
    from .server_settings import ServerSettings

    if args.min_turns < 1 or args.gap_minutes <= 0:
        raise ConfigError("--min-turns must be at least 1 and --gap-minutes more than 0")
    if args.since and args.until and args.since > args.until:
        raise ConfigError(f"--since {args.since} is after --until {args.until}: nothing would be exported")
    _check_export_target(Path(args.out))
    wanted = ExportFilter(guild_id=args.server, channel_id=args.channel, since=args.since, until=args.until,
                          min_turns=args.min_turns, include_dms=args.include_dms or args.channel is not None,
                          pseudonymise=not args.keep_names, gap=timedelta(minutes=args.gap_minutes))
    store = await Store.open(settings.database.url)
    try:
        summary = ExportSummary()
        lines = export_lines(store, ServerSettings(store, settings, NO_ADAPTERS).persona_for, wanted, summary)
        written = await write_jsonl(lines, Path(args.out))
    except OSError as error:  # what the check above cannot foresee (a full disk, a read-only mount)
        raise ConfigError(f"--out {args.out} cannot be written: {error.strerror or error}") from None
    finally:
        await store.close()
    if not written:
        print("Nothing to export: no stored conversation matches (it needs a user turn and an answer, "
              f"at least {args.min_turns} turns; people who opted out are left out). {args.out} was not written.",
              file=sys.stderr)
        return 1
    print(f"Wrote {args.out}: {summary.describe()}.", file=sys.stderr)
    return 0


async def _finetune(settings: Settings, args: argparse.Namespace) -> int:
    from .llm.finetune import run_command

    return run_command(settings.model, args)


async def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    store = await Store.open(settings.database.url)
    await store.close()
    print(f"The database at {mask_url_password(settings.database.url)} {store.schema_change.describe()}.")
    return 0


def _configure_logging(verbose: bool, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from .telemetry import JsonLinesFormatter
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("httpx", "urllib3", "aiosqlite", "alembic.runtime.migration", "discord", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
