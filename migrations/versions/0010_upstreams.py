"""upstreams: a task is its upstream plus its id; what existed is the "default" upstream's

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:00:00
"""

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "default"


def _upstream_column() -> sa.Column:  # type: ignore[type-arg]
    # The server default fills the rows already there, then goes: every insert names it.
    return sa.Column(
        "upstream",
        sqlmodel.sql.sqltypes.AutoString(length=32),
        nullable=False,
        server_default=DEFAULT,
    )


@contextlib.contextmanager
def _new_primary_key(table: str) -> Iterator[object]:
    """A batch that replaces the table's primary key. SQLite rebuilds the table; its
    primary key has no name, and SQLAlchemy warns that the copied columns still carry
    the old key's flag before taking the new key, which is what this migration wants."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    with warnings.catch_warnings():
        if sqlite:
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
        with op.batch_alter_table(table, recreate="always" if sqlite else "auto") as batch:
            if not sqlite:
                batch.drop_constraint(f"{table}_pkey", type_="primary")
            yield batch


def _rekey(table: str, key: list[str]) -> None:
    """Give ``table`` an ``upstream`` column (existing rows: ``default``) and make
    ``key`` its primary key."""
    with op.batch_alter_table(table, schema=None) as batch:
        batch.add_column(_upstream_column())
    with _new_primary_key(table) as batch:
        batch.alter_column("upstream", server_default=None)  # type: ignore[attr-defined]
        batch.create_primary_key(f"{table}_pkey", key)  # type: ignore[attr-defined]


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch:
        batch.drop_index("ix_tasks_due")
    _rekey("tasks", ["upstream", "task_id"])
    with op.batch_alter_table("tasks", schema=None) as batch:
        batch.create_index("ix_tasks_due", ["upstream", "state", "next_poll_at"], unique=False)

    # Registrations keep the column's server default: removing it would make SQLite
    # rebuild the table, and dropping the old one fails while events refer to it.
    with op.batch_alter_table("registrations", schema=None) as batch:
        batch.drop_index("ix_registrations_task")
        batch.add_column(_upstream_column())
        batch.create_index("ix_registrations_task", ["task_id", "upstream", "state"], unique=False)

    with op.batch_alter_table("owned_videos", schema=None) as batch:
        batch.drop_index("ix_owned_videos_listing")
        batch.drop_index("ix_owned_videos_task")
    _rekey("owned_videos", ["owner", "upstream", "task_id"])
    with op.batch_alter_table("owned_videos", schema=None) as batch:
        batch.create_index(
            "ix_owned_videos_listing", ["owner", "created_at", "task_id", "upstream"], unique=False
        )
        batch.create_index("ix_owned_videos_task", ["task_id", "upstream"], unique=False)


def downgrade() -> None:
    # Only the default upstream's rows fit the old keys; the others are dropped.
    others = "SELECT id FROM registrations WHERE upstream <> 'default'"
    op.execute(f"DELETE FROM attempts WHERE registration_id IN ({others})")  # noqa: S608
    op.execute(f"DELETE FROM events WHERE registration_id IN ({others})")  # noqa: S608
    for table in ("owned_videos", "registrations", "tasks"):
        op.execute(f"DELETE FROM {table} WHERE upstream <> 'default'")  # noqa: S608

    with op.batch_alter_table("owned_videos", schema=None) as batch:
        batch.drop_index("ix_owned_videos_listing")
        batch.drop_index("ix_owned_videos_task")
    _unkey("owned_videos", ["owner", "task_id"])
    with op.batch_alter_table("owned_videos", schema=None) as batch:
        batch.create_index(
            "ix_owned_videos_listing", ["owner", "created_at", "task_id"], unique=False
        )
        batch.create_index("ix_owned_videos_task", ["task_id"], unique=False)

    # ALTER TABLE … DROP COLUMN in place (SQLite 3.35+): a rebuild would drop the table
    # that events refer to.
    op.drop_index("ix_registrations_task", table_name="registrations")
    op.drop_column("registrations", "upstream")
    op.create_index("ix_registrations_task", "registrations", ["task_id", "state"], unique=False)

    with op.batch_alter_table("tasks", schema=None) as batch:
        batch.drop_index("ix_tasks_due")
    _unkey("tasks", ["task_id"])
    with op.batch_alter_table("tasks", schema=None) as batch:
        batch.create_index("ix_tasks_due", ["state", "next_poll_at"], unique=False)


def _unkey(table: str, key: list[str]) -> None:
    with _new_primary_key(table) as batch:
        batch.create_primary_key(f"{table}_pkey", key)  # type: ignore[attr-defined]
    with op.batch_alter_table(table, schema=None) as batch:
        batch.drop_column("upstream")
