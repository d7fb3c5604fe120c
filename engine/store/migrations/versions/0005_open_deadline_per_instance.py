"""open deadlines of an instance: a partial index for the close on every state change

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_sk_deadlines_open_instance",
        "sk_deadlines",
        ["instance_id", "kind"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_sk_deadlines_open_instance",
        table_name="sk_deadlines",
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
