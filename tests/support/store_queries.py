"""Questions about a Store that only tests ask: how many turns a channel has, what the audit log
holds, whether the database is intact. They read through the store's own engine."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store import Store
from bot.store.models import AuditEntry, Message


async def count_turns(store: Store, channel_id: int) -> int:
    async with AsyncSession(store.engine, expire_on_commit=False) as session:
        return await session.scalar(select(func.count()).where(Message.channel_id == channel_id))


async def audit_entries(store: Store, guild_id: int | None = None) -> list[AuditEntry]:
    """The audit log, oldest first (only one server's entries, given `guild_id`)."""
    query = select(AuditEntry).order_by(AuditEntry.id)
    if guild_id is not None:
        query = query.where(AuditEntry.guild_id == guild_id)
    async with AsyncSession(store.engine, expire_on_commit=False) as session:
        return list((await session.scalars(query)).all())


async def integrity(store: Store) -> str:
    """SQLite's own integrity check of the store's database: "ok" when intact."""
    async with store.engine.connect() as connection:
        return (await connection.exec_driver_sql("PRAGMA integrity_check")).scalar()


def open_store_after(barrier, url: str) -> None:
    """A process like a shard starting: wait for its siblings at `barrier`, then open (and so
    migrate) the database at `url`. Exits non-zero, with the error printed, if it cannot."""
    import asyncio

    async def open_and_close() -> None:
        store = await Store.open(url)
        await store.close()

    barrier.wait(timeout=120)  # only against a hang: a sibling that died before the barrier breaks it
    asyncio.run(open_and_close())
