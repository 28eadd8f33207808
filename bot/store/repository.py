"""The async repository: every read and write the bot makes, one short transaction each."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator, Sequence

from sqlalchemy import delete, select, text, tuple_, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ..core.types import Turn
from .database import SchemaChange, StoreError, create_engine, upgrade
from .search import channel_match, search_terms
from .models import (AnswerPart, AnswerPersona, AuditEntry, ChannelPersona, ChannelSettings, ExportOptOut,
                     GuildSettings, Message, Persona, ThreadParent, utc_now)

log = logging.getLogger(__name__)

# The tables, beside the turns, that hold something of a server, by its guild_id: what a server's
# removal deletes, and where a server is found to have something stored.
SERVER_SETTINGS = (ChannelSettings, ChannelPersona, GuildSettings, ThreadParent)


@dataclass(frozen=True)
class Erased:
    """How many turns were erased, and in which channels."""

    count: int
    channel_ids: frozenset[int]


class OneWriterAtATime:
    """The session maker, with write transactions (`begin()`) taken one at a time in this process.

    SQLite has one writer at a time. Left to SQLite, the pool's connections wait for each other
    in their threads, and under load (a busy event loop slow to commit) past the busy timeout:
    "database is locked" (seen with 500 messages over 50 channels). Queued here instead, they
    wait without a time limit; reads never wait (WAL)."""

    def __init__(self, sessions: async_sessionmaker):
        self._sessions = sessions
        self._writing = asyncio.Lock()

    def __call__(self):
        return self._sessions()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator:
        async with self._writing, self._sessions.begin() as session:
            yield session


class Store:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        # PostgreSQL takes concurrent writers itself (row locks); only SQLite needs them queued.
        self._sessions = OneWriterAtATime(sessions) if engine.dialect.name == "sqlite" else sessions
        self._searchable: bool | None = None  # full-text search (recall) works here; None: not asked yet
        self.schema_change: SchemaChange | None = None  # what opening did to the schema (None: not migrated)

    @classmethod
    async def open(cls, url: str, migrate: bool = True) -> "Store":
        """Connect and (by default) upgrade the schema to the newest migration."""
        try:  # a SQLite file's folder is made here: it may be a file, or not ours to write in
            engine = create_engine(url)
        except OSError as error:
            raise StoreError(_explain_open_error(url, error)) from error
        try:
            schema_change = await upgrade(engine) if migrate else None
        except (DBAPIError, OSError) as error:  # OSError: a database server that cannot be reached
            await engine.dispose()
            raise StoreError(_explain_open_error(url, error)) from error
        except StoreError:  # a migration refused (see database.py)
            await engine.dispose()
            raise
        store = cls(engine)
        store.schema_change = schema_change
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    # Conversation turns -------------------------------------------------

    async def add_turn(self, *, channel_id: int, role: str, content: str, guild_id: int | None = None,
                       author_id: int | None = None, author_name: str | None = None,
                       message_id: int | None = None, reply_to: int | None = None,
                       cut_short: str | None = None, persona: str | None = None) -> int:
        """Store a turn; an answer names the user turn it answered (`reply_to`, its row id), if it
        was stopped before its end, why (`cut_short`), and the persona it was written under
        (`persona`, kept once per distinct text, for training exports)."""
        for attempt in (1, 2):
            row = Message(guild_id=guild_id, channel_id=channel_id, role=role, content=content,
                          author_id=author_id, author_name=author_name, discord_message_id=message_id,
                          reply_to=reply_to, cut_short=cut_short)
            try:
                async with self._sessions.begin() as session:
                    session.add(row)
                    if persona is not None:
                        await session.flush()
                        session.add(AnswerPersona(turn_id=row.id, persona_id=await self._persona_id(session, persona)))
                return row.id
            except IntegrityError:
                # PostgreSQL: between finding the persona's row and referring to it, a deletion
                # elsewhere (a channel's, a server's) removed it as no answer's. Once more adds it anew.
                if persona is None or attempt == 2:
                    raise
                log.info("the persona of an answer went while it was stored; storing it again")
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _insert(self, table):
        """This dialect's INSERT, which has ON CONFLICT DO NOTHING (SQLite's and PostgreSQL's)."""
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    async def _persona_id(self, session, persona: str) -> int:
        """The row of this persona text, added if new. Two answers may add the same new text at
        once (PostgreSQL): the insert does nothing if the other got there first."""
        digest = hashlib.sha256(persona.encode("utf-8", "surrogatepass")).hexdigest()
        await session.execute(self._insert(Persona).values(digest=digest, text=persona)
                              .on_conflict_do_nothing(index_elements=["digest"]))
        return await session.scalar(select(Persona.id).where(Persona.digest == digest))

    async def recent_turns(self, channel_id: int, limit: int) -> list[Turn]:
        """The newest `limit` turns of a channel, oldest first."""
        query = (select(Message).where(Message.channel_id == channel_id)
                 .order_by(Message.id.desc()).limit(limit))
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [_to_turn(row) for row in reversed(rows)]

    async def exchange_started_from(self, thread_id: int) -> list[Turn]:
        """The stored exchange a thread was started from, oldest first: Discord gives a thread
        started from a message that message's id. A person's message with the answer to it, or
        an answer (one of its messages) with its question; [] if the thread was started from
        none of these, or from its own first message (a forum post's)."""
        async with self._sessions() as session:
            started_from = await session.scalar(select(Message).where(
                Message.discord_message_id == thread_id, Message.channel_id != thread_id, Message.role == "user"))
            if started_from is not None:
                answer = await session.scalar(select(Message).where(Message.reply_to == started_from.id)
                                              .order_by(Message.id).limit(1))
                exchange = [started_from, answer]
            else:
                answer = await session.scalar(select(Message).join(AnswerPart, AnswerPart.turn_id == Message.id)
                                              .where(AnswerPart.discord_message_id == thread_id))
                question = None if answer is None or answer.reply_to is None else await session.get(
                    Message, answer.reply_to)
                exchange = [question, answer]
        return [_to_turn(row) for row in exchange if row is not None]

    async def recall(self, channel_id: int, words: str, before_id: int | None, limit: int) -> list[Turn]:
        """The channel's turns older than row `before_id` (None: all of them) that best match
        `words` by the database's full-text search, best first; at most `limit`. Only this
        channel is searched, and only its part of the index is read (words keyed by channel,
        migration 0008). Deleted turns are gone from the index in the same transaction
        (triggers on SQLite; PostgreSQL indexes an expression of the row itself)."""
        terms = search_terms(words)
        if not terms or limit <= 0 or not await self._can_search():
            return []
        if self.engine.dialect.name == "sqlite":
            query, matching = _SQLITE_RECALL, channel_match(channel_id, terms)  # keyed by channel: search.py
        else:  # keyed by channel in SQL, from the plain words (see _POSTGRESQL_RECALL)
            query, matching = _POSTGRESQL_RECALL, " ".join(terms)
        parameters = {"channel_id": channel_id, "query": matching, "limit": limit,
                      "before_id": before_id if before_id is not None else LARGEST_ROW_ID}
        async with self._sessions() as session:
            rows = (await session.scalars(select(Message).from_statement(query), parameters)).all()
        return [_to_turn(row) for row in rows]

    async def _can_search(self) -> bool:
        """PostgreSQL always can; SQLite once migration 0005 made the FTS5 table, which a build
        without FTS5 lacks (then recall is off, and the log says so once)."""
        if self._searchable is None:
            if self.engine.dialect.name != "sqlite":
                self._searchable = True
            else:
                async with self._sessions() as session:
                    found = await session.execute(text(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages_fts'"))
                    self._searchable = found.first() is not None
                if not self._searchable:
                    log.warning("this SQLite has no full-text search (FTS5): older messages are not recalled")
        return self._searchable

    async def clear_channel(self, channel_id: int) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(delete(Message).where(Message.channel_id == channel_id))
        return result.rowcount

    async def edit_turn(self, message_id: int, content: str) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Message).where(Message.discord_message_id == message_id).values(content=content))
        return result.rowcount > 0

    async def cut_answer_to(self, turn_id: int, content: str, *, cut_short: str) -> None:
        """A stored answer kept only as far as `content` (what its messages show), and why."""
        async with self._sessions.begin() as session:
            await session.execute(update(Message).where(Message.id == turn_id)
                                  .values(content=content, cut_short=cut_short))

    async def delete_turn(self, message_id: int) -> bool:
        """A person's turn alone, by its message id (its answer stays: see Privacy)."""
        async with self._sessions.begin() as session:
            result = await session.execute(delete(Message).where(Message.discord_message_id == message_id))
        return result.rowcount > 0

    async def record_answer_parts(self, turn_id: int, message_ids: Sequence[int]) -> None:
        """The Discord messages that show a stored answer (deleting any of them forgets it)."""
        async with self._sessions.begin() as session:
            session.add_all(AnswerPart(discord_message_id=message_id, turn_id=turn_id) for message_id in message_ids)

    async def is_answer_part(self, message_id: int) -> bool:
        """Whether a Discord message shows (part of) one of the bot's stored answers."""
        async with self._sessions() as session:
            return await session.get(AnswerPart, message_id) is not None

    async def forget_turn(self, turn_id: int) -> None:
        """Remove one stored turn by its row id (a message the model could not take)."""
        async with self._sessions.begin() as session:
            await session.execute(delete(Message).where(Message.id == turn_id))

    async def forget_message(self, message_id: int) -> int:
        """A Discord message was deleted: forget what it held. A person's message goes with the
        answer written to it; a message showing (part of) an answer forgets that answer. Returns
        how many turns were forgotten."""
        async with self._sessions.begin() as session:
            user_turns = select(Message.id).where(Message.discord_message_id == message_id)
            answers = select(AnswerPart.turn_id).where(AnswerPart.discord_message_id == message_id)
            result = await session.execute(delete(Message).where(
                Message.id.in_(user_turns) | Message.reply_to.in_(user_turns) | Message.id.in_(answers)))
        return result.rowcount

    async def turns_in_order(self, *, guild_id: int | None = None, channel_id: int | None = None,
                             include_dms: bool = True, after: datetime | None = None,
                             before: datetime | None = None, page: int = 1000,
                             ) -> AsyncIterator[tuple[int | None, int, Turn]]:
        """(guild_id, channel_id, turn) for every stored turn that matches, channel by channel,
        oldest first. Read a page at a time, each in its own short read, so an export of a large
        database neither holds everything in memory nor keeps a transaction open meanwhile."""
        query = (select(Message, Persona.text)
                 .outerjoin(AnswerPersona, AnswerPersona.turn_id == Message.id)
                 .outerjoin(Persona, Persona.id == AnswerPersona.persona_id)
                 .order_by(Message.channel_id, Message.id).limit(page))
        if guild_id is not None:
            query = query.where(Message.guild_id == guild_id)
        elif not include_dms:
            query = query.where(Message.guild_id.is_not(None))
        if channel_id is not None:
            query = query.where(Message.channel_id == channel_id)
        if after is not None:
            query = query.where(Message.created_at >= after)
        if before is not None:
            query = query.where(Message.created_at < before)
        last: tuple[int, int] | None = None
        while True:
            paged = query if last is None else query.where(tuple_(Message.channel_id, Message.id) > last)
            async with self._sessions() as session:
                rows = (await session.execute(paged)).all()
            for row, persona in rows:
                yield row.guild_id, row.channel_id, _to_turn(row, persona)
            if len(rows) < page:
                return
            last = (rows[-1][0].channel_id, rows[-1][0].id)

    async def forget_author(self, author_id: int) -> "Erased":
        """Erase what a person wrote, everywhere, and their direct-message conversations whole
        (the bot's answers there were written only for them). The bot's answers in shared
        channels stay, as /forget-me has always promised: others read them too."""
        dm_channels = (select(Message.channel_id)
                       .where(Message.author_id == author_id, Message.guild_id.is_(None)).distinct())
        mine = (Message.author_id == author_id) | Message.channel_id.in_(dm_channels)
        async with self._sessions.begin() as session:
            channel_ids = set((await session.scalars(select(Message.channel_id).where(mine).distinct())).all())
            result = await session.execute(delete(Message).where(mine))
        return Erased(result.rowcount, frozenset(channel_ids))

    async def stored_server_ids(self) -> set[int]:
        """Every server something is stored for: turns, settings, personas, thread notes."""
        async with self._sessions() as session:
            found: set[int] = set()
            for table in (Message, *SERVER_SETTINGS):
                found.update(await session.scalars(
                    select(table.guild_id).where(table.guild_id.is_not(None)).distinct()))
        return found

    async def delete_guild_data(self, guild_id: int) -> int:
        """Forget a server: its turns, its settings, its channels' settings and personas, and
        the persona texts no stored answer was written under any more."""
        async with self._sessions.begin() as session:
            count = await self._delete_where(session, Message.guild_id == guild_id, SERVER_SETTINGS,
                                             lambda table: table.guild_id == guild_id)
        return count

    async def delete_channel_data(self, channel_id: int) -> Erased:
        """Forget a deleted channel (or thread) and the threads opened in it, archived ones too:
        their turns, their settings and own personas, and the persona texts no stored answer was
        written under any more. Returns how many turns, and the channels and threads they were in."""
        async with self._sessions.begin() as session:
            threads = (await session.scalars(_threads_of(channel_id))).all()
            gone = frozenset({channel_id, *threads})
            count = await self._delete_where(session, Message.channel_id.in_(gone), (ChannelSettings, ChannelPersona),
                                             lambda table: table.channel_id.in_(gone))
            await session.execute(delete(ThreadParent).where(ThreadParent.thread_id.in_(gone)
                                                             | (ThreadParent.parent_id == channel_id)))
        return Erased(count, gone)

    @staticmethod
    async def _delete_where(session, turns, settings: tuple[type, ...], where) -> int:
        """Delete the `turns` and the rows of each `settings` table that `where(table)` picks, and
        the personas no answer is left under. Returns how many turns."""
        result = await session.execute(delete(Message).where(turns))
        for table in settings:
            await session.execute(delete(table).where(where(table)))
        await session.execute(delete(Persona).where(Persona.id.not_in(select(AnswerPersona.persona_id))))
        return result.rowcount

    async def remember_thread(self, thread_id: int, parent_id: int, guild_id: int | None) -> None:
        """Note the channel a thread was opened in (see ThreadParent); noting it again, or twice at
        once (a thread's first message and a command in it), changes nothing."""
        async with self._sessions.begin() as session:
            await session.execute(self._insert(ThreadParent)
                                  .values(thread_id=thread_id, parent_id=parent_id, guild_id=guild_id)
                                  .on_conflict_do_nothing(index_elements=["thread_id"]))

    async def noted_threads(self, channel_id: int) -> list[int]:
        """The threads noted as the channel's (see ThreadParent)."""
        async with self._sessions() as session:
            return list((await session.scalars(_threads_of(channel_id))).all())

    async def thread_parent(self, thread_id: int) -> int | None:
        """The channel a thread was noted in (None: not noted, or not a thread)."""
        async with self._sessions() as session:
            row = await session.get(ThreadParent, thread_id)
        return row.parent_id if row else None

    # Settings -----------------------------------------------------------

    async def persona(self, guild_id: int) -> str | None:
        async with self._sessions() as session:
            row = await session.get(GuildSettings, guild_id)
        return row.persona if row else None

    async def set_persona(self, guild_id: int, persona: str | None, actor_id: int) -> None:
        """Set (or with None, clear) a server's persona."""
        async with self._sessions.begin() as session:
            row = await session.get(GuildSettings, guild_id) or GuildSettings(guild_id=guild_id)
            row.persona, row.persona_set_by, row.persona_set_at = persona, actor_id, utc_now()
            session.add(row)

    async def channel_persona(self, channel_id: int) -> str | None:
        """A channel's own persona (None: its server's applies)."""
        async with self._sessions() as session:
            row = await session.get(ChannelPersona, channel_id)
        return row.persona if row else None

    async def set_channel_persona(self, channel_id: int, guild_id: int | None, persona: str | None,
                                  actor_id: int) -> bool:
        """Set (or with None, remove) a channel's own persona. False: there was none to remove."""
        async with self._sessions.begin() as session:
            row = await session.get(ChannelPersona, channel_id)
            if persona is None:
                if row is None:
                    return False
                await session.delete(row)
                return True
            row = row or ChannelPersona(channel_id=channel_id)
            row.guild_id, row.persona, row.set_by, row.set_at = guild_id, persona, actor_id, utc_now()
            session.add(row)
        return True

    async def channel_auto_reply(self, channel_id: int) -> bool | None:
        """A channel's own auto-reply switch; None where it was never set (a thread then takes its
        channel's)."""
        async with self._sessions() as session:
            row = await session.get(ChannelSettings, channel_id)
        return row.auto_reply if row else None

    async def set_auto_reply(self, channel_id: int, guild_id: int | None, enabled: bool, actor_id: int) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(ChannelSettings, channel_id) or ChannelSettings(channel_id=channel_id)
            row.guild_id, row.auto_reply = guild_id, enabled
            row.updated_by, row.updated_at = actor_id, utc_now()
            session.add(row)

    async def adapter(self, guild_id: int) -> str | None:
        """The name of the LoRA adapter a server chose (None: the configured default)."""
        async with self._sessions() as session:
            row = await session.get(GuildSettings, guild_id)
        return row.adapter if row else None

    async def set_adapter(self, guild_id: int, adapter: str | None) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(GuildSettings, guild_id) or GuildSettings(guild_id=guild_id)
            row.adapter = adapter
            session.add(row)

    async def thinking(self, guild_id: int) -> bool | None:
        """Whether a server turned thinking on or off (None: the configured default)."""
        async with self._sessions() as session:
            row = await session.get(GuildSettings, guild_id)
        return row.thinking if row else None

    async def set_thinking(self, guild_id: int, enabled: bool) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(GuildSettings, guild_id) or GuildSettings(guild_id=guild_id)
            row.thinking = enabled
            session.add(row)

    # Training-data export: who is left out --------------------------------

    async def opt_out(self, user_id: int, reason: str) -> None:
        """Keep this person's words out of every export from now on (idempotent; the first reason stays)."""
        async with self._sessions.begin() as session:
            if await session.get(ExportOptOut, user_id) is None:
                session.add(ExportOptOut(user_id=user_id, reason=reason))

    async def opt_in(self, user_id: int) -> bool:
        """Undo opt_out. False if the person had not opted out."""
        async with self._sessions.begin() as session:
            result = await session.execute(delete(ExportOptOut).where(ExportOptOut.user_id == user_id))
        return result.rowcount > 0

    async def opted_out_users(self) -> set[int]:
        async with self._sessions() as session:
            return set((await session.scalars(select(ExportOptOut.user_id))).all())

    # Audit log ----------------------------------------------------------

    async def record_audit(self, *, action: str, actor_id: int, actor_name: str | None = None,
                           guild_id: int | None = None, channel_id: int | None = None,
                           detail: str | None = None) -> None:
        async with self._sessions.begin() as session:
            session.add(AuditEntry(action=action, actor_id=actor_id, actor_name=actor_name,
                                   guild_id=guild_id, channel_id=channel_id, detail=detail))


LARGEST_ROW_ID = 2**63 - 1  # "before" no row: the whole channel is searched

# Best match first: bm25() is lower for better matches, ts_rank() higher; the newer wins a tie.
# On SQLite the best are picked inside the FTS5 index, whose words are keyed by channel; joined
# to messages first, the planner may walk the channel's rows and search the index once for each
# (hundreds of ms at 10^6 messages). The channel is compared exactly afterwards too, as the
# index holds it only inside its words ("-5" and "5" key alike: such a clash can only lose
# matches, never show another channel's).
_SQLITE_RECALL = text("""
    SELECT messages.* FROM (
        SELECT rowid AS id, bm25(messages_fts) AS score FROM messages_fts
        WHERE messages_fts MATCH :query AND rowid < :before_id
        ORDER BY score, rowid DESC LIMIT :limit) AS best
    JOIN messages ON messages.id = best.id
    WHERE messages.channel_id = :channel_id
    ORDER BY best.score, best.id DESC""")
# PostgreSQL keys words by channel as SQLite does, in SQL (migration 0008 indexes this very
# expression, which must stay identical for the index to be used): each run of letters and
# digits gets its channel and "x" in front. The query's words go through the same regexp, so
# both sides split words alike whatever the database's locale; websearch_to_tsquery never
# fails on its input, and "or" is its OR.
_POSTGRESQL_CHANNEL_WORDS = ("to_tsvector('simple', regexp_replace(content, '([[:alnum:]]+)', "
                             "CAST(channel_id AS text) || 'x\\1', 'g'))")
_POSTGRESQL_QUERY = ("websearch_to_tsquery('simple', replace(regexp_replace(:query, '([[:alnum:]]+)', "
                     "CAST(CAST(:channel_id AS bigint) AS text) || 'x\\1', 'g'), ' ', ' or '))")
_POSTGRESQL_RECALL = text(f"""
    SELECT * FROM messages
    WHERE {_POSTGRESQL_CHANNEL_WORDS} @@ {_POSTGRESQL_QUERY}
      AND channel_id = :channel_id AND id < :before_id
    ORDER BY ts_rank({_POSTGRESQL_CHANNEL_WORDS}, {_POSTGRESQL_QUERY}) DESC, id DESC
    LIMIT :limit""")


def _threads_of(channel_id: int):
    return select(ThreadParent.thread_id).where(ThreadParent.parent_id == channel_id)


def _to_turn(row: Message, persona: str | None = None) -> Turn:
    return Turn(id=row.id, role=row.role, content=row.content, author_name=row.author_name, author_id=row.author_id,
                message_id=row.discord_message_id, created_at=_as_utc(row.created_at),
                cut_short=row.cut_short, persona=persona)


def _as_utc(moment: datetime | None) -> datetime | None:
    """Times are stored in UTC; SQLite drops the zone on the way back (PostgreSQL keeps it), so
    both backends hand out the same timezone-aware value."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _explain_open_error(url: str, error: SQLAlchemyError | OSError) -> str:
    text = str(error.orig if getattr(error, "orig", None) else error)
    url = make_url(url).render_as_string(hide_password=True)  # a PostgreSQL URL may hold one
    if "not a database" in text or "malformed" in text:
        return (f"The database at {url} is not a valid SQLite database (or is damaged). "
                "Move the file aside to start afresh, or point [database] url at another file.")
    if make_url(url).get_backend_name() == "sqlite":
        advice = "check that its folder exists and this user may write there"
    else:
        advice = "check that the server is running and the URL's host, port, database, user and password"
    return f"The database at {url} could not be opened: {text}. To fix it, {advice} ([database] url)."
