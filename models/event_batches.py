"""The export's events as typed Arrow record batches, filled by the database driver itself.

`models.analytics.iter_events_frames` makes a Python object of every cell before typing
whole columns; at a million events that is most of an export's time. Here ADBC drivers
(SQLite's C library; PostgreSQL's binary COPY through libpq) fill Arrow arrays directly,
and what the export still needs (UUID text, UTC timestamps, vocabulary categories, each
event's hostname and agent version) is done a whole column at a time by Arrow and NumPy.

The events are read in slices of time, newest first, by a few worker threads with a
connection each (the drivers and Arrow release the GIL, so slices are read and converted
on several cores while the caller writes the previous ones), and handed over in order.
All connections read one snapshot: PostgreSQL's workers import the first one's exported
snapshot; SQLite's, which cannot share one, read no event stored after the first one began
(events are only appended, with growing ids). Memory stays bounded: a slice holds about
`batch_rows` events, and at most `workers + 1` slices are in memory.

The rows, their order and every value are those of
`iter_events_frames(..., json_as="text")`: the same WHERE (`event_conditions`), the same
order, the same typing rules (a value outside the vocabulary becomes missing);
`tests/models/test_event_batches.py` compares the two on hostile data, on both backends.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from models.analytics import (
    EVENT_COLUMNS,
    NEWEST_FIRST,
    UTC_DTYPE,
    EventFilters,
    empty_events_frame,
    event_conditions,
)
from models.settings import Settings
from models.tables import AGENT_TABLE as AGENTS
from models.tables import EVENT_TABLE as EVENTS

# The export's Arrow schema: that of the typed empty frame, pandas metadata included, so
# that a Parquet file read back with pandas has the very dtypes of `events_frame`.
EXPORT_SCHEMA: pa.Schema = pa.Schema.from_pandas(
    empty_events_frame(json_as="text"), preserve_index=False
)
# Readers at once: one per core (each keeps a core busy reading and converting), at least
# two so that reading overlaps the caller's writing, at most four connections.
DEFAULT_WORKERS = max(2, min(4, os.cpu_count() or 2))

_STRING = pa.large_string()
_UTC = pa.timestamp("us", tz="UTC")


def can_read(engine: Engine) -> bool:
    """Whether `iter_event_batches` can read this engine's database.

    PostgreSQL, and SQLite in a file; an in-memory SQLite database lives inside the
    engine's own connection, which another driver cannot open.
    """
    if engine.dialect.name == "postgresql":
        return True
    return engine.dialect.name == "sqlite" and _sqlite_path(engine.url) is not None


def iter_event_batches(
    engine: Engine,
    *,
    filters: EventFilters,
    limit: int | None = None,
    batch_rows: int = 50_000,
    workers: int = DEFAULT_WORKERS,
) -> Iterator[pa.RecordBatch]:
    """The filtered events, newest first, as record batches of EXPORT_SCHEMA.

    Batches hold at most `batch_rows` rows. Closing the iterator early stops the workers
    and closes their connections.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if limit is not None and limit < 0:
        raise ValueError("limit must be zero or more")
    if not can_read(engine):
        raise ValueError(f"cannot read {engine.dialect.name} database {engine.url!r} via ADBC")
    return _read(engine, filters=filters, limit=limit, batch_rows=batch_rows, workers=workers)


def _read(
    engine: Engine, *, filters: EventFilters, limit: int | None, batch_rows: int, workers: int
) -> Iterator[pa.RecordBatch]:
    if limit == 0:
        return
    driver: _Driver = _SQLite(engine) if engine.dialect.name == "sqlite" else _Postgres(engine)
    remaining = limit
    with driver.session(workers) as session:

        def read(bounds: _Slice) -> list[pa.RecordBatch]:
            return session.read(bounds, filters=filters, limit=limit, batch_rows=batch_rows)

        slices = _time_slices(engine, filters=filters, rows=batch_rows)
        for batches in _ordered_map(read, slices, workers=workers, ahead=workers + 1):
            for batch in batches:
                if remaining is not None:
                    batch = batch.slice(0, remaining)
                    remaining -= batch.num_rows
                yield batch
                if remaining == 0:
                    return


# --- slices of time -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slice:
    """Events with `lower <= occurred_at < upper`; None is unbounded on that side."""

    upper: datetime | None
    lower: datetime | None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        c = EVENTS.c
        conditions = []
        if self.upper is not None:
            conditions.append(c.occurred_at < self.upper)
        if self.lower is not None:
            conditions.append(c.occurred_at >= self.lower)
        return conditions


def _time_slices(engine: Engine, *, filters: EventFilters, rows: int) -> Iterator[_Slice]:
    """Consecutive slices of the filters' time window, newest first, covering all of it.

    Each boundary is found on the `occurred_at` index (the `rows`-th next event time), so
    a slice holds about `rows` events of the window, however few of them the other
    filters keep; all events of one instant fall in one slice, so concatenated slices
    keep the newest-first order.
    """
    c = EVENTS.c
    window = event_conditions(EventFilters(since=filters.since, until=filters.until))
    upper: datetime | None = None
    with engine.connect() as connection:
        while True:
            bounded = [*window, c.occurred_at < upper] if upper is not None else window
            query = (
                sa.select(c.occurred_at)
                .where(*bounded)
                .order_by(c.occurred_at.desc())
                .offset(rows - 1)
                .limit(1)
            )
            lower = connection.execute(query).scalar()
            yield _Slice(upper=upper, lower=lower)
            if lower is None:
                return
            upper = lower


_T = TypeVar("_T")
_R = TypeVar("_R")


def _ordered_map(
    function: Callable[[_T], _R], items: Iterable[_T], *, workers: int, ahead: int
) -> Iterator[_R]:
    """`map(function, items)` run by `workers` threads, at most `ahead` results early."""
    with ThreadPoolExecutor(workers, thread_name_prefix="export-reader") as pool:
        pending: deque[Future[_R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# --- SQL ----------------------------------------------------------------------------------

_AGENTS_QUERY = sa.select(AGENTS.c.id, AGENTS.c.hostname, AGENTS.c.agent_version)
_TIME_COLUMNS = ("occurred_at", "received_at")
_JSON_COLUMNS = ("system_info", "details")
# The flag column that says a nullable text column is NULL (SQLite only, see _events_query).
_NULL_FLAG = "{}__is_null"


def _events_query(
    dialect_name: str,
    *,
    filters: EventFilters,
    limit: int | None,
    extra: Iterable[sa.ColumnElement[bool]] = (),
) -> sa.Select[Any]:
    """Every events-frame column but the agent's two, values as stored, newest first.

    The agent's hostname and version are looked up in Arrow from one read of the agent
    table in the same snapshot: cheaper than a join per row on both backends.

    SQLite's driver guesses each column's type from its first batch, and fails when a
    column that was all NULL there holds text later. So each nullable text column is read
    as `coalesce(col, '')` plus a flag saying whether it was NULL.
    """
    c = EVENTS.c
    columns: list[sa.ColumnElement[Any]] = []
    for name in EVENT_COLUMNS:
        if name in ("hostname", "agent_version"):
            continue
        column = c.id if name == "event_pk" else c[name]
        if name in _JSON_COLUMNS:
            columns.append(sa.cast(column, sa.Text).label(name))
        elif dialect_name == "sqlite" and column.nullable and name not in _TIME_COLUMNS:
            columns.append(sa.func.coalesce(column, "").label(name))
            columns.append(column.is_(None).label(_NULL_FLAG.format(name)))
        else:
            columns.append(column.label(name))
    query = sa.select(*columns).where(*event_conditions(filters), *extra).order_by(*NEWEST_FIRST)
    return query if limit is None else query.limit(limit)


def _compiled(query: sa.Select[Any], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    """The SQL text of `query` for `dialect` and its parameters as the driver gets them.

    Parameters go through the column types' own bind processors, so they are what
    SQLAlchemy itself would send (UUID hex and timestamp text on SQLite, for instance).
    """
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    values: dict[str, Any] = {}
    for name, value in params.items():
        # An expanded IN list's values are named after their parameter: `status_1_2`.
        bind = compiled.binds.get(name)
        if bind is None:
            bind = compiled.binds[name.rsplit("_", 1)[0]]
        process = bind.type.bind_processor(dialect)
        values[name] = value if process is None else process(value)
    if compiled.positiontup is not None:
        # Positional placeholders (SQLite's `?`): keep the order they appear in.
        values = {name: values[name] for name in compiled.positiontup}
    return str(compiled), values


# --- drivers ------------------------------------------------------------------------------

Statement = tuple[str, list[Any] | None]


class _Driver:
    """What differs between the backends: connecting, the snapshot, SQL, raw values."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def connect(self) -> Any:
        raise NotImplementedError

    def statement(self, query: sa.Select[Any]) -> Statement:
        """The SQL and parameters the driver runs for `query`."""
        raise NotImplementedError

    def open_session(self, connections: list[Any]) -> _Session:
        """Start every connection's read transaction on one snapshot; read the agents."""
        raise NotImplementedError

    def batch_options(self, rows: int) -> dict[str, str]:
        return {}

    @contextlib.contextmanager
    def session(self, workers: int) -> Iterator[_Session]:
        connections: list[Any] = []
        try:
            for _ in range(workers):
                connections.append(self.connect())
            yield self.open_session(connections)
        finally:
            for connection in connections:
                with contextlib.suppress(Exception):
                    connection.rollback()
                connection.close()

    def text_or_null(self, raw: pa.RecordBatch, name: str) -> pa.Array:
        return raw.column(name)

    def timestamps(self, values: pa.Array) -> pa.Array:
        return values.cast(_UTC)

    def booleans(self, values: pa.Array) -> pa.Array:
        return values.cast(pa.bool_()).fill_null(False)

    def typed(self, raw: pa.RecordBatch, agents: _AgentLookup) -> pa.RecordBatch:
        """A raw batch of `_events_query` as a batch of EXPORT_SCHEMA."""
        event_id = _uuid_text(raw.column("event_id"))
        agent_id = _uuid_text(raw.column("agent_id"))
        # An inner join, like the reference query: an event whose agent is not there is
        # not exported (the foreign key makes that impossible within one snapshot).
        position = pc.index_in(agent_id, value_set=agents.ids)
        if position.null_count:
            keep = pc.is_valid(position)
            raw, event_id, agent_id, position = (
                raw.filter(keep),
                event_id.filter(keep),
                agent_id.filter(keep),
                position.filter(keep),
            )
        arrays: dict[str, pa.Array] = {
            "event_id": event_id,
            "agent_id": agent_id,
            "hostname": agents.hostnames.take(position),
            "agent_version": agents.versions.take(position),
        }
        for field in EXPORT_SCHEMA:
            name = field.name
            if name in arrays:
                continue
            values = self.text_or_null(raw, name)
            if pa.types.is_dictionary(field.type):
                arrays[name] = _categories(values, field.type, EVENT_COLUMNS[name])
            elif name in _TIME_COLUMNS:
                arrays[name] = self.timestamps(values)
            elif name == "error_truncated":
                arrays[name] = self.booleans(values)
            else:
                arrays[name] = values.cast(field.type)
        return pa.RecordBatch.from_arrays(
            [arrays[f.name] for f in EXPORT_SCHEMA], schema=EXPORT_SCHEMA
        )


@dataclass
class _Session:
    """Connections in one snapshot, lent to one slice read at a time."""

    driver: _Driver
    idle: queue.Queue[Any]
    agents: _AgentLookup
    # Conditions every read adds (SQLite: no event stored after the snapshot began).
    bounds: list[sa.ColumnElement[bool]]

    def read(
        self, bounds: _Slice, *, filters: EventFilters, limit: int | None, batch_rows: int
    ) -> list[pa.RecordBatch]:
        """One slice's events, newest first, typed, in batches of at most `batch_rows`."""
        query = _events_query(
            self.driver.engine.dialect.name,
            filters=filters,
            limit=limit,
            extra=[*self.bounds, *bounds.conditions()],
        )
        statement = self.driver.statement(query)
        connection = self.idle.get()
        try:
            with contextlib.closing(connection.cursor()) as cursor:
                cursor.adbc_statement.set_options(**self.driver.batch_options(batch_rows))
                cursor.execute(*statement)
                raw_batches = list(cursor.fetch_record_batch())
        finally:
            self.idle.put(connection)
        typed = []
        for raw in raw_batches:
            for start in range(0, raw.num_rows, batch_rows):
                batch = self.driver.typed(raw.slice(start, batch_rows), self.agents)
                if batch.num_rows:
                    typed.append(batch)
        return typed


def _execute(connection: Any, sql: str, params: list[Any] | None = None) -> list[Any]:
    with contextlib.closing(connection.cursor()) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def _read_agents(driver: _Driver, connection: Any) -> _AgentLookup:
    with contextlib.closing(connection.cursor()) as cursor:
        cursor.execute(*driver.statement(_AGENTS_QUERY))
        return _agent_lookup(cursor.fetch_record_batch())


class _SQLite(_Driver):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        path = _sqlite_path(engine.url)
        assert path is not None
        self.path = path

    def connect(self) -> Any:
        import adbc_driver_sqlite.dbapi

        connection = adbc_driver_sqlite.dbapi.connect(str(self.path))
        # As the project's engine does: wait for a checkpoint rather than fail at once.
        busy_ms = int(Settings().database_timeout_seconds * 1000)
        _execute(connection, f"PRAGMA busy_timeout = {busy_ms}")
        return connection

    def statement(self, query: sa.Select[Any]) -> Statement:
        sql, params = _compiled(query, self.engine.dialect)
        return sql, list(params.values()) or None

    def open_session(self, connections: list[Any]) -> _Session:
        # The DB-API turns autocommit off: each connection's first read starts a read
        # transaction that lasts until it closes. The first one's snapshot decides what
        # is exported; the others start later and must not see events stored meanwhile.
        first = connections[0]
        agents = _read_agents(self, first)
        newest = _execute(first, "SELECT max(id) FROM update_events")[0][0]
        bounds = [EVENTS.c.id <= newest] if newest is not None else [sa.false()]
        return _Session(self, _idle(connections), agents, bounds)

    def batch_options(self, rows: int) -> dict[str, str]:
        return {"adbc.sqlite.query.batch_rows": str(rows)}

    def text_or_null(self, raw: pa.RecordBatch, name: str) -> pa.Array:
        values = raw.column(name)
        flag = _NULL_FLAG.format(name)
        if flag not in raw.schema.names:
            return values
        is_null = pc.not_equal(raw.column(flag), 0)
        return pc.if_else(is_null, pa.scalar(None, values.type), values)

    def timestamps(self, values: pa.Array) -> pa.Array:
        if pa.types.is_timestamp(values.type):
            return values.cast(_UTC)
        try:
            # UTC text as SQLAlchemy writes it ("2026-11-27 08:00:00.000000"), parsed in C.
            return values.cast(pa.timestamp("us")).cast(_UTC)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Any other ISO 8601 shape: parsed as the reference does.
            parsed = pd.to_datetime(values.to_pandas(), utc=True, format="ISO8601")
            return pa.array(parsed.astype(UTC_DTYPE), type=_UTC)

    def booleans(self, values: pa.Array) -> pa.Array:
        return pc.not_equal(values.cast(pa.int64()), 0).fill_null(False)


class _Postgres(_Driver):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.uri = _libpq_uri(engine.url)

    def connect(self) -> Any:
        import adbc_driver_postgresql.dbapi

        connection = adbc_driver_postgresql.dbapi.connect(self.uri)
        # The DB-API turns autocommit off, so a transaction is open: make it a snapshot.
        _execute(connection, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return connection

    def statement(self, query: sa.Select[Any]) -> Statement:
        # The driver streams a query's rows (binary COPY) only when it has no parameters;
        # with them, libpq would hold the whole result in memory. So the values are
        # merged into the SQL by psycopg's client-side binding, which quotes them for the
        # server it is connected to (encoding, standard_conforming_strings).
        sql, params = _compiled(query, self.engine.dialect)
        with self.engine.connect() as connection:
            driver_connection = connection.connection.driver_connection
            assert isinstance(driver_connection, psycopg.Connection)
            merged = psycopg.ClientCursor(driver_connection).mogrify(sql, params)
        return merged, None

    def open_session(self, connections: list[Any]) -> _Session:
        # Every worker reads the first connection's snapshot, as pg_dump's jobs do.
        first, *others = connections
        snapshot = _execute(first, "SELECT pg_export_snapshot()")[0][0]
        for connection in others:
            _execute(connection, f"SET TRANSACTION SNAPSHOT '{_snapshot_id(snapshot)}'")
        return _Session(self, _idle(connections), _read_agents(self, first), [])

    def booleans(self, values: pa.Array) -> pa.Array:
        return values.fill_null(False)


def _idle(connections: list[Any]) -> queue.Queue[Any]:
    idle: queue.Queue[Any] = queue.Queue()
    for connection in connections:
        idle.put(connection)
    return idle


def _snapshot_id(text: str) -> str:
    # pg_export_snapshot() gives hex digits and dashes; checked, as it goes into the SQL.
    if not text or any(ch not in "0123456789ABCDEFabcdef-" for ch in text):
        raise ValueError(f"unexpected snapshot id {text!r}")
    return text


def _sqlite_path(url: sa.URL) -> Path | None:
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _libpq_uri(url: sa.URL) -> str:
    """The engine's URL as libpq reads it (`postgresql://user:pw@host/db?sslmode=...`)."""
    uri = url.set(drivername="postgresql")
    if "connect_timeout" not in uri.query:
        timeout = max(1, int(Settings().database_timeout_seconds))
        uri = uri.update_query_dict({"connect_timeout": str(timeout)})
    return uri.render_as_string(hide_password=False)


# --- columns ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AgentLookup:
    ids: pa.Array  # UUID text, as the events' agent_id column
    hostnames: pa.Array
    versions: pa.Array


def _agent_lookup(batches: Iterable[pa.RecordBatch]) -> _AgentLookup:
    collected = [batch for batch in batches if batch.num_rows]
    if not collected:
        empty = pa.array([], type=_STRING)
        return _AgentLookup(empty, empty, empty)
    table = pa.Table.from_batches(collected)
    return _AgentLookup(
        ids=_uuid_text(table.column("id").combine_chunks()),
        hostnames=table.column("hostname").combine_chunks().cast(_STRING),
        versions=table.column("agent_version").combine_chunks().cast(_STRING),
    )


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Where each of the 32 hex digits goes in the 36 characters of 8-4-4-4-12.
_DIGIT_AT = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_DASH = ord("-")


def _uuid_text(values: pa.Array) -> pa.Array:
    """UUIDs as the reference query gives them: 8-4-4-4-12 text."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return _hex_uuid_text(values)
    # PostgreSQL's uuid: 16 bytes each, written as `uuid::text` writes them (lower case).
    storage = values.storage if isinstance(values, pa.ExtensionArray) else values
    count = len(storage)
    raw = np.frombuffer(storage.buffers()[1], dtype=np.uint8)
    raw = raw[storage.offset * 16 : (storage.offset + count) * 16].reshape(count, 16)
    digits = np.empty((count, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    return _dashed(digits, validity=storage)


def _hex_uuid_text(values: pa.Array) -> pa.Array:
    # SQLite keeps 32 hex digits: dashes go where the reference query's substr() puts them.
    values = values.cast(_STRING)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)
    offsets = offsets[values.offset : values.offset + len(values) + 1]
    if len(values) and values.null_count == 0 and np.all(np.diff(offsets) == 32):
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
        digits = data[offsets[0] : offsets[-1]].reshape(len(values), 32)
        return _dashed(digits, validity=values)
    # Anything else (never written by this project): the reference's substr(), in Arrow.
    parts = [
        pc.utf8_slice_codeunits(values, start, start + length)
        for start, length in ((0, 8), (8, 4), (12, 4), (16, 4), (20, 12))
    ]
    return pc.binary_join_element_wise(*parts, pa.scalar("-", type=_STRING))


def _dashed(digits: np.ndarray[Any, Any], *, validity: pa.Array) -> pa.Array:
    count = len(digits)
    text = np.full((count, 36), _DASH, dtype=np.uint8)
    text[:, _DIGIT_AT] = digits
    offsets = np.arange(0, 36 * (count + 1), 36, dtype=np.int64)
    result = pa.LargeStringArray.from_buffers(
        count, pa.py_buffer(offsets), pa.py_buffer(text.tobytes())
    )
    if validity.null_count:
        result = pc.if_else(validity.is_valid(), result, pa.scalar(None, _STRING))
    return result


def _categories(values: pa.Array, arrow_type: pa.DataType, dtype: Any) -> pa.Array:
    # Codes looked up in C; a value outside the vocabulary becomes missing, as in the frame.
    categories = pa.array(list(dtype.categories), type=arrow_type.value_type)
    codes = pc.index_in(values.cast(arrow_type.value_type), value_set=categories)
    return pa.DictionaryArray.from_arrays(
        codes.cast(arrow_type.index_type), categories, ordered=arrow_type.ordered
    )
