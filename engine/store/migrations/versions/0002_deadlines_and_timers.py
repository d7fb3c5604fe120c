"""deadlines and timers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:47:05.142824
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sk_deadlines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('instance_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('entry_seq', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('workflow', sa.String(length=64), nullable=False),
    sa.Column('unit', sa.String(length=128), nullable=False),
    sa.Column('calendar', sa.String(length=64), nullable=False),
    sa.Column('anchor_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('period', sa.String(length=64), nullable=True),
    sa.Column('base_due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('shifts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('escalations_done', sa.Integer(), nullable=False),
    sa.Column('calendar_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['sk_instances.id'], name=op.f('fk_sk_deadlines_instance_id_sk_instances')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sk_deadlines'))
    )
    with op.batch_alter_table('sk_deadlines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sk_deadlines_instance_id_status'), ['instance_id', 'status'], unique=False)
        batch_op.create_index('ix_sk_deadlines_open_due', ['due_at'], unique=False, postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'"))

    op.create_table('sk_timers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('deadline_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('instance_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('fire_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['deadline_id'], ['sk_deadlines.id'], name=op.f('fk_sk_timers_deadline_id_sk_deadlines')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sk_timers'))
    )
    with op.batch_alter_table('sk_timers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sk_timers_deadline_id_status'), ['deadline_id', 'status'], unique=False)
        batch_op.create_index('ix_sk_timers_pending_fire_at', ['fire_at', 'id'], unique=False, postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))

    with op.batch_alter_table('sk_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))

    with op.batch_alter_table('sk_instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('entered_seq', sa.Integer(), server_default='1', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('sk_instances', schema=None) as batch_op:
        batch_op.drop_column('entered_seq')

    with op.batch_alter_table('sk_events', schema=None) as batch_op:
        batch_op.drop_column('detail')

    with op.batch_alter_table('sk_timers', schema=None) as batch_op:
        batch_op.drop_index('ix_sk_timers_pending_fire_at', postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
        batch_op.drop_index(batch_op.f('ix_sk_timers_deadline_id_status'))

    op.drop_table('sk_timers')
    with op.batch_alter_table('sk_deadlines', schema=None) as batch_op:
        batch_op.drop_index('ix_sk_deadlines_open_due', postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'"))
        batch_op.drop_index(batch_op.f('ix_sk_deadlines_instance_id_status'))

    op.drop_table('sk_deadlines')
