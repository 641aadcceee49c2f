"""Error-group index covers the agent: (fingerprint, occurred_at, agent_id).

Counting distinct agents per fingerprint no longer visits the table rows; the index
still serves "events of one fingerprint, newest first".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("update_events") as batch_op:
        batch_op.create_index(
            "ix_update_events_fingerprint_occurred_at_agent_id",
            ["fingerprint", "occurred_at", "agent_id"],
        )
        batch_op.drop_index("ix_update_events_fingerprint_occurred_at")


def downgrade() -> None:
    with op.batch_alter_table("update_events") as batch_op:
        batch_op.create_index(
            "ix_update_events_fingerprint_occurred_at", ["fingerprint", "occurred_at"]
        )
        batch_op.drop_index("ix_update_events_fingerprint_occurred_at_agent_id")
