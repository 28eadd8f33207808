"""servers choose whether the model thinks before it answers

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 22:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


# guild_settings, not messages: a batch ALTER of messages on SQLite would rebuild it and drop
# the full-text search triggers of 0005.
def upgrade() -> None:
    with op.batch_alter_table('guild_settings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('thinking', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('guild_settings', schema=None) as batch_op:
        batch_op.drop_column('thinking')
