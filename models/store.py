"""Writing reported events: derived fields, idempotent insert, the agent's migration summary.

Used by the ingest API for every check-in and by tools that load events in bulk, so the
rules for what gets stored live in one place.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import chain
from types import MappingProxyType
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from models.fingerprint import fingerprint
from models.tables import AGENT_TABLE as AGENTS
from models.tables import EVENT_TABLE as EVENTS
from models.types import dumps_json
from models.vocabulary import (
    Category,
    EventType,
    MigrationState,
    Status,
    kind_of,
    migration_state_after,
    severity_for,
)
from models.wire import ReportedEvent


@dataclass(frozen=True, slots=True)
class StoreResult:
    accepted: int
    duplicates: int


# The columns a stored event fills (all but the key), in the order `_event_values` gives.
EVENT_ROW_KEYS: tuple[str, ...] = (
    "agent_id",
    "event_id",
    "event_type",
    "category",
    "phase",
    "status",
    "severity",
    "error_message",
    "error_truncated",
    "fingerprint",
    "migration_from",
    "migration_to",
    "occurred_at",
    "received_at",
    "system_info",
    "details",
)
_SEVERITY = {status: severity_for(status) for status in Status}
# Enum members looked up once: on Python 3.11 each `Status.SUCCESS` costs a descriptor call.
_SUCCESS = Status.SUCCESS
_MIGRATION = Category.MIGRATION


def _event_values(
    event: ReportedEvent, agent_id: UUID, hostname: str, received_at: datetime
) -> tuple[Any, ...]:
    kind = kind_of(event.event_type)
    message = event.error_message
    return (
        agent_id,
        event.event_id,
        event.event_type,
        kind.category,
        kind.phase,
        event.status,
        _SEVERITY[event.status],
        message,
        event.error_truncated,
        (
            fingerprint(event.event_type.value, message, hostname=hostname)
            if message is not None and event.status is not _SUCCESS
            else None
        ),
        event.migration_from,
        event.migration_to,
        event.timestamp,
        received_at,
        event.system_info,
        event.details,
    )


def event_row(
    event: ReportedEvent, *, agent_id: UUID, hostname: str, received_at: datetime
) -> dict[str, Any]:
    """The `update_events` row for a validated event, with the server's derived fields."""
    values = _event_values(event, agent_id, hostname, received_at)
    return dict(zip(EVENT_ROW_KEYS, values, strict=True))


class ConcurrentInsert(Exception):
    """Another writer stored some of these events between our check and our insert.

    Check-ins cannot race this way (they are serialised per agent, see `_lock_agent`);
    only a foreign writer can. The transaction must be rolled back and retried, which is
    safe: storing is idempotent.
    """


class InactiveAgent(Exception):
    """The agent is unknown, or revoked while its caller asked to refuse revoked agents."""


# An agent's migration summary before any of its migration events is stored (the agent
# table's defaults); `migration_summary` moves it on from there.
NEW_AGENT_SUMMARY: Mapping[str, Any] = MappingProxyType(
    {
        "migration_state": MigrationState.NEVER_REPORTED,
        "migration_state_at": None,
        "ever_migrated": False,
        "last_migration_event_type": None,
        "last_migration_from": None,
        "last_migration_to": None,
        "last_error_message": None,
        "last_fingerprint": None,
    }
)


@dataclass(frozen=True, slots=True)
class Checkin:
    """One agent's check-in: its validated events and what it says about itself."""

    agent_id: UUID
    events: Sequence[ReportedEvent]
    received_at: datetime
    agent_version: str | None = None
    system_info: dict[str, Any] | None = None
    # Its rows, made ahead of the write by `prepare_rows` where that is cheaper.
    prepared: PreparedRows | None = None


@dataclass(frozen=True, slots=True)
class PreparedRows:
    """A check-in's rows for one database: values in `EVENT_ROW_KEYS` order, and the same
    rows encoded as the database driver gets them."""

    dialect: Dialect
    hostname: str
    values: list[tuple[Any, ...]]
    encoded: list[tuple[Any, ...]]


def prepare_rows(
    dialect: Dialect,
    *,
    agent_id: UUID,
    hostname: str,
    events: Sequence[ReportedEvent],
    received_at: datetime,
) -> PreparedRows:
    """Derive (fingerprints included) and encode a check-in's rows.

    The ingest API does this on its event loop, where CPU is spare while the one check-in
    writer stores the groups before; `store_checkins` uses the result if it was made for
    its database and for the hostname it finds on the agent's row, and does it otherwise.
    """
    values = [_event_values(event, agent_id, hostname, received_at) for event in events]
    encoded = _multi_row_insert(dialect).encode(values) if values else []
    return PreparedRows(dialect, hostname, values, encoded)


def _rows_of(checkin: Checkin, dialect: Dialect, hostname: str) -> PreparedRows:
    prepared = checkin.prepared
    if prepared is not None and prepared.dialect is dialect and prepared.hostname == hostname:
        return prepared
    return prepare_rows(
        dialect,
        agent_id=checkin.agent_id,
        hostname=hostname,
        events=checkin.events,
        received_at=checkin.received_at,
    )


# Statements are built once: building one costs more than running it on a warm
# connection, and only their parameters change from one check-in to the next.
_AGENTS_FOR_SUMMARY = (
    sa.select(
        AGENTS.c.id,
        AGENTS.c.hostname,
        AGENTS.c.migration_state,
        AGENTS.c.migration_state_at,
        AGENTS.c.ever_migrated,
        AGENTS.c.revoked,
    )
    .where(AGENTS.c.id.in_(sa.bindparam("agent_ids", expanding=True)))
    .order_by(AGENTS.c.id)
)
# FOR UPDATE serialises concurrent check-ins of one agent on PostgreSQL (several API
# processes may write at once; locking in id order keeps them from deadlocking), so the
# summary is never computed from a stale row and the duplicate check below is exact;
# SQLite writers are serialised anyway.
_LOCK_AGENTS = {
    "postgresql": _AGENTS_FOR_SUMMARY.with_for_update(),
    "sqlite": _AGENTS_FOR_SUMMARY,
}
# The SET clause comes from the parameters given, so one statement serves every update.
_UPDATE_AGENT = sa.update(AGENTS).where(AGENTS.c.id == sa.bindparam("target_agent_id"))
# Keys per lookup stay under SQLite's and PostgreSQL's limits on parameters.
_KEYS_PER_LOOKUP = 5000


def _already_stored(
    connection: Connection, keys: Sequence[tuple[Any, Any]]
) -> set[tuple[Any, Any]]:
    """Which of these (agent id, event id) pairs are stored: one unique-index probe each.

    Keys go in and come out as the driver has them (hex text on SQLite, UUIDs on
    PostgreSQL), so they compare with encoded rows without converting either.

    A join with the pairs, because SQLite answers `(a, b) IN (VALUES ..)` by scanning the
    whole index. PostgreSQL gets the pairs as two arrays: psycopg rewrites the
    placeholders of every long statement in Python, which cost more than the query.
    """
    by_column = _by_column(connection.dialect)
    stored: set[tuple[Any, Any]] = set()
    for start in range(0, len(keys), _KEYS_PER_LOOKUP):
        chunk = keys[start : start + _KEYS_PER_LOOKUP]
        if by_column:
            pairs = "SELECT * FROM unnest(%b::uuid[], %b::uuid[])"
            parameters: tuple[Any, ...] = tuple(map(list, zip(*chunk, strict=True)))
        else:
            pairs = "VALUES " + ", ".join(["(?, ?)"] * len(chunk))
            parameters = tuple(chain.from_iterable(chunk))
        sql = (
            f"WITH k (agent_id, event_id) AS ({pairs}) "
            f"SELECT e.agent_id, e.event_id FROM k JOIN {EVENTS.name} e "
            "ON e.agent_id = k.agent_id AND e.event_id = k.event_id"
        )
        for agent_id, event_id in connection.exec_driver_sql(sql, parameters):
            stored.add((agent_id, event_id))
    return stored


def _by_column(dialect: Dialect) -> bool:
    """Whether rows go to this database as one array per column (PostgreSQL's unnest)
    rather than as a VALUES list (SQLite, which has no arrays)."""
    return dialect.name == "postgresql"


@dataclass(frozen=True, slots=True)
class _MultiRowInsert:
    """One `INSERT .. ON CONFLICT (agent_id, event_id) DO NOTHING` for a group's events,
    its parameters encoded by each column's own SQLAlchemy bind processor (so the stored
    values are those of a Core insert: hex UUIDs on SQLite, enum values, UTC timestamps),
    JSON as text written by the engines' serializer, `dumps_json`.

    Executing the Core statement with a list of dicts costs about 40 us per row in
    SQLAlchemy's parameter handling, more than SQLite spends storing the row; and an
    executemany lets go of the GIL once per row, so under load the writer queues for it
    a hundred times per check-in. One statement lets go of it once. SQLite gets the rows
    as `VALUES (..), (..)`; PostgreSQL as one array per column (`SELECT .. FROM
    unnest(..)`): a short statement whose placeholders psycopg converts once and caches,
    where a VALUES list of a thousand rows was rewritten in Python on every execution.
    PostgreSQL's JSON arrives as text and is cast to json there: psycopg would otherwise
    call a Python dumper for every value.
    """

    sql: str | None  # PostgreSQL's, the same for any number of rows
    head: str
    row_placeholders: str
    tail: str
    # Per column before the JSON ones: its values, converted by the column type's bind
    # processor (None: as is).
    converters: tuple[Callable[[Sequence[Any]], Iterable[Any]] | None, ...]

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _MultiRowInsert:
        keys = EVENT_ROW_KEYS
        quote = dialect.identifier_preparer.quote
        head = f"INSERT INTO {quote(EVENTS.name)} ({', '.join(map(quote, keys))}) "
        # The conflict target is named so that any other constraint violation raises.
        tail = " ON CONFLICT (agent_id, event_id) DO NOTHING"
        sql = None
        if _by_column(dialect):
            types = [EVENTS.c[k].type.compile(dialect) for k in keys]
            arrays = ", ".join(
                f"%b::{'text' if k in _JSON_KEYS else name}[]"
                for k, name in zip(keys, types, strict=True)
            )
            names = [f"c{n}" for n in range(len(keys))]
            values = ", ".join(
                f"{n}::{name}" if k in _JSON_KEYS else n
                for n, k, name in zip(names, keys, types, strict=True)
            )
            sql = f"{head}SELECT {values} FROM unnest({arrays}) AS u({', '.join(names)}){tail}"
        # JSON columns are serialised by `encode` itself.
        plain = keys[:_FIRST_JSON]
        processors = [EVENTS.c[k].type.dialect_impl(dialect).bind_processor(dialect) for k in plain]
        return cls(
            sql=sql,
            head=head + "VALUES ",
            row_placeholders=f"({', '.join(['?'] * len(keys))})",
            tail=tail,
            converters=tuple(map(_converter, plain, processors)),
        )

    def encode(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Rows of values in `EVENT_ROW_KEYS` order, as the driver gets them."""
        # Column by column, so that the loops run in C and only the processors in Python.
        columns = list(zip(*rows, strict=True))
        encoded = [
            values if convert is None else convert(values)
            for values, convert in zip(columns[:_FIRST_JSON], self.converters, strict=True)
        ]
        encoded += ([*map(dumps_json, values)] for values in columns[_FIRST_JSON:])
        return list(zip(*encoded, strict=True))

    def statement(self, encoded: Sequence[tuple[Any, ...]]) -> tuple[str, tuple[Any, ...]]:
        """The statement and its parameters for encoded rows."""
        if self.sql is not None:
            return self.sql, tuple(map(list, zip(*encoded, strict=True)))
        sql = self.head + ", ".join([self.row_placeholders] * len(encoded)) + self.tail
        return sql, tuple(chain.from_iterable(encoded))


# The JSON columns come last in a row.
_JSON_KEYS = ("system_info", "details")
_FIRST_JSON = EVENT_ROW_KEYS.index(_JSON_KEYS[0])
assert EVENT_ROW_KEYS[_FIRST_JSON:] == _JSON_KEYS


# Columns with few distinct values among a check-in's rows (the same for all of them, or
# one of a few enum members): each distinct value is converted once per check-in.
_FEW_VALUES = frozenset(
    {
        "agent_id",
        "received_at",
        "event_type",
        "category",
        "phase",
        "status",
        "severity",
        "error_truncated",
    }
)


def _converter(
    key: str, process: Callable[[Any], Any] | None
) -> Callable[[Sequence[Any]], Iterable[Any]] | None:
    if process is None:
        return None
    if key not in _FEW_VALUES:
        return partial(map, process)

    def convert_each_distinct_value_once(values: Sequence[Any]) -> list[Any]:
        done: dict[Any, Any] = {}
        return [done[v] if v in done else done.setdefault(v, process(v)) for v in values]

    return convert_each_distinct_value_once


_MULTI_ROW_INSERTS: weakref.WeakKeyDictionary[Dialect, _MultiRowInsert] = (
    weakref.WeakKeyDictionary()
)
# SQLite's VALUES list stays under its limit of 32,766 parameters (16 a row).
_ROWS_PER_STATEMENT = 1000


def _multi_row_insert(dialect: Dialect) -> _MultiRowInsert:
    insert = _MULTI_ROW_INSERTS.get(dialect)
    if insert is None:
        insert = _MULTI_ROW_INSERTS[dialect] = _MultiRowInsert.for_dialect(dialect)
    return insert


def _insert_new(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert encoded rows known to be new, up to `_ROWS_PER_STATEMENT` in one statement.

    ON CONFLICT DO NOTHING keeps even a lost race from storing an event twice; a shortfall
    in the rows the database reports inserted is raised as `ConcurrentInsert`.
    """
    insert = _multi_row_insert(connection.dialect)
    inserted = 0
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        sql, parameters = insert.statement(rows[start : start + _ROWS_PER_STATEMENT])
        inserted += connection.exec_driver_sql(sql, parameters).rowcount
    if inserted < len(rows):
        raise ConcurrentInsert(f"{len(rows) - inserted} of {len(rows)} events stored meanwhile")


def store_events(
    connection: Connection,
    *,
    agent_id: UUID,
    events: Sequence[ReportedEvent],
    received_at: datetime,
    agent_version: str | None = None,
    system_info: dict[str, Any] | None = None,
    refuse_revoked: bool = False,
) -> StoreResult:
    """`store_checkins` for one check-in; raises its InactiveAgent."""
    checkin = Checkin(agent_id, events, received_at, agent_version, system_info)
    [outcome] = store_checkins(connection, [checkin], refuse_revoked=refuse_revoked)
    if isinstance(outcome, InactiveAgent):
        raise outcome
    return outcome


def store_checkins(
    connection: Connection, checkins: Sequence[Checkin], *, refuse_revoked: bool = False
) -> list[StoreResult | InactiveAgent]:
    """Store check-ins' valid events and update their agents, inside the caller's
    transaction, with a few statements for all of them: the ingest API writes every
    check-in waiting at a moment in one transaction.

    Re-sent events (same agent and event id, stored before or earlier in these check-ins)
    are counted as duplicates and the first copy is kept, so `accepted + duplicates ==
    len(events)` holds for each check-in. A check-in of an unknown agent, or of a revoked
    one if `refuse_revoked`, stores nothing and gets InactiveAgent in place of its result:
    the ingest API decides that in the same transaction as the write, so a revocation
    that committed before it can never be overtaken. Raises ConcurrentInsert if a foreign
    writer stored some of the events meanwhile (nothing is stored then).
    """
    agents = _lock_agents(connection, {checkin.agent_id for checkin in checkins})
    live = [
        checkin
        for checkin in checkins
        if checkin.agent_id in agents
        and not (refuse_revoked and agents[checkin.agent_id]["revoked"])
    ]
    # Looking the ids up first (instead of INSERT .. RETURNING) spares duplicates the work
    # of storing their rows. It is exact because check-ins of one agent are serialised:
    # the agent's row is locked on PostgreSQL, and SQLite has one writer at a time.
    dialect = connection.dialect
    rows_of = {
        id(checkin): _rows_of(checkin, dialect, agents[checkin.agent_id]["hostname"])
        for checkin in live
    }
    keys = [row[:2] for rows in rows_of.values() for row in rows.encoded]
    stored = _already_stored(connection, keys) if keys else set()
    new_encoded: list[tuple[Any, ...]] = []
    changes_by_agent: dict[UUID, dict[str, Any]] = {}
    outcomes: list[StoreResult | InactiveAgent] = []
    for checkin in checkins:
        agent = agents.get(checkin.agent_id)
        if agent is None or (refuse_revoked and agent["revoked"]):
            outcomes.append(InactiveAgent(f"agent {checkin.agent_id} is unknown or revoked"))
            continue
        rows = rows_of[id(checkin)]
        new_values = []
        for values, encoded in zip(rows.values, rows.encoded, strict=True):
            key = encoded[:2]
            if key not in stored:
                stored.add(key)
                new_values.append(values)
                new_encoded.append(encoded)
        changes = _agent_changes(agent, checkin, new_values)
        agent.update(changes)  # what a later check-in of the same agent builds on
        changes_by_agent.setdefault(checkin.agent_id, {}).update(changes)
        outcomes.append(
            StoreResult(accepted=len(new_values), duplicates=len(checkin.events) - len(new_values))
        )
    if new_encoded:
        _insert_new(connection, new_encoded)
    _update_agents(connection, changes_by_agent)
    return outcomes


def _update_agents(connection: Connection, changes_by_agent: dict[UUID, dict[str, Any]]) -> None:
    """One executemany per set of columns changed (an UPDATE's SET clause comes from its
    parameters): a few round trips per group, where a statement per agent made the writer
    wait on the database once for every agent in it. The agents are locked already."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for agent_id, changes in changes_by_agent.items():
        parameters = {"target_agent_id": agent_id, **changes}
        by_columns.setdefault(tuple(sorted(changes)), []).append(parameters)
    for parameters_list in by_columns.values():
        connection.execute(_UPDATE_AGENT, parameters_list)


def _lock_agents(connection: Connection, agent_ids: set[UUID]) -> dict[UUID, dict[str, Any]]:
    query = _LOCK_AGENTS[connection.dialect.name]
    result = connection.execute(query, {"agent_ids": sorted(agent_ids)}).mappings()
    return {row["id"]: dict(row) for row in result}


_CATEGORY = EVENT_ROW_KEYS.index("category")


def _agent_changes(
    agent: dict[str, Any], checkin: Checkin, new_rows: Sequence[tuple[Any, ...]]
) -> dict[str, Any]:
    changes: dict[str, Any] = {"last_seen_at": checkin.received_at}
    if checkin.agent_version is not None:
        changes["agent_version"] = checkin.agent_version
    if checkin.system_info is not None:
        changes["system_info"] = checkin.system_info
    new_migration_rows = [
        dict(zip(EVENT_ROW_KEYS, row, strict=True))
        for row in new_rows
        if row[_CATEGORY] is _MIGRATION
    ]
    changes.update(migration_summary(agent, new_migration_rows))
    return changes


def migration_summary(
    agent: Mapping[str, Any], new_rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
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
