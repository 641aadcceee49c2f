"""Writing reported events: derived fields, idempotent insert, the agent's migration summary.

Used by the ingest API for every check-in and by tools that load events in bulk, so the
rules for what gets stored live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from models.fingerprint import fingerprint
from models.tables import AGENT_TABLE as AGENTS
from models.tables import EVENT_TABLE as EVENTS
from models.vocabulary import (
    Category,
    EventType,
    MigrationState,
    Status,
    kind_of,
    migration_state_after,
    severity_for,
)
from models.wire import Event


@dataclass(frozen=True, slots=True)
class StoreResult:
    accepted: int
    duplicates: int


def event_row(
    event: Event, *, agent_id: UUID, hostname: str, received_at: datetime
) -> dict[str, Any]:
    """The `update_events` row for a validated event, with the server's derived fields."""
    kind = kind_of(event.event_type)
    has_error = event.error_message is not None and event.status is not Status.SUCCESS
    return {
        "agent_id": agent_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "category": kind.category,
        "phase": kind.phase,
        "status": event.status,
        "severity": severity_for(event.status),
        "error_message": event.error_message,
        "error_truncated": event.error_truncated,
        "fingerprint": (
            fingerprint(event.event_type.value, event.error_message or "", hostname=hostname)
            if has_error
            else None
        ),
        "migration_from": event.migration_from,
        "migration_to": event.migration_to,
        "occurred_at": event.timestamp,
        "received_at": received_at,
        "system_info": event.system_info,
        "details": event.details,
    }


class ConcurrentInsert(Exception):
    """Another writer stored some of these events between our check and our insert.

    Check-ins cannot race this way (they are serialised per agent, see `_lock_agent`);
    only a foreign writer can. The transaction must be rolled back and retried, which is
    safe: storing is idempotent.
    """


class InactiveAgent(Exception):
    """The agent is unknown, or revoked while its caller asked to refuse revoked agents."""


# Statements are built once: building one costs more than running it on a warm
# connection, and only their parameters change from one check-in to the next.
_AGENT_FOR_SUMMARY = sa.select(
    AGENTS.c.hostname,
    AGENTS.c.migration_state,
    AGENTS.c.migration_state_at,
    AGENTS.c.ever_migrated,
    AGENTS.c.revoked,
).where(AGENTS.c.id == sa.bindparam("agent_id"))
# FOR UPDATE serialises concurrent check-ins of one agent on PostgreSQL, so the summary
# is never computed from a stale row and the duplicate check below is exact; SQLite
# writers are serialised anyway.
_LOCK_AGENT = {
    "postgresql": _AGENT_FOR_SUMMARY.with_for_update(),
    "sqlite": _AGENT_FOR_SUMMARY,
}
_ALREADY_STORED = sa.select(EVENTS.c.event_id).where(
    EVENTS.c.agent_id == sa.bindparam("agent_id"),
    EVENTS.c.event_id.in_(sa.bindparam("event_ids", expanding=True)),
)
# The conflict target is named so that any other constraint violation still raises.
_INSERT_NEW = {
    "postgresql": postgresql.insert(EVENTS).on_conflict_do_nothing(
        index_elements=["agent_id", "event_id"]
    ),
    "sqlite": sqlite.insert(EVENTS).on_conflict_do_nothing(index_elements=["agent_id", "event_id"]),
}
# The SET clause comes from the parameters given, so one statement serves every update.
_UPDATE_AGENT = sa.update(AGENTS).where(AGENTS.c.id == sa.bindparam("target_agent_id"))


def _already_stored(connection: Connection, agent_id: UUID, event_ids: Iterable[UUID]) -> set[UUID]:
    """Which of these event ids the agent has stored before (one unique-index lookup each)."""
    parameters = {"agent_id": agent_id, "event_ids": list(event_ids)}
    return set(connection.scalars(_ALREADY_STORED, parameters))


def _insert_new(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert rows known to be new with one executemany, the fastest bulk path of both
    drivers (SQLite's executemany, psycopg's pipeline).

    ON CONFLICT DO NOTHING keeps even a lost race from storing an event twice; where the
    driver reports how many rows went in, a shortfall is reported as `ConcurrentInsert`.
    """
    inserted = connection.execute(_INSERT_NEW[connection.dialect.name], rows).rowcount
    if 0 <= inserted < len(rows):
        raise ConcurrentInsert(f"{len(rows) - inserted} of {len(rows)} events stored meanwhile")


def store_events(
    connection: Connection,
    *,
    agent_id: UUID,
    events: Sequence[Event],
    received_at: datetime,
    agent_version: str | None = None,
    system_info: dict[str, Any] | None = None,
    refuse_revoked: bool = False,
) -> StoreResult:
    """Store a check-in's valid events and update the agent, inside the caller's transaction.

    Re-sent events (same agent and event id) are counted as duplicates and the first copy
    is kept, so `accepted + duplicates == len(events)` always holds. Raises InactiveAgent,
    storing nothing, for an unknown agent, and for a revoked one if `refuse_revoked`: the
    ingest API decides there, in the same transaction as the write, so a revocation that
    committed before it can never be overtaken.
    """
    agent = _lock_agent(connection, agent_id)
    if agent is None or (refuse_revoked and agent["revoked"]):
        raise InactiveAgent(f"agent {agent_id} is unknown or revoked")
    unique: dict[UUID, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    # Looking the ids up first (instead of INSERT .. RETURNING) halves the cost of storing
    # an event and spares duplicates the work of building their rows. It is exact because
    # check-ins of one agent are serialised: the agent's row is locked on PostgreSQL, and
    # SQLite has one writer at a time.
    stored = _already_stored(connection, agent_id, unique) if unique else set()
    rows = [
        event_row(e, agent_id=agent_id, hostname=agent["hostname"], received_at=received_at)
        for event_id, e in unique.items()
        if event_id not in stored
    ]
    if rows:
        _insert_new(connection, rows)

    changes: dict[str, Any] = {"last_seen_at": received_at}
    if agent_version is not None:
        changes["agent_version"] = agent_version
    if system_info is not None:
        changes["system_info"] = system_info
    new_migration_rows = [row for row in rows if row["category"] is Category.MIGRATION]
    changes.update(migration_summary(agent, new_migration_rows))
    connection.execute(_UPDATE_AGENT, {"target_agent_id": agent_id, **changes})
    return StoreResult(accepted=len(rows), duplicates=len(events) - len(rows))


def _lock_agent(connection: Connection, agent_id: UUID) -> sa.RowMapping | None:
    query = _LOCK_AGENT[connection.dialect.name]
    return connection.execute(query, {"agent_id": agent_id}).mappings().one_or_none()


def migration_summary(agent: sa.RowMapping, new_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Changes to the agent's migration summary after newly stored migration event rows.

    Events may arrive out of order (a spool drained late), so the summary follows the
    newest event by the agent's own timestamp, not by arrival.
    """
    if not new_rows:
        return {}
    ever_migrated = agent["ever_migrated"] or any(
        row["event_type"] is EventType.MIGRATION_EXECUTION_SUCCESS for row in new_rows
    )
    changes: dict[str, Any] = {"ever_migrated": ever_migrated}
    latest = max(new_rows, key=lambda row: row["occurred_at"])
    current_at: datetime | None = agent["migration_state_at"]
    if current_at is None or latest["occurred_at"] >= current_at:
        failed_or_warned = latest["status"] is not Status.SUCCESS
        changes.update(
            migration_state=migration_state_after(
                latest["event_type"], ever_migrated=ever_migrated
            ),
            migration_state_at=latest["occurred_at"],
            last_migration_event_type=latest["event_type"],
            last_migration_from=latest["migration_from"],
            last_migration_to=latest["migration_to"],
            last_error_message=latest["error_message"] if failed_or_warned else None,
            last_fingerprint=latest["fingerprint"],
        )
    elif ever_migrated and agent["migration_state"] == MigrationState.NOT_NEEDED:
        changes["migration_state"] = MigrationState.MIGRATED
    return changes
