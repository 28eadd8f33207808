"""a persona per channel, and the persona each answer was written under (for training exports)

New tables only: `messages` is not altered, so migration 0005's search triggers on it stay.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 23:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('channel_personas',
    sa.Column('channel_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('guild_id', sa.BigInteger(), nullable=True),
    sa.Column('persona', sa.Text(), nullable=False),
    sa.Column('set_by', sa.BigInteger(), nullable=True),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('channel_id', name=op.f('pk_channel_personas'))
    )
    op.create_index('ix_channel_personas_guild_id', 'channel_personas', ['guild_id'], unique=False)
    op.create_table('personas',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_personas')),
    sa.UniqueConstraint('digest', name=op.f('uq_personas_digest'))
    )
    op.create_table('answer_personas',
    sa.Column('turn_id', ROW_ID, autoincrement=False, nullable=False),
    sa.Column('persona_id', ROW_ID, nullable=False),
    sa.ForeignKeyConstraint(['turn_id'], ['messages.id'], name=op.f('fk_answer_personas_turn_id_messages'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['persona_id'], ['personas.id'], name=op.f('fk_answer_personas_persona_id_personas')),
    sa.PrimaryKeyConstraint('turn_id', name=op.f('pk_answer_personas'))
    )
    op.create_index('ix_answer_personas_persona_id', 'answer_personas', ['persona_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_answer_personas_persona_id', table_name='answer_personas')
    op.drop_table('answer_personas')
    op.drop_table('personas')
    op.drop_index('ix_channel_personas_guild_id', table_name='channel_personas')
    op.drop_table('channel_personas')
