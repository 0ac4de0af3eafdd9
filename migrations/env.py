"""Alembic environment: runs on the connection status-proxy hands over."""

from alembic import context
from sqlmodel import SQLModel

from service import models  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `status-proxy migrate`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
