"""Command line: `python -m bot run | chat | migrate`.

Every failure a user can fix (bad config, unusable database, model that cannot
be loaded, missing token) ends with one clear line on stderr and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError, Settings, load_settings
from .store import Store, StoreError

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = load_settings(args.config)
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


def _is_user_fixable(error: Exception) -> bool:
    from .llm.embedded import EmbeddedModelMissing

    fixable: tuple[type[Exception], ...] = (ConfigError, StoreError, EmbeddedModelMissing)
    if "bot.llm.transformers_backend" in sys.modules:
        fixable += (sys.modules["bot.llm.transformers_backend"].ModelLoadError,)
    if "bot.discord_bot.launch" in sys.modules:
        fixable += (sys.modules["bot.discord_bot.launch"].DiscordSetupError,)
    return isinstance(error, fixable)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="A Discord chat bot running its own language model.")
    parser.add_argument("--config", help="settings file (default: config.toml, or $BOT_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    model_option = argparse.ArgumentParser(add_help=False)
    model_option.add_argument("--model", help='model to load (overrides config), e.g. "embedded"')

    run = commands.add_parser("run", parents=[model_option],
                              help="connect to Discord and chat there (needs DISCORD_TOKEN)")
    run.set_defaults(handler=_run)

    chat = commands.add_parser("chat", parents=[model_option], help="chat with the bot in this terminal")
    chat.add_argument("--channel", type=int, default=0, help="terminal conversation number (default 0)")
    chat.add_argument("--user", help="your name as the model sees it (default: your login name)")
    chat.set_defaults(handler=_chat)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to the newest version")
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
    try:
        await TerminalChat(app.service, channel_id=args.channel, user_name=args.user).run()
    finally:
        await app.close()
    return 0


async def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    store = await Store.open(settings.database.url)
    await store.close()
    print(f"The database at {settings.database.url} is up to date.")
    return 0


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "aiosqlite", "alembic.runtime.migration", "discord", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
