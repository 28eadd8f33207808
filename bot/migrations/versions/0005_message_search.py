"""full-text search over messages, for recall beyond the prompt's window

SQLite: an external-content FTS5 table (messages_fts) over messages.content and channel_id,
kept in step by triggers, so every path that adds, edits or deletes a message (edits, deletes, /reset,
/forget-me, a server's removal) changes the index in the same transaction. Without the FTS5
module (rare builds) nothing is created and recall finds nothing.
PostgreSQL: a GIN index on to_tsvector('simple', content); nothing to keep in step.

A later migration that rebuilds `messages` on SQLite (batch_alter_table copies the table and
drops the old one) drops these triggers with it: it must drop messages_fts too and call
create_sqlite_search() again, which indexes the rows afresh.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 22:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

SQLITE_SEARCH = [
    # channel_id is indexed too, as a word: a search names its channel in the query itself, so
    # FTS5 reads only that channel's matches, not every channel's (10^6 messages: 6 ms, not 100).
    # unicode61 without diacritics: "café" matches "cafe", as people type it either way.
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, channel_id, content='messages', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content, channel_id) VALUES (new.id, new.content, new.channel_id); END",
    # An external-content index is told what it held: the old row's values.
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content, channel_id) "
    "VALUES ('delete', old.id, old.content, old.channel_id); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, channel_id ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content, channel_id) "
    "VALUES ('delete', old.id, old.content, old.channel_id); "
    "INSERT INTO messages_fts(rowid, content, channel_id) VALUES (new.id, new.content, new.channel_id); END",
    # The rows stored before this migration.
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
]
POSTGRESQL_INDEX = "ix_messages_content_fts"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        create_sqlite_search()
    elif dialect == "postgresql":
        op.execute(f"CREATE INDEX {POSTGRESQL_INDEX} ON messages USING gin (to_tsvector('simple', content))")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    elif dialect == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {POSTGRESQL_INDEX}")


def create_sqlite_search() -> None:
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT sqlite_compileoption_used('ENABLE_FTS5')")).scalar():
        return  # the Store finds no messages_fts table, says so once, and recalls nothing
    for statement in SQLITE_SEARCH:
        op.execute(statement)
