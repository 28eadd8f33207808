"""SQLAlchemy models. Alembic migrations under bot/migrations/ must match these (a test checks)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints make migrations reproducible across SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# 64-bit row ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the fast rowid alias.
RowId = BigInteger().with_variant(Integer, "sqlite")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Message(Base):
    """One turn of a channel's conversation, a user's or the bot's."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)  # None for DMs
    channel_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    discord_message_id: Mapped[int | None] = mapped_column(BigInteger)
    author_id: Mapped[int | None] = mapped_column(BigInteger)
    author_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, nullable=False)
    # An answer's user turn (its row id): deleting that message forgets the answer too.
    reply_to: Mapped[int | None] = mapped_column(BigInteger)
    # An answer stopped before its end (timeout | restart | stopped | interrupted): kept for the conversation,
    # left out of training exports.
    cut_short: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        # The window read is "newest N of one channel": this index makes it a
        # short range scan whatever the table's size.
        Index("ix_messages_channel_id_id", "channel_id", "id"),
        Index("ix_messages_discord_message_id", "discord_message_id"),
        Index("ix_messages_guild_id", "guild_id"),
        Index("ix_messages_author_id", "author_id"),
        Index("ix_messages_reply_to", "reply_to"),
    )


class AnswerPart(Base):
    """A Discord message that shows (part of) a stored answer: deleting it forgets the answer.
    Goes with its answer (ON DELETE CASCADE)."""

    __tablename__ = "answer_parts"

    discord_message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    turn_id: Mapped[int] = mapped_column(RowId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False)

    __table_args__ = (Index("ix_answer_parts_turn_id", "turn_id"),)


class GuildSettings(Base):
    """Per-server settings: the persona and who set it."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    persona: Mapped[str | None] = mapped_column(Text)
    persona_set_by: Mapped[int | None] = mapped_column(BigInteger)
    persona_set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A LoRA adapter (by name, one of the operator's [model] adapters_dir) for this server's replies.
    adapter: Mapped[str | None] = mapped_column(String(200))
    # SmolLM3's reasoning before it answers, for this server (None: [model] thinking decides).
    thinking: Mapped[bool | None] = mapped_column(Boolean)


class ChannelSettings(Base):
    """Per-channel settings: whether the bot answers every message there."""

    __tablename__ = "channel_settings"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    auto_reply: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChannelPersona(Base):
    """A channel's own persona: it overrides its server's persona there (/persona set scope:channel)."""

    __tablename__ = "channel_personas"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    persona: Mapped[str] = mapped_column(Text, nullable=False)
    set_by: Mapped[int | None] = mapped_column(BigInteger)
    set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ThreadParent(Base):
    """A thread the bot keeps something of, and the channel it was opened in. Deleting a channel
    deletes its threads, archived ones too, and Discord sends no event for those (nor does any
    cache hold them), so this is how their history is found and forgotten with the channel."""

    __tablename__ = "thread_parents"

    thread_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)


class Persona(Base):
    """Each persona text an answer was written under, stored once (found by its SHA-256)."""

    __tablename__ = "personas"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)  # sha256 hex of text
    text: Mapped[str] = mapped_column(Text, nullable=False)


class AnswerPersona(Base):
    """The persona an answer was written under, for training exports. Goes with its answer
    (ON DELETE CASCADE). A table of its own, so `messages` (and its search triggers) stays as it is."""

    __tablename__ = "answer_personas"

    turn_id: Mapped[int] = mapped_column(RowId, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True,
                                         autoincrement=False)
    persona_id: Mapped[int] = mapped_column(RowId, ForeignKey("personas.id"), nullable=False)

    __table_args__ = (Index("ix_answer_personas_persona_id", "persona_id"),)


class ExportOptOut(Base):
    """People whose words never go into an exported training set: they ran /optout, or /forget-me."""

    __tablename__ = "export_opt_outs"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)  # "optout" or "forget-me"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, nullable=False)


class AuditEntry(Base):
    """Who reset or changed what, where and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    actor_name: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, nullable=False)


# Full-text search over messages.content (migrations 0005, 0008): SQLite's FTS5 table with its shadow
# tables, PostgreSQL's expression index. Neither can be declared as a model, so schema
# comparisons (autogenerate in bot/migrations/env.py, the test that models match migrations)
# pass this as Alembic's include_object to leave them be.
SEARCH_TABLE_PREFIX = "messages_fts"
SEARCH_INDEXES = ("ix_messages_content_fts", "ix_messages_channel_words")  # 0005's, 0008's


def compared_with_models(_object, name: str | None, type_: str, _reflected: bool, _compare_to) -> bool:
    if type_ == "table" and name and name.startswith(SEARCH_TABLE_PREFIX):
        return False
    return not (type_ == "index" and name in SEARCH_INDEXES)
