"""Initial schema: agents, enrolment tokens and update_events.

Enums are plain VARCHAR columns (no CHECK), so a new event type needs no migration.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 03:22:45.379995

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "enrollment_token",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_token_token_hash")),
    )
    op.create_table(
        "agent",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("os_type", sa.String(length=64), nullable=False),
        sa.Column("os_version", sa.String(length=128), nullable=False),
        sa.Column("os_architecture", sa.String(length=64), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.String(length=128), nullable=True),
        sa.Column("host_metadata", JSON, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("enrollment_token_id", sa.Uuid(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("system_info", JSON, nullable=False),
        sa.Column(
            "migration_state", sa.String(length=32), server_default="never_reported", nullable=False
        ),
        sa.Column("migration_state_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ever_migrated", sa.Boolean(), nullable=False),
        sa.Column("last_migration_event_type", sa.String(length=64), nullable=True),
        sa.Column("last_migration_from", sa.String(length=255), nullable=True),
        sa.Column("last_migration_to", sa.String(length=255), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("last_fingerprint", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_token.id"],
            name=op.f("fk_agent_enrollment_token_id_enrollment_token"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_agent_token_hash")),
    )
    with op.batch_alter_table("agent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agent_hostname"), ["hostname"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_agent_migration_state"), ["migration_state"], unique=False
        )

    op.create_table(
        "update_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=32), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_truncated", sa.Boolean(), nullable=False),
        sa.Column("fingerprint", sa.String(length=16), nullable=True),
        sa.Column("migration_from", sa.String(length=255), nullable=True),
        sa.Column("migration_to", sa.String(length=255), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("system_info", JSON, nullable=False),
        sa.Column("details", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agent.id"],
            name=op.f("fk_update_events_agent_id_agent"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_update_events")),
        sa.UniqueConstraint(
            "agent_id", "event_id", name=op.f("uq_update_events_agent_id_event_id")
        ),
    )
    with op.batch_alter_table("update_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_update_events_agent_id_occurred_at"),
            ["agent_id", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_update_events_category_occurred_at"),
            ["category", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_update_events_event_type_status_occurred_at"),
            ["event_type", "status", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_update_events_fingerprint_occurred_at"),
            ["fingerprint", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_update_events_occurred_at"), ["occurred_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("update_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_update_events_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_update_events_fingerprint_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_update_events_event_type_status_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_update_events_category_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_update_events_agent_id_occurred_at"))

    op.drop_table("update_events")
    with op.batch_alter_table("agent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agent_migration_state"))
        batch_op.drop_index(batch_op.f("ix_agent_hostname"))

    op.drop_table("agent")
    op.drop_table("enrollment_token")
