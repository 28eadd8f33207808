"""Alembic environment. The bot runs migrations from code (bot/store/database.py) with a
connection handed over in config.attributes; the plain `alembic` CLI works too, reading
the URL from the bot's settings."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from bot.store.models import Base, compared_with_models

target_metadata = Base.metadata


def run_with_connection(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
        include_object=compared_with_models,  # the full-text search objects are not models
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_settings() -> None:
    from bot.config import load_settings
    from bot.store.database import create_engine, migration_connection

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or load_settings().database.url)
    async with migration_connection(engine) as connection:  # as the bot migrates: see there
        await connection.run_sync(run_with_connection)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (SQL script) migrations are not supported; run `python -m bot migrate`.")

connection = context.config.attributes.get("connection")
if connection is not None:
    run_with_connection(connection)
else:
    asyncio.run(run_from_settings())
