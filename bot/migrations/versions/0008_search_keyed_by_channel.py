"""search indexes keyed by channel, so a recall reads only its channel's postings

0005 indexed plain words plus the channel id as a word of its own: a recall then walked every
channel's postings of each common word it asked for, and bm25() counted them all, so recall
slowed as the whole database grew (10^6 messages: about 6 ms in SQLite alone, against 0.7 ms at
10^3). Here each word is indexed as "<channel>x<word>" (bot/store/search.py), by the SQL
function channel_words() that the bot registers on every connection, and the index keeps its
own copy of those words (a regular FTS5 table: deleting a row needs only its rowid, so a delete
from any tool still reaches the index).

PostgreSQL likewise (10^6 messages: 24-27 ms a recall, 6 ms after): the GIN index is on an
expression that keys each run of letters and digits with the channel, in SQL, so nothing needs
registering; bot/store/repository.py queries this very expression.

As with 0005, a later migration that rebuilds `messages` on SQLite (batch_alter_table) drops
these triggers: it must run create_channel_keyed_search() again afterwards.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 00:00:00
"""
from alembic import context, op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

TRIGGERS = ("messages_fts_insert", "messages_fts_delete", "messages_fts_update")
CHANNEL_KEYED_SEARCH = [
    # unicode61 without diacritics: "café" matches "cafe", as people type it either way.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(words, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, words) VALUES (new.id, channel_words(new.channel_id, new.content)); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "DELETE FROM messages_fts WHERE rowid = old.id; END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, channel_id ON messages BEGIN "
    "DELETE FROM messages_fts WHERE rowid = old.id; "
    "INSERT INTO messages_fts(rowid, words) VALUES (new.id, channel_words(new.channel_id, new.content)); END",
    # The rows stored before this migration.
    "INSERT INTO messages_fts(rowid, words) SELECT id, channel_words(channel_id, content) FROM messages",
]


POSTGRESQL_INDEX, POSTGRESQL_0005_INDEX = "ix_messages_channel_words", "ix_messages_content_fts"
POSTGRESQL_CHANNEL_WORDS = ("to_tsvector('simple', regexp_replace(content, '([[:alnum:]]+)', "
                            "CAST(channel_id AS text) || 'x\\1', 'g'))")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {POSTGRESQL_0005_INDEX}")
        op.execute(f"CREATE INDEX {POSTGRESQL_INDEX} ON messages USING gin ({POSTGRESQL_CHANNEL_WORDS})")
    elif _has_search():  # 0005 made it (SQLite with FTS5): replace it
        _drop_search()
        create_channel_keyed_search()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {POSTGRESQL_INDEX}")
        _revision_0005().upgrade()
    elif _has_search():
        _drop_search()
        _revision_0005().create_sqlite_search()


def _revision_0005():
    return context.script.get_revision('0005').module


def create_channel_keyed_search() -> None:
    for statement in CHANNEL_KEYED_SEARCH:
        op.execute(statement)


def _has_search() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return False
    return bind.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages_fts'").first() is not None


def _drop_search() -> None:
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE messages_fts")
