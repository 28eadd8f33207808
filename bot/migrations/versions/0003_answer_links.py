"""answers remember their question and the Discord messages that show them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 19:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_to', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_messages_reply_to', ['reply_to'], unique=False)
    op.create_table('answer_parts',
    sa.Column('discord_message_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('turn_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['turn_id'], ['messages.id'], name=op.f('fk_answer_parts_turn_id_messages'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('discord_message_id', name=op.f('pk_answer_parts'))
    )
    op.create_index('ix_answer_parts_turn_id', 'answer_parts', ['turn_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_answer_parts_turn_id', table_name='answer_parts')
    op.drop_table('answer_parts')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_reply_to')
        batch_op.drop_column('reply_to')
