"""Console reads at a million events, on PostgreSQL: error-text search and error groups by index.

- A pg_trgm GIN index on update_events.error_message: the console's "error text
  contains" filter is `error_message ILIKE '%text%'`, which no B-tree serves; without it
  PostgreSQL read every row. pg_trgm ships with PostgreSQL (contrib) and is a trusted
  extension, so the database owner may create it.
- The error-group index (fingerprint, occurred_at, agent_id) now INCLUDEs the event key
  (id), so the group aggregates and each group's hosts are read from the index alone
  (SQLite keeps the rowid, which is the id, in every index already).

SQLite has neither kind of index option: there the migration changes nothing (the model
declares the trigram index for PostgreSQL only, and INCLUDE is PostgreSQL syntax).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 08:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGRAM_INDEX = "ix_update_events_error_message_trgm"
GROUP_INDEX = "ix_update_events_fingerprint_occurred_at_agent_id"
GROUP_COLUMNS = ["fingerprint", "occurred_at", "agent_id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        TRIGRAM_INDEX,
        "update_events",
        ["error_message"],
        postgresql_using="gin",
        postgresql_ops={"error_message": "gin_trgm_ops"},
    )
    op.drop_index(GROUP_INDEX, table_name="update_events")
    op.create_index(GROUP_INDEX, "update_events", GROUP_COLUMNS, postgresql_include=["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(GROUP_INDEX, table_name="update_events")
    op.create_index(GROUP_INDEX, "update_events", GROUP_COLUMNS)
    # The extension stays: other objects in the database may use it.
    op.drop_index(TRIGRAM_INDEX, table_name="update_events")
