"""receivers: custom webhook headers, the retry window's start, circuits per origin

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("headers", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_attempt_at", sa.Float(), nullable=True))
    op.create_table(
        "circuits",
        sa.Column("origin", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("cooldown", sa.Float(), nullable=True),
        sa.Column("probe_at", sa.Float(), nullable=True),
        sa.Column("probe_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("origin"),
    )


def downgrade() -> None:
    op.drop_table("circuits")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("first_attempt_at")
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.drop_column("headers")
