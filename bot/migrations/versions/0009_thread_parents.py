"""threads' channels, so that deleting a channel forgets its archived threads too

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 03:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'thread_parents',
        sa.Column('thread_id', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('parent_id', sa.BigInteger(), nullable=False),
        sa.Column('guild_id', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('thread_id', name=op.f('pk_thread_parents')),
    )
    op.create_index(op.f('ix_thread_parents_parent_id'), 'thread_parents', ['parent_id'], unique=False)
    op.create_index(op.f('ix_thread_parents_guild_id'), 'thread_parents', ['guild_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_thread_parents_guild_id'), table_name='thread_parents')
    op.drop_index(op.f('ix_thread_parents_parent_id'), table_name='thread_parents')
    op.drop_table('thread_parents')
