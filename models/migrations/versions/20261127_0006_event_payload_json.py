"""An event's system_info and details are `json` on PostgreSQL, no longer `jsonb`.

Nothing queries inside them: they are stored, shown and exported whole. jsonb parsed each
value into a tree at every insert and printed it back as text at every read, about a third
of PostgreSQL's CPU in an export of a million events and part of its work per event at
ingest; `json` checks the text is JSON and keeps it as written. The agent table's JSON
columns stay jsonb. SQLite stores both types alike: nothing changes there.

The conversion rewrites the event table on PostgreSQL (about 30 s at a million events on
the benchmark machine); values keep their meaning, their text becomes jsonb's printing of
them (`{"a": 1}`) for rows stored before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 13:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("system_info", "details")


def _convert(to: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    changes = ", ".join(
        f"ALTER COLUMN {column} TYPE {to} USING {column}::{to}" for column in COLUMNS
    )
    op.execute(f"ALTER TABLE update_events {changes}")


def upgrade() -> None:
    _convert("json")


def downgrade() -> None:
    _convert("jsonb")
