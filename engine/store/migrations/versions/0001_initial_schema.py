"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 04:32:02.449476
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sk_definitions',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', 'version', name=op.f('pk_sk_definitions'))
    )
    op.create_table('sk_idempotency',
    sa.Column('actor_id', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('instance_id', sa.String(length=36), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('actor_id', 'key', name=op.f('pk_sk_idempotency'))
    )
    op.create_table('sk_instances',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('workflow', sa.String(length=64), nullable=False),
    sa.Column('workflow_version', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=64), nullable=False),
    sa.Column('state_entered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('unit', sa.String(length=128), nullable=False),
    sa.Column('parent_id', sa.String(length=36), nullable=True),
    sa.Column('external_ref', sa.String(length=255), nullable=True),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['sk_instances.id'], name=op.f('fk_sk_instances_parent_id_sk_instances')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sk_instances'))
    )
    with op.batch_alter_table('sk_instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sk_instances_external_ref'), ['external_ref'], unique=False)
        batch_op.create_index(batch_op.f('ix_sk_instances_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sk_instances_unit_workflow_state'), ['unit', 'workflow', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_sk_instances_workflow_state'), ['workflow', 'state'], unique=False)

    op.create_table('sk_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('instance_id', sa.String(length=36), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('trigger', sa.String(length=64), nullable=True),
    sa.Column('from_state', sa.String(length=64), nullable=True),
    sa.Column('to_state', sa.String(length=64), nullable=False),
    sa.Column('actor_id', sa.String(length=128), nullable=False),
    sa.Column('actor_roles', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actor_unit', sa.String(length=128), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data_delta', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['sk_instances.id'], name=op.f('fk_sk_events_instance_id_sk_instances')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sk_events')),
    sa.UniqueConstraint('instance_id', 'seq', name=op.f('uq_sk_events_instance_id_seq'))
    )


def downgrade() -> None:
    op.drop_table('sk_events')
    with op.batch_alter_table('sk_instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sk_instances_workflow_state'))
        batch_op.drop_index(batch_op.f('ix_sk_instances_unit_workflow_state'))
        batch_op.drop_index(batch_op.f('ix_sk_instances_parent_id'))
        batch_op.drop_index(batch_op.f('ix_sk_instances_external_ref'))

    op.drop_table('sk_instances')
    op.drop_table('sk_idempotency')
    op.drop_table('sk_definitions')
