"""owned videos: which key created or registered which task, for /v1/videos

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owned_videos",
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("task_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("video", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=True),
        sa.Column("created", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "task_id"),
    )
    with op.batch_alter_table("owned_videos", schema=None) as batch_op:
        batch_op.create_index(
            "ix_owned_videos_listing", ["owner", "created_at", "task_id"], unique=False
        )
        batch_op.create_index("ix_owned_videos_task", ["task_id"], unique=False)
    # Every task a key registered before this revision is that key's video.
    op.execute(
        "INSERT INTO owned_videos (owner, task_id, created_at, updated_at) "
        "SELECT owner, task_id, MIN(created_at), MAX(updated_at) FROM registrations "
        "GROUP BY owner, task_id"
    )


def downgrade() -> None:
    with op.batch_alter_table("owned_videos", schema=None) as batch_op:
        batch_op.drop_index("ix_owned_videos_task")
        batch_op.drop_index("ix_owned_videos_listing")
    op.drop_table("owned_videos")
