"""outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:55:33.103724
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sk_outbox',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=512), nullable=False),
    sa.Column('recipient_id', sa.String(length=128), nullable=True),
    sa.Column('recipient_name', sa.String(length=255), nullable=True),
    sa.Column('instance_id', sa.String(length=36), nullable=True),
    sa.Column('event_seq', sa.Integer(), nullable=True),
    sa.Column('template', sa.String(length=64), nullable=True),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sk_outbox'))
    )
    with op.batch_alter_table('sk_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_sk_outbox_dead', ['created_at'], unique=False, postgresql_where=sa.text("status = 'dead'"), sqlite_where=sa.text("status = 'dead'"))
        batch_op.create_index(batch_op.f('ix_sk_outbox_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index('ix_sk_outbox_leased', ['lease_until'], unique=False, postgresql_where=sa.text("status = 'delivering'"), sqlite_where=sa.text("status = 'delivering'"))
        batch_op.create_index('ix_sk_outbox_pending', ['next_attempt_at', 'id'], unique=False, postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))



def downgrade() -> None:
    with op.batch_alter_table('sk_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_sk_outbox_pending', postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
        batch_op.drop_index('ix_sk_outbox_leased', postgresql_where=sa.text("status = 'delivering'"), sqlite_where=sa.text("status = 'delivering'"))
        batch_op.drop_index(batch_op.f('ix_sk_outbox_instance_id'))
        batch_op.drop_index('ix_sk_outbox_dead', postgresql_where=sa.text("status = 'dead'"), sqlite_where=sa.text("status = 'dead'"))

    op.drop_table('sk_outbox')
