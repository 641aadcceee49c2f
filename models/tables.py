"""The database tables: agents, enrolment tokens and the events they report."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from models.types import PayloadJSON, PortableJSON, UTCDateTime, enum_column_type
from models.vocabulary import Category, EventType, MigrationState, Phase, Severity, Status

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# `info` key naming the one database a schema object exists on (an index kind the other
# lacks or does not need): Alembic's migrations create it there alone, and the schema
# comparison skips it on the other database.
ONLY_ON = "only_on"


def _utc(nullable: bool = False, **kwargs: Any) -> Any:
    return Field(sa_column=sa.Column(UTCDateTime(), nullable=nullable, **kwargs))


def _json(nullable: bool = False, type_: sa.types.TypeEngine[Any] = PortableJSON) -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(type_, nullable=nullable))


class EnrollmentToken(SQLModel, table=True):
    """A secret that lets a new host register, a limited number of times, until it expires."""

    __tablename__ = "enrollment_token"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    note: str = Field(default="", max_length=255)
    created_at: datetime = _utc()
    expires_at: datetime = _utc()
    max_uses: int
    use_count: int = 0
    revoked_at: datetime | None = _utc(nullable=True)


class Agent(SQLModel, table=True):
    """A registered host, with its latest migration state kept current at ingest."""

    __tablename__ = "agent"

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    hostname: str = Field(max_length=255, index=True)
    os_type: str = Field(max_length=64)
    os_version: str = Field(max_length=128)
    os_architecture: str = Field(max_length=64)
    agent_version: str = Field(max_length=64)
    machine_id: str | None = Field(default=None, max_length=128)
    host_metadata: dict[str, Any] = _json()
    token_hash: str = Field(max_length=64, unique=True)
    enrollment_token_id: UUID | None = Field(
        default=None, foreign_key="enrollment_token.id", ondelete="SET NULL"
    )
    revoked: bool = False
    revoked_at: datetime | None = _utc(nullable=True)
    created_at: datetime = _utc()
    last_seen_at: datetime | None = _utc(nullable=True)
    system_info: dict[str, Any] = _json()
    # Summary of the latest migration event, maintained by the ingest API so the fleet
    # overview reads one row per agent instead of scanning the event table.
    migration_state: MigrationState = Field(
        default=MigrationState.NEVER_REPORTED,
        sa_column=sa.Column(
            enum_column_type(MigrationState),
            nullable=False,
            index=True,
            server_default=MigrationState.NEVER_REPORTED.value,
        ),
    )
    migration_state_at: datetime | None = _utc(nullable=True)
    ever_migrated: bool = False
    last_migration_event_type: EventType | None = Field(
        default=None, sa_column=sa.Column(enum_column_type(EventType, 64), nullable=True)
    )
    last_migration_from: str | None = Field(default=None, max_length=255)
    last_migration_to: str | None = Field(default=None, max_length=255)
    last_error_message: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    last_fingerprint: str | None = Field(default=None, max_length=16)


class UpdateEvent(SQLModel, table=True):
    """One reported outcome, migration or regular update, unique per (agent, event id)."""

    __tablename__ = "update_events"
    __table_args__ = (
        sa.UniqueConstraint("agent_id", "event_id"),
        # The console's queries: newest first, per agent, per type/status, per group. The
        # key ends the time index so newest-first reads, ordered by (time, key), need no
        # sort on PostgreSQL (SQLite keeps the key in every index anyway).
        sa.Index(None, "occurred_at", "id"),
        sa.Index(None, "agent_id", "occurred_at"),
        sa.Index(None, "category", "occurred_at"),
        # Per type/status over time; its tail covers the migration-path matrix (path and
        # agent of every execution event) so that is read from the index alone.
        sa.Index(
            "ix_update_events_type_status_time_path",
            "event_type",
            "status",
            "occurred_at",
            "migration_from",
            "migration_to",
            "agent_id",
        ),
        # Covers the error-group queries (distinct agents per fingerprint over time, the
        # newest event key); SQLite keeps the key (rowid) in every index by itself.
        sa.Index(None, "fingerprint", "occurred_at", "agent_id", postgresql_include=["id"]),
        # Serves "error text contains" (ILIKE '%text%', which implies the condition) on
        # PostgreSQL; SQLite has no trigram index, so the index exists there only (see
        # ONLY_ON). Only failures and warnings carry a message.
        sa.Index(
            "ix_update_events_error_message_trgm",
            "error_message",
            postgresql_using="gin",
            postgresql_ops={"error_message": "gin_trgm_ops"},
            postgresql_where=sa.text("error_message IS NOT NULL"),
            info={ONLY_ON: "postgresql"},
        ).ddl_if(dialect="postgresql"),
        # Serves "error text contains" on SQLite: only failures and warnings carry a
        # message, so a scan of this partial index reads a fraction of the table
        # (`models.analytics` words the condition so that SQLite uses it).
        sa.Index(
            "ix_update_events_error_message_present",
            "error_message",
            sqlite_where=sa.text("error_message IS NOT NULL"),
            info={ONLY_ON: "sqlite"},
        ).ddl_if(dialect="sqlite"),
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    agent_id: UUID = Field(foreign_key="agent.id", ondelete="CASCADE")
    event_id: UUID
    event_type: EventType = Field(
        sa_column=sa.Column(enum_column_type(EventType, 64), nullable=False)
    )
    category: Category = Field(sa_column=sa.Column(enum_column_type(Category), nullable=False))
    phase: Phase | None = Field(
        default=None, sa_column=sa.Column(enum_column_type(Phase), nullable=True)
    )
    status: Status = Field(sa_column=sa.Column(enum_column_type(Status), nullable=False))
    severity: Severity = Field(sa_column=sa.Column(enum_column_type(Severity), nullable=False))
    error_message: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    error_truncated: bool = False
    fingerprint: str | None = Field(default=None, max_length=16)
    migration_from: str | None = Field(default=None, max_length=255)
    migration_to: str | None = Field(default=None, max_length=255)
    occurred_at: datetime = _utc()
    received_at: datetime = _utc()
    system_info: dict[str, Any] = _json(type_=PayloadJSON)
    details: dict[str, Any] = _json(type_=PayloadJSON)


# Core table objects, for bulk reads and writes that need no ORM objects.
AGENT_TABLE: sa.Table = SQLModel.metadata.tables["agent"]
ENROLLMENT_TOKEN_TABLE: sa.Table = SQLModel.metadata.tables["enrollment_token"]
EVENT_TABLE: sa.Table = SQLModel.metadata.tables["update_events"]
