"""The one read layer: every number the console shows and every frame an analyst loads.

The console, the analyst API and the export all call these functions, so a figure on
screen, in a notebook and in an export file agree by construction. Filtering, ordering,
paging and aggregation happen in SQL on the existing indexes; pandas only types a result
that SQL has already bounded. Nothing here writes.

Sources
    Every function takes `source`: an `Engine`, or a database URL string. Engines made
    from URLs are cached (a few, least recently used first out), so calling with a URL in
    a loop does not open a pool per call; `dispose_cached_engines()` closes them.

Filters
    `EventFilters` holds the event filters (time range, agents, hostname search,
    category, event types, statuses, severities, agent version, migration from/to,
    fingerprint, error text). Functions that read events accept `filters=EventFilters(...)`
    or the same fields as keyword arguments (`status="failed"`, `since="24h"`), or both
    (keywords win). `agent_version`, `migration_from` and `migration_to` match exactly,
    or as a case-insensitive pattern when they contain `*` (`0.1.*`); `host` and
    `error_text` are case-insensitive substrings. `since` is inclusive, `until` exclusive.

Events frame (`events_frame`, `agent_events_frame`, `iter_events_frames`, the export),
newest first (`occurred_at` desc, then `event_pk` desc):

    column          dtype                      meaning
    event_pk        int64                      the row's key in `update_events` (detail, keyset)
    event_id        string                     the agent's UUID for the event
    agent_id        string                     the reporting agent's UUID
    hostname        string                     the agent's host name (current)
    agent_version   string                     the agent's version (current, not at event time)
    occurred_at     datetime64[us, UTC]        when it happened, by the agent's clock
    received_at     datetime64[us, UTC]        when the server stored it
    category        category (Category)        migration | update
    event_type      category (EventType)       see models.vocabulary
    phase           category (Phase)           detection | execution | <NA> for updates
    status          category (Status)          success | failed | warning
    severity        category (Severity)        info < warning < error (ordered)
    error_message   string                     full message, <NA> when none
    error_truncated bool                       the agent's message was cut at 64 KiB
    fingerprint     string                     error group id, <NA> when no error
    migration_from  string                     e.g. "0.1.18 (config v0, /etc/aggregator)"
    migration_to    string
    system_info     object (dict) | string     dict, or JSON text with json_as="text"
    details         object (dict) | string     steps, errno, traceback...

Categorical columns always carry every vocabulary value as a category, so dtypes never
depend on the data. Strings are pandas' `string[pyarrow]`; missing values are <NA>/NaT.
The other frames document their columns in their docstrings.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar
from uuid import UUID

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles

from models.database import create_db_engine, normalise_url
from models.fingerprint import error_signature
from models.settings import Settings
from models.tables import AGENT_TABLE as AGENTS
from models.tables import EVENT_TABLE as EVENTS
from models.vocabulary import (
    FAILURE_EVENT_TYPES,
    Category,
    EventType,
    MigrationState,
    Phase,
    Severity,
    Status,
    kind_of,
    severity_for,
)

Source: TypeAlias = Engine | str
JsonAs: TypeAlias = Literal["dict", "text"]
Bucket: TypeAlias = Literal["hour", "day"]
BreakdownBy: TypeAlias = Literal["os", "os_type", "agent_version", "os_architecture"]

# The console's ceiling for one table; analysts may ask for more through the export.
MAX_PAGE_ROWS = 10_000
# An agent is stale when its last check-in is older than this many check-in intervals.
STALE_AFTER_INTERVALS = 3
# Free-text filters longer than this are not searches but accidents (or attacks on LIKE).
MAX_FILTER_TEXT = 255

# --- dtypes -----------------------------------------------------------------------------

STRING_DTYPE = pd.StringDtype("pyarrow")
UTC_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")


def _categorical(enum: type[StrEnum], *, ordered: bool = False) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([member.value for member in enum], ordered=ordered)


CATEGORY_DTYPE = _categorical(Category)
EVENT_TYPE_DTYPE = _categorical(EventType)
PHASE_DTYPE = _categorical(Phase)
STATUS_DTYPE = _categorical(Status)
SEVERITY_DTYPE = pd.CategoricalDtype(
    [Severity.INFO.value, Severity.WARNING.value, Severity.ERROR.value], ordered=True
)
MIGRATION_STATE_DTYPE = _categorical(MigrationState)

# A column kind is how raw database values become a typed pandas column.
_Kind: TypeAlias = str | pd.CategoricalDtype

EVENT_COLUMNS: dict[str, _Kind] = {
    "event_pk": "int",
    "event_id": "string",
    "agent_id": "string",
    "hostname": "string",
    "agent_version": "string",
    "occurred_at": "timestamp",
    "received_at": "timestamp",
    "category": CATEGORY_DTYPE,
    "event_type": EVENT_TYPE_DTYPE,
    "phase": PHASE_DTYPE,
    "status": STATUS_DTYPE,
    "severity": SEVERITY_DTYPE,
    "error_message": "string",
    "error_truncated": "bool",
    "fingerprint": "string",
    "migration_from": "string",
    "migration_to": "string",
    "system_info": "json",
    "details": "json",
}
JSON_COLUMNS: tuple[str, ...] = tuple(n for n, k in EVENT_COLUMNS.items() if k == "json")

FLEET_COLUMNS: dict[str, _Kind] = {
    "agent_id": "string",
    "hostname": "string",
    "os_type": "string",
    "os_version": "string",
    "os_architecture": "string",
    "agent_version": "string",
    "revoked": "bool",
    "migration_state": MIGRATION_STATE_DTYPE,
    "migration_state_at": "timestamp",
    "last_migration_event_type": EVENT_TYPE_DTYPE,
    "ever_migrated": "bool",
    "last_seen_at": "timestamp",
    "stale": "bool",
    "last_error_message": "string",
    "last_fingerprint": "string",
    "last_migration_from": "string",
    "last_migration_to": "string",
    "created_at": "timestamp",
}

# --- sources ----------------------------------------------------------------------------

_ENGINE_CACHE_SIZE = 4
_engines: OrderedDict[str, Engine] = OrderedDict()
_engines_lock = threading.Lock()


def engine_for(source: Source) -> Engine:
    """The engine for a source: itself, or a cached engine for a URL.

    The cache is small and evicts (and disposes) the least recently used engine, so a
    process that visits many databases, such as a test run, does not pile up pools.
    """
    if isinstance(source, Engine):
        return source
    if not isinstance(source, str):
        raise TypeError(f"source must be an Engine or a database URL, not {type(source).__name__}")
    url = normalise_url(source)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is not None:
            _engines.move_to_end(url)
            return engine
        engine = create_db_engine(url)
        _engines[url] = engine
        while len(_engines) > _ENGINE_CACHE_SIZE:
            _, evicted = _engines.popitem(last=False)
            evicted.dispose()
        return engine


def dispose_cached_engines() -> None:
    """Close every engine made from a URL (tests, or a notebook switching databases)."""
    with _engines_lock:
        while _engines:
            _, engine = _engines.popitem()
            engine.dispose()


# --- filters ----------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (`2026-11-27`, `...T08:00Z`) or an age (`24h`).

    An age (`90s`, `30m`, `24h`, `7d`, `2w`) means that long before `now`. A date or time
    without an offset is taken as UTC. Raises ValueError with a message fit for a user.
    """
    match = _DURATION.match(text)
    if match:
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    cleaned = text.strip()
    if cleaned.endswith(("z", "Z")):
        cleaned = cleaned[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use ISO 8601 (2026-11-27 or "
            "2026-11-27T08:00:00Z) or an age such as 30m, 24h or 7d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _aware(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_time(value)
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{name} is a naive datetime: give it a time zone (datetime.UTC)")
    return value.astimezone(UTC)


def _many(value: Any) -> tuple[Any, ...]:
    # A lone string is one value, not a sequence of characters.
    if value is None:
        return ()
    if isinstance(value, str | UUID):
        return (value,)
    return tuple(value)


_E = TypeVar("_E", bound=StrEnum)


def _enums(enum: type[_E], values: Any, name: str) -> tuple[_E, ...]:
    try:
        members = {enum(v) for v in _many(values)}
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{name}: unknown value in {values!r}; allowed: {allowed}") from None
    order = list(enum)
    return tuple(sorted(members, key=order.index))


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    value = value.strip()
    if len(value) > MAX_FILTER_TEXT:
        raise ValueError(f"{name} is longer than {MAX_FILTER_TEXT} characters")
    return value or None


@dataclass(frozen=True, slots=True)
class EventFilters:
    """Which events to read; empty fields do not filter. Hashable, so usable as a cache key.

    The constructor normalises what it is given: strings become enums and UUIDs, a single
    value becomes a one-item tuple, tuples are deduplicated and sorted (equal filters
    compare and hash equal), text is stripped. Anything it cannot use is a ValueError.
    """

    since: datetime | None = None
    until: datetime | None = None
    agent_ids: tuple[UUID, ...] = ()
    host: str | None = None
    category: Category | None = None
    event_types: tuple[EventType, ...] = ()
    statuses: tuple[Status, ...] = ()
    severities: tuple[Severity, ...] = ()
    agent_version: str | None = None
    migration_from: str | None = None
    migration_to: str | None = None
    fingerprint: str | None = None
    error_text: str | None = None

    def __post_init__(self) -> None:
        set_field: Callable[[str, Any], None] = lambda name, value: object.__setattr__(  # noqa: E731
            self, name, value
        )
        set_field("since", _aware(self.since, "since"))
        set_field("until", _aware(self.until, "until"))
        try:
            agent_ids = {v if isinstance(v, UUID) else UUID(str(v)) for v in _many(self.agent_ids)}
        except ValueError:
            raise ValueError(f"agent_ids: not a UUID in {self.agent_ids!r}") from None
        set_field("agent_ids", tuple(sorted(agent_ids)))
        category = _enums(Category, self.category, "category")
        if len(category) > 1:
            raise ValueError("category: give one category, or none for both")
        set_field("category", category[0] if category else None)
        set_field("event_types", _enums(EventType, self.event_types, "event_types"))
        set_field("statuses", _enums(Status, self.statuses, "statuses"))
        set_field("severities", _enums(Severity, self.severities, "severities"))
        for name in _TEXT_FIELDS:
            set_field(name, _text(getattr(self, name), name))

    def is_empty(self) -> bool:
        return self == EventFilters()

    def replace(self, **changes: Any) -> EventFilters:
        """A copy with some fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_query_params(self) -> dict[str, str]:
        """URL query parameters (only the fields set); `from_query_params` reads them back.

        Several values go in one parameter, comma-separated: Streamlit's `st.query_params`
        keeps one value per key, and no enum value or UUID contains a comma.
        """
        params: dict[str, str] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None or value == ():
                continue
            if isinstance(value, datetime):
                params[item.name] = value.isoformat().replace("+00:00", "Z")
            elif isinstance(value, tuple):
                params[item.name] = ",".join(str(v) for v in value)
            else:
                params[item.name] = str(value)
        return params

    @classmethod
    def from_query_params(cls, params: Mapping[str, Any]) -> EventFilters:
        """Filters from URL query parameters, keeping what is valid and dropping the rest.

        A URL is user input: an unknown key, a bad date, an unknown status or a malformed
        UUID is ignored rather than an error, so a mangled link still opens the page.
        Values may be strings (comma-separated lists allowed) or lists of strings.
        """
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = params.get(item.name)
            if raw is None:
                continue
            texts = [raw] if isinstance(raw, str) else [str(v) for v in _iterable(raw)]
            if item.name in _TUPLE_FIELDS:
                parts = [p.strip() for t in texts for p in t.split(",") if p.strip()]
                kept = [p for p in parts if _valid_one(item.name, p)]
                if kept:
                    values[item.name] = kept
            elif texts and _valid_one(item.name, texts[-1]):
                values[item.name] = texts[-1]
        return cls(**values)


_TEXT_FIELDS = (
    "host",
    "agent_version",
    "migration_from",
    "migration_to",
    "fingerprint",
    "error_text",
)
_TUPLE_FIELDS = ("agent_ids", "event_types", "statuses", "severities")
_FILTER_FIELDS = frozenset(f.name for f in dataclasses.fields(EventFilters))


def _iterable(value: Any) -> Iterable[Any]:
    return value if isinstance(value, Iterable) else [value]


def _valid_one(name: str, value: str) -> bool:
    try:
        one: dict[str, Any] = {name: value}
        EventFilters(**one)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


# Singular spellings read naturally for one value: events_frame(url, status="failed").
FILTER_ALIASES = {
    "agent_id": "agent_ids",
    "event_type": "event_types",
    "status": "statuses",
    "severity": "severities",
}


def make_filters(filters: EventFilters | None = None, **values: Any) -> EventFilters:
    """`filters` with keyword filters applied on top; an unknown keyword is a TypeError.

    Singular aliases (`status`, `severity`, `event_type`, `agent_id`) are accepted.
    """
    values = {FILTER_ALIASES.get(name, name): value for name, value in values.items()}
    unknown = sorted(set(values) - _FILTER_FIELDS)
    if unknown:
        raise TypeError(
            f"unknown filter {', '.join(unknown)}; known: {', '.join(sorted(_FILTER_FIELDS))}"
        )
    base = filters or EventFilters()
    return base.replace(**values) if values else base


# --- SQL building blocks ----------------------------------------------------------------

_LIKE_ESCAPE = "/"


def _like_literal(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _contains(column: Any, text: str) -> sa.ColumnElement[bool]:
    # ILIKE on PostgreSQL (a pg_trgm index can serve it), lower() LIKE lower() on SQLite.
    return column.ilike(f"%{_like_literal(text)}%", escape=_LIKE_ESCAPE)  # type: ignore[no-any-return]


class _ErrorTextContains(sa.ColumnElement[bool]):
    """`error_message` contains the text (case-insensitive), worded for each database.

    PostgreSQL: `error_message ILIKE '%text%'`, which its trigram index serves. SQLite:
    `id IN (SELECT id ... WHERE error_message IS NOT NULL AND <the same test>)`, a scan of
    the partial index of messages (migration 0004) instead of the table; written inline,
    the test made SQLite walk another index and read each failure's row.
    """

    type = sa.Boolean()
    # A condition in itself, not a value to compare with true.
    _is_implicitly_boolean = True
    # Each database compiles a different statement: never share a cached one.
    inherit_cache = False

    def __init__(self, text: str) -> None:
        self.text = text


@compiles(_ErrorTextContains)
def _error_text_anywhere(element: _ErrorTextContains, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(_contains(EVENTS.c.error_message, element.text), **kw))


@compiles(_ErrorTextContains, "sqlite")
def _error_text_on_sqlite(element: _ErrorTextContains, compiler: Any, **kw: Any) -> str:
    messages = sa.alias(EVENTS, "with_message")
    scan = sa.select(messages.c.id).where(
        messages.c.error_message.is_not(None), _contains(messages.c.error_message, element.text)
    )
    return str(compiler.process(EVENTS.c.id.in_(scan), **kw))


def _matches(column: Any, pattern: str) -> sa.ColumnElement[bool]:
    """Exact match, or a case-insensitive `*` wildcard pattern when the value has a `*`."""
    if "*" not in pattern:
        return column == pattern  # type: ignore[no-any-return]
    like = "%".join(_like_literal(part) for part in pattern.split("*"))
    return column.ilike(like, escape=_LIKE_ESCAPE)  # type: ignore[no-any-return]


def _agent_subquery(*conditions: sa.ColumnElement[bool]) -> sa.Select[Any]:
    return sa.select(AGENTS.c.id).where(*conditions)


def event_conditions(filters: EventFilters) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions on `update_events` for filters (no join needed).

    Agent-side filters (host, agent version) become `agent_id IN (SELECT ...)`, which both
    planners turn into a semi-join, so aggregates need not join the agent table.
    """
    c = EVENTS.c
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.since is not None:
        conditions.append(c.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(c.occurred_at < filters.until)
    if filters.agent_ids:
        conditions.append(c.agent_id.in_(filters.agent_ids))
    if filters.category is not None and filters.agent_ids and not filters.event_types:
        # The same rows, named by event type: SQLite, which has no statistics, would
        # otherwise walk the (category, occurred_at) index through half the table instead
        # of the agent's own (agent_id, occurred_at) entries.
        conditions.append(c.event_type.in_(_types_of(filters.category)))
    elif filters.category is not None:
        conditions.append(c.category == filters.category)
    # Category, status and severity follow from the event type (models.vocabulary), so
    # naming the event types a status or severity filter allows, and the statuses those
    # types have, selects the same rows while letting the (event_type, status,
    # occurred_at) index find them, newest first, instead of a scan of the table.
    event_types = filters.event_types
    if not event_types and (filters.statuses or filters.severities):
        event_types = tuple(t for t in EventType if _vocabulary_allows(filters, t))
        if not event_types:
            conditions.append(sa.false())
    if event_types:
        conditions.append(c.event_type.in_(event_types))
    statuses = filters.statuses or tuple(sorted({kind_of(t).status for t in event_types}))
    if statuses:
        conditions.append(c.status.in_(statuses))
    if filters.severities:
        conditions.append(c.severity.in_(filters.severities))
    if filters.fingerprint is not None:
        conditions.append(c.fingerprint == filters.fingerprint)
    if filters.migration_from is not None:
        conditions.append(_matches(c.migration_from, filters.migration_from))
    if filters.migration_to is not None:
        conditions.append(_matches(c.migration_to, filters.migration_to))
    if filters.error_text is not None:
        conditions.append(_ErrorTextContains(filters.error_text))
    agent_conditions = []
    if filters.host is not None:
        agent_conditions.append(_contains(AGENTS.c.hostname, filters.host))
    if filters.agent_version is not None:
        agent_conditions.append(_matches(AGENTS.c.agent_version, filters.agent_version))
    if agent_conditions:
        conditions.append(c.agent_id.in_(_agent_subquery(*agent_conditions)))
    return conditions


def _types_of(category: Category) -> tuple[EventType, ...]:
    return tuple(t for t in EventType if kind_of(t).category is category)


def _vocabulary_allows(filters: EventFilters, event_type: EventType) -> bool:
    kind = kind_of(event_type)
    return (
        (filters.category is None or kind.category is filters.category)
        and (not filters.statuses or kind.status in filters.statuses)
        and (not filters.severities or severity_for(kind.status) in filters.severities)
    )


def time_bucket(column: Any, *, bucket: Bucket, dialect_name: str) -> sa.ColumnElement[Any]:
    """The start of the UTC hour or day a timestamp falls in, as SQL on either backend.

    SQLite stores UTC text, which strftime reads; PostgreSQL truncates the timestamptz
    converted to UTC, so the buckets do not follow the session's time zone. The unit and
    format are inlined (not bound) so the expression in SELECT and GROUP BY is identical.
    """
    if bucket not in ("hour", "day"):
        raise ValueError(f"bucket must be 'hour' or 'day', not {bucket!r}")
    if dialect_name == "sqlite":
        fmt = "%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00"
        return sa.func.strftime(sa.literal_column(f"'{fmt}'"), column, type_=sa.String)
    return sa.func.date_trunc(
        sa.literal_column(f"'{bucket}'"),
        sa.func.timezone(sa.literal_column("'UTC'"), column),
        type_=sa.DateTime,
    )


def _raw_uuid(column: Any, dialect_name: str) -> sa.ColumnElement[str]:
    # SQLite keeps UUIDs as 32 hex digits; format them in SQL rather than per row in Python.
    if dialect_name == "sqlite":
        raw = sa.type_coerce(column, sa.String)
        parts = [sa.func.substr(raw, start, length) for start, length in _UUID_PARTS]
        text: sa.ColumnElement[str] = parts[0]
        for part in parts[1:]:
            text = text + "-" + part
        return text
    return sa.cast(column, sa.Text)


_UUID_PARTS = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))


def _raw_time(column: Any, dialect_name: str) -> sa.ColumnElement[Any]:
    # Skip the per-value TypeDecorator: the frame converts whole columns at once.
    if dialect_name == "sqlite":
        return sa.type_coerce(column, sa.String)
    return sa.type_coerce(column, sa.DateTime(timezone=True))


def _raw_text(column: Any) -> sa.ColumnElement[str]:
    return sa.type_coerce(column, sa.String)


def _event_select(dialect_name: str, *, rows: sa.Subquery | None = None) -> sa.Select[Any]:
    """SELECT of every events-frame column, joined to the agent, values left raw.

    With `rows` (a subquery of event ids, column `pk`), only those events are read.
    """
    c = EVENTS.c
    columns = [
        c.id.label("event_pk"),
        _raw_uuid(c.event_id, dialect_name).label("event_id"),
        _raw_uuid(c.agent_id, dialect_name).label("agent_id"),
        AGENTS.c.hostname.label("hostname"),
        AGENTS.c.agent_version.label("agent_version"),
        _raw_time(c.occurred_at, dialect_name).label("occurred_at"),
        _raw_time(c.received_at, dialect_name).label("received_at"),
        _raw_text(c.category).label("category"),
        _raw_text(c.event_type).label("event_type"),
        _raw_text(c.phase).label("phase"),
        _raw_text(c.status).label("status"),
        _raw_text(c.severity).label("severity"),
        c.error_message.label("error_message"),
        c.error_truncated.label("error_truncated"),
        c.fingerprint.label("fingerprint"),
        c.migration_from.label("migration_from"),
        c.migration_to.label("migration_to"),
        # JSON as text: no per-row decode when the caller wants text (the export).
        sa.cast(c.system_info, sa.Text).label("system_info"),
        sa.cast(c.details, sa.Text).label("details"),
    ]
    assert [col.name for col in columns] == list(EVENT_COLUMNS)
    source: sa.FromClause = EVENTS
    if rows is not None:
        source = rows.join(EVENTS, EVENTS.c.id == rows.c.pk)
    return sa.select(*columns).select_from(source.join(AGENTS, AGENTS.c.id == c.agent_id))


NEWEST_FIRST = (EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc())


class EventKey(NamedTuple):
    """Where a newest-first page ended: pass it as `after` to get the next page."""

    occurred_at: datetime
    event_pk: int


def _after(key: EventKey) -> sa.ColumnElement[bool]:
    # Written so that the leading `occurred_at <=` can use the occurred_at indexes.
    c = EVENTS.c
    return sa.and_(
        c.occurred_at <= key.occurred_at,
        sa.or_(c.occurred_at < key.occurred_at, c.id < key.event_pk),
    )


def next_page_key(frame: pd.DataFrame) -> EventKey | None:
    """The key after the last row of a newest-first events frame (None when empty)."""
    if frame.empty:
        return None
    last = frame.iloc[-1]
    return EventKey(last["occurred_at"].to_pydatetime(), int(last["event_pk"]))


# --- typing raw rows into frames ---------------------------------------------------------


def _timestamps(values: Sequence[Any]) -> Any:
    first = next((v for v in values if v is not None), None)
    if isinstance(first, str):
        # SQLite's UTC text: pandas parses ISO 8601 in C.
        parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
        return parsed.astype(UTC_DTYPE).array
    # Driver datetimes (any tzinfo): pyarrow converts them to UTC instants in C, where
    # pandas takes a slow per-object path for zoneinfo time zones.
    instants = pa.array(values, type=pa.timestamp("us", tz="UTC"), from_pandas=True)
    return pd.array(instants.to_pandas(), dtype=UTC_DTYPE)


def _strings(values: Sequence[Any]) -> Any:
    # Through pyarrow: about ten times faster than pd.array on a list of str.
    return pd.array(pa.array(values, type=pa.large_string()), dtype=STRING_DTYPE)


def _categories(values: Sequence[Any], dtype: pd.CategoricalDtype) -> Any:
    # Codes looked up in C by pyarrow; a value outside the vocabulary (written by a newer
    # server) becomes missing rather than an error.
    categories = pa.array(list(dtype.categories), type=pa.string())
    codes = pc.index_in(pa.array(values, type=pa.string()), value_set=categories)
    return pd.Categorical.from_codes(
        codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int16), dtype=dtype
    )


def _json_values(values: Sequence[Any], json_as: JsonAs) -> Any:
    if json_as == "text":
        return _strings([v if v is None or isinstance(v, str) else json.dumps(v) for v in values])
    decoded = np.empty(len(values), dtype=object)
    decoded[:] = [json.loads(v) if isinstance(v, str) else v for v in values]
    return decoded


def _column(values: Sequence[Any], kind: _Kind, json_as: JsonAs) -> Any:
    if isinstance(kind, pd.CategoricalDtype):
        return _categories(values, kind)
    if kind == "int":
        return np.asarray(values, dtype=np.int64)
    if kind == "float":
        return np.asarray(values, dtype=np.float64)
    if kind == "bool":
        return np.asarray([bool(v) for v in values], dtype=bool)
    if kind == "string":
        return _strings(values)
    if kind == "timestamp":
        return _timestamps(values)
    if kind == "json":
        return _json_values(values, json_as)
    raise AssertionError(f"unknown column kind {kind!r}")


def _typed_frame(
    rows: Sequence[Sequence[Any]], kinds: Mapping[str, _Kind], *, json_as: JsonAs = "dict"
) -> pd.DataFrame:
    """A frame with one column per kind, converted a whole column at a time."""
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * len(kinds)
    data = {
        name: _column(values, kind, json_as)
        for (name, kind), values in zip(kinds.items(), columns, strict=True)
    }
    return pd.DataFrame(data, columns=list(kinds))


def empty_events_frame(*, json_as: JsonAs = "dict") -> pd.DataFrame:
    """An events frame with no rows: the columns and dtypes every events frame has."""
    return _typed_frame([], EVENT_COLUMNS, json_as=json_as)


def _python_value(value: Any) -> Any:
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _row_dict(frame: pd.DataFrame) -> dict[str, Any]:
    return {name: _python_value(value) for name, value in frame.iloc[0].items()}


# --- events -----------------------------------------------------------------------------


def _check_paging(limit: int | None, offset: int) -> None:
    if limit is not None and limit < 0:
        raise ValueError("limit must be zero or more")
    if offset < 0:
        raise ValueError("offset must be zero or more")


def _read_events(
    connection: Connection,
    *,
    conditions: Sequence[sa.ColumnElement[bool]],
    limit: int | None,
    offset: int = 0,
    json_as: JsonAs,
) -> pd.DataFrame:
    dialect = connection.dialect.name
    # SQLite walks the occurred_at index (which ends in the rowid, the tiebreak) newest
    # first and stops at the limit; an offset or PostgreSQL's planner can instead sort.
    if (limit is None or dialect == "sqlite") and not offset:
        query = _event_select(dialect).where(*conditions).order_by(*NEWEST_FIRST)
        if limit is not None:
            query = query.limit(limit)
    else:
        # Page on the narrow key first, then fetch the wide rows of that page only: the
        # sort (or index walk) never carries the JSON and text columns, whatever the plan.
        page = sa.select(EVENTS.c.id.label("pk")).where(*conditions).order_by(*NEWEST_FIRST)
        if limit is not None:
            page = page.limit(limit)
        if offset:
            page = page.offset(offset)
        query = _event_select(dialect, rows=page.subquery("page")).order_by(*NEWEST_FIRST)
    rows = connection.execute(query).all()
    return _typed_frame(rows, EVENT_COLUMNS, json_as=json_as)


def events_frame(
    source: Source,
    *,
    filters: EventFilters | None = None,
    limit: int | None = None,
    offset: int = 0,
    after: EventKey | None = None,
    json_as: JsonAs = "dict",
    **filter_values: Any,
) -> pd.DataFrame:
    """Events matching the filters, newest first, typed as in the module docstring.

    Paging happens in SQL: `limit`/`offset`, or keyset paging with `after` (the
    `next_page_key` of the previous page), which stays fast deep into a large table.
    `limit=None` reads every matching event: fine for an analyst, but a page should never
    ask for more than MAX_PAGE_ROWS; use `iter_events_frames` or the export for bulk reads.
    """
    _check_paging(limit, offset)
    chosen = make_filters(filters, **filter_values)
    conditions = event_conditions(chosen)
    if after is not None:
        conditions.append(_after(after))
    with engine_for(source).connect() as connection:
        return _read_events(
            connection, conditions=conditions, limit=limit, offset=offset, json_as=json_as
        )


def count_events(
    source: Source, *, filters: EventFilters | None = None, **filter_values: Any
) -> int:
    """How many events match the filters (the total behind a paged table)."""
    conditions = event_conditions(make_filters(filters, **filter_values))
    query = sa.select(sa.func.count()).select_from(EVENTS).where(*conditions)
    with engine_for(source).connect() as connection:
        return int(connection.execute(query).scalar_one())


def iter_events_frames(
    source: Source,
    *,
    filters: EventFilters | None = None,
    chunk_size: int = 50_000,
    limit: int | None = None,
    json_as: JsonAs = "dict",
    **filter_values: Any,
) -> Iterator[pd.DataFrame]:
    """The same rows as `events_frame`, in order, as frames of at most `chunk_size` rows.

    Each chunk is its own keyset query (LIMIT chunk_size), so memory is bounded by the
    chunk whatever the driver buffers; all chunks are read in one transaction (REPEATABLE
    READ, read only, on PostgreSQL; SQLite's read transaction is a snapshot too), so
    events stored meanwhile neither appear halfway nor shift the pages.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    _check_paging(limit, 0)
    conditions = event_conditions(make_filters(filters, **filter_values))
    engine = engine_for(source)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        with connection.begin():
            remaining = limit
            key: EventKey | None = None
            while remaining is None or remaining > 0:
                size = chunk_size if remaining is None else min(chunk_size, remaining)
                page_conditions = [*conditions, _after(key)] if key else conditions
                frame = _read_events(
                    connection, conditions=page_conditions, limit=size, json_as=json_as
                )
                if frame.empty:
                    return
                yield frame
                if len(frame) < size:
                    return
                if remaining is not None:
                    remaining -= len(frame)
                key = next_page_key(frame)


def event_detail(source: Source, event_pk: int) -> dict[str, Any] | None:
    """One event with every column (plain Python values: aware datetimes, dicts, None)."""
    with engine_for(source).connect() as connection:
        frame = _read_events(
            connection, conditions=[EVENTS.c.id == int(event_pk)], limit=1, json_as="dict"
        )
    return None if frame.empty else _row_dict(frame)


def agent_events_frame(
    source: Source,
    agent_id: UUID | str,
    *,
    migration_only: bool = False,
    limit: int | None = 500,
    after: EventKey | None = None,
    filters: EventFilters | None = None,
) -> pd.DataFrame:
    """One agent's history, newest first: migration and update events, or migration only."""
    chosen = make_filters(filters, agent_ids=(agent_id,))
    if migration_only:
        chosen = chosen.replace(category=Category.MIGRATION)
    return events_frame(source, filters=chosen, limit=limit, after=after)


# --- fleet ------------------------------------------------------------------------------


def _stale_cutoff(now: datetime | None) -> datetime:
    moment = _aware(now, "now") or datetime.now(UTC)
    interval = Settings().check_in_interval_seconds
    return moment - timedelta(seconds=STALE_AFTER_INTERVALS * interval)


def _stale(cutoff: datetime) -> sa.ColumnElement[bool]:
    # Never checked in counts as stale: "silent" is not success.
    return sa.or_(AGENTS.c.last_seen_at.is_(None), AGENTS.c.last_seen_at < cutoff)


def _fleet_conditions(
    *,
    cutoff: datetime,
    include_revoked: bool,
    states: Any = (),
    stale: bool | None = None,
    host: str | None = None,
) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if not include_revoked:
        conditions.append(AGENTS.c.revoked.is_(False))
    chosen_states = _enums(MigrationState, states, "states")
    if chosen_states:
        conditions.append(AGENTS.c.migration_state.in_(chosen_states))
    if stale is not None:
        conditions.append(_stale(cutoff) if stale else sa.not_(_stale(cutoff)))
    text = _text(host, "host")
    if text is not None:
        conditions.append(_contains(AGENTS.c.hostname, text))
    return conditions


def _read_fleet(
    connection: Connection,
    *,
    cutoff: datetime,
    conditions: Sequence[sa.ColumnElement[bool]],
    limit: int | None = None,
    offset: int = 0,
) -> pd.DataFrame:
    dialect = connection.dialect.name
    a = AGENTS.c
    columns = [
        _raw_uuid(a.id, dialect).label("agent_id"),
        a.hostname,
        a.os_type,
        a.os_version,
        a.os_architecture,
        a.agent_version,
        a.revoked,
        _raw_text(a.migration_state).label("migration_state"),
        _raw_time(a.migration_state_at, dialect).label("migration_state_at"),
        _raw_text(a.last_migration_event_type).label("last_migration_event_type"),
        a.ever_migrated,
        _raw_time(a.last_seen_at, dialect).label("last_seen_at"),
        _stale(cutoff).label("stale"),
        a.last_error_message,
        a.last_fingerprint,
        a.last_migration_from,
        a.last_migration_to,
        _raw_time(a.created_at, dialect).label("created_at"),
    ]
    query = sa.select(*columns).where(*conditions).order_by(a.hostname, a.id)
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    return _typed_frame(connection.execute(query).all(), FLEET_COLUMNS)


def fleet_status_frame(
    source: Source,
    *,
    now: datetime | None = None,
    include_revoked: bool = False,
    states: Iterable[MigrationState | str] = (),
    stale: bool | None = None,
    host: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> pd.DataFrame:
    """One row per agent from its migration summary, ordered by hostname.

    Columns: agent_id, hostname, os_type, os_version, os_architecture, agent_version
    (strings); revoked (bool); migration_state (category, every MigrationState);
    migration_state_at (UTC); last_migration_event_type (category); ever_migrated (bool);
    last_seen_at (UTC, the last check-in); stale (bool: no check-in for three check-in
    intervals, or never); last_error_message, last_fingerprint, last_migration_from,
    last_migration_to (strings); created_at (UTC).

    Revoked agents are left out unless `include_revoked`: a decommissioned host would
    otherwise stay "stale" and "failed" forever. `states`, `stale` and `host` (substring)
    narrow the list; `limit`/`offset` page it in SQL (`count_agents` gives the total).
    """
    _check_paging(limit, offset)
    cutoff = _stale_cutoff(now)
    conditions = _fleet_conditions(
        cutoff=cutoff, include_revoked=include_revoked, states=states, stale=stale, host=host
    )
    with engine_for(source).connect() as connection:
        return _read_fleet(
            connection, cutoff=cutoff, conditions=conditions, limit=limit, offset=offset
        )


def count_agents(
    source: Source,
    *,
    now: datetime | None = None,
    include_revoked: bool = False,
    states: Iterable[MigrationState | str] = (),
    stale: bool | None = None,
    host: str | None = None,
) -> int:
    """How many rows `fleet_status_frame` would return with the same arguments."""
    conditions = _fleet_conditions(
        cutoff=_stale_cutoff(now),
        include_revoked=include_revoked,
        states=states,
        stale=stale,
        host=host,
    )
    query = sa.select(sa.func.count()).select_from(AGENTS).where(*conditions)
    with engine_for(source).connect() as connection:
        return int(connection.execute(query).scalar_one())


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """The fleet's KPIs: agents per migration state, and how many are stale."""

    agents: int
    stale: int
    by_state: dict[MigrationState, int] = field(default_factory=dict)
    stale_by_state: dict[MigrationState, int] = field(default_factory=dict)

    @property
    def reported(self) -> int:
        """Agents that sent at least one migration event."""
        return self.agents - self.by_state.get(MigrationState.NEVER_REPORTED, 0)

    def share(self, state: MigrationState) -> float:
        """The fraction of the fleet in a state (0.0 for an empty fleet)."""
        return self.by_state.get(state, 0) / self.agents if self.agents else 0.0


def fleet_summary(
    source: Source, *, now: datetime | None = None, include_revoked: bool = False
) -> FleetSummary:
    """Agents per migration state (every state, zeros included) and stale counts, by SQL."""
    cutoff = _stale_cutoff(now)
    stale_flag = sa.case((_stale(cutoff), 1), else_=0)
    state = _raw_text(AGENTS.c.migration_state)
    query = (
        sa.select(state, sa.func.count(), sa.func.sum(stale_flag))
        .where(*_fleet_conditions(cutoff=cutoff, include_revoked=include_revoked))
        .group_by(state)
    )
    with engine_for(source).connect() as connection:
        rows = connection.execute(query).all()
    by_state = dict.fromkeys(MigrationState, 0)
    stale_by_state = dict.fromkeys(MigrationState, 0)
    for value, agents, stale in rows:
        if value in by_state:
            by_state[MigrationState(value)] = int(agents)
            stale_by_state[MigrationState(value)] = int(stale or 0)
    return FleetSummary(
        agents=sum(int(r[1]) for r in rows),
        stale=sum(int(r[2] or 0) for r in rows),
        by_state=by_state,
        stale_by_state=stale_by_state,
    )


def _parse_uuid(value: UUID | str) -> UUID | None:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


def agent_detail(
    source: Source, agent_id: UUID | str, *, now: datetime | None = None
) -> dict[str, Any] | None:
    """One agent: its fleet row plus machine id, system info and event counts.

    Keys: every `fleet_status_frame` column, machine_id, system_info (dict),
    host_metadata (dict), events, migration_events, failures, first_event_at,
    last_event_at. None when there is no such agent (or the id is not a UUID).
    """
    parsed = _parse_uuid(agent_id)
    if parsed is None:
        return None
    cutoff = _stale_cutoff(now)
    c = EVENTS.c
    counts = sa.select(
        sa.func.count().label("events"),
        sa.func.coalesce(
            sa.func.sum(sa.case((c.category == Category.MIGRATION, 1), else_=0)), 0
        ).label("migration_events"),
        sa.func.coalesce(sa.func.sum(sa.case((c.status == Status.FAILED, 1), else_=0)), 0).label(
            "failures"
        ),
        sa.func.min(c.occurred_at).label("first_event_at"),
        sa.func.max(c.occurred_at).label("last_event_at"),
    ).where(c.agent_id == parsed)
    extra = sa.select(AGENTS.c.machine_id, AGENTS.c.system_info, AGENTS.c.host_metadata).where(
        AGENTS.c.id == parsed
    )
    with engine_for(source).connect() as connection:
        frame = _read_fleet(connection, cutoff=cutoff, conditions=[AGENTS.c.id == parsed])
        if frame.empty:
            return None
        detail = _row_dict(frame)
        detail.update(connection.execute(extra).mappings().one())
        detail.update(connection.execute(counts).mappings().one())
    for name in ("events", "migration_events", "failures"):
        detail[name] = int(detail[name])
    return detail


# --- error groups -----------------------------------------------------------------------

ERROR_GROUP_COLUMNS: dict[str, _Kind] = {
    "fingerprint": "string",
    "event_type": EVENT_TYPE_DTYPE,
    "events": "int",
    "agents": "int",
    "first_event_at": "timestamp",
    "last_event_at": "timestamp",
    "sample_event_pk": "int",
}


def error_groups_frame(
    source: Source,
    *,
    filters: EventFilters | None = None,
    limit: int | None = None,
    **filter_values: Any,
) -> pd.DataFrame:
    """Error groups among the filtered events: the same failure on many hosts is one row.

    Columns: fingerprint (string), event_type and category (categories), sample_message
    (the most recently stored message of the group), signature (`error_signature` of the
    sample: the masked text that defines the group), events, agents (distinct), first and
    last event time (`first_event_at`, `last_event_at`, UTC), sample_event_pk. Sorted by
    agents, then events, descending. Events without a fingerprint (no error) are left out.
    """
    _check_paging(limit, 0)
    c = EVENTS.c
    conditions = [
        c.fingerprint.is_not(None),
        *event_conditions(make_filters(filters, **filter_values)),
    ]
    # A fingerprint hashes the event type in, so each group has exactly one event type: it
    # is read from the group's sample row, which keeps the aggregate on the columns of the
    # (fingerprint, occurred_at, agent_id) index (plus the event key, which SQLite keeps
    # in every index and PostgreSQL's index includes): no table row is visited.
    query = (
        sa.select(
            c.fingerprint,
            sa.func.count().label("events"),
            sa.func.count(sa.distinct(c.agent_id)).label("agents"),
            sa.func.min(c.occurred_at).label("first_event_at"),
            sa.func.max(c.occurred_at).label("last_event_at"),
            sa.func.max(c.id).label("sample_event_pk"),
        )
        .where(*conditions)
        .group_by(c.fingerprint)
        .order_by(sa.desc("agents"), sa.desc("events"), sa.desc("last_event_at"), c.fingerprint)
    )
    if limit is not None:
        query = query.limit(limit)
    with engine_for(source).connect() as connection:
        rows = connection.execute(query).all()
        samples = _sample_messages(connection, [row.sample_event_pk for row in rows])
    messages = [samples.get(row.sample_event_pk, (None, None, None)) for row in rows]
    groups = _typed_frame(
        [
            (row[0], event_type, *row[1:])
            for row, (_, _, event_type) in zip(rows, messages, strict=True)
        ],
        ERROR_GROUP_COLUMNS,
    )
    groups.insert(
        2,
        "category",
        pd.Categorical([_category_of(t) for t in groups["event_type"]], dtype=CATEGORY_DTYPE),
    )
    groups.insert(3, "sample_message", pd.array([m for m, _, _ in messages], dtype=STRING_DTYPE))
    groups.insert(
        4,
        "signature",
        pd.array(
            [None if m is None else error_signature(m, hostname=h) for m, h, _ in messages],
            dtype=STRING_DTYPE,
        ),
    )
    return groups


def _category_of(event_type: Any) -> str | None:
    try:
        return kind_of(EventType(event_type)).category.value
    except ValueError:
        return None


def _sample_messages(
    connection: Connection, event_pks: Sequence[int]
) -> dict[int, tuple[str | None, str, str]]:
    """Message, hostname (it was masked too) and event type of some events, by event_pk."""
    if not event_pks:
        return {}
    query = (
        sa.select(
            EVENTS.c.id, EVENTS.c.error_message, AGENTS.c.hostname, _raw_text(EVENTS.c.event_type)
        )
        .select_from(EVENTS.join(AGENTS, AGENTS.c.id == EVENTS.c.agent_id))
        .where(EVENTS.c.id.in_([int(pk) for pk in event_pks]))
    )
    return {
        pk: (message, host, event_type)
        for pk, message, host, event_type in connection.execute(query)
    }


GROUP_HOST_COLUMNS: dict[str, _Kind] = {
    "agent_id": "string",
    "hostname": "string",
    "os_type": "string",
    "os_version": "string",
    "agent_version": "string",
    "migration_state": MIGRATION_STATE_DTYPE,
    "last_fingerprint": "string",
    "last_seen_at": "timestamp",
    "stale": "bool",
    "events": "int",
    "first_event_at": "timestamp",
    "last_event_at": "timestamp",
    "sample_event_pk": "int",
    "sample_message": "string",
}


def group_hosts_frame(
    source: Source,
    fingerprint: str,
    *,
    filters: EventFilters | None = None,
    limit: int | None = None,
    now: datetime | None = None,
    **filter_values: Any,
) -> pd.DataFrame:
    """The hosts in one error group, most recently failing first.

    Columns: agent_id, hostname, os_type, os_version, agent_version (strings);
    migration_state (category) and last_fingerprint (string) as the agent stands now, so a
    host that has since recovered shows it; last_seen_at (UTC check-in) and stale; events
    of this group on the host, first_event_at, last_event_at (UTC); sample_event_pk and
    sample_message (the host's latest message in the group).
    """
    _check_paging(limit, 0)
    chosen = make_filters(filters, **filter_values).replace(fingerprint=fingerprint)
    cutoff = _stale_cutoff(now)
    c = EVENTS.c
    per_agent = (
        sa.select(
            c.agent_id,
            sa.func.count().label("events"),
            sa.func.min(c.occurred_at).label("first_event_at"),
            sa.func.max(c.occurred_at).label("last_event_at"),
            sa.func.max(c.id).label("sample_event_pk"),
        )
        .where(*event_conditions(chosen))
        # Grouping by the (constant) fingerprint too keeps SQLite on the fingerprint
        # index; grouped by agent alone it walks the whole agent index to skip a sort.
        .group_by(c.fingerprint, c.agent_id)
        .subquery("per_agent")
    )
    p = per_agent.c
    a = AGENTS.c
    with engine_for(source).connect() as connection:
        dialect = connection.dialect.name
        query = (
            sa.select(
                _raw_uuid(a.id, dialect).label("agent_id"),
                a.hostname,
                a.os_type,
                a.os_version,
                a.agent_version,
                _raw_text(a.migration_state).label("migration_state"),
                a.last_fingerprint,
                _raw_time(a.last_seen_at, dialect).label("last_seen_at"),
                _stale(cutoff).label("stale"),
                p.events,
                _raw_time(p.first_event_at, dialect).label("first_event_at"),
                _raw_time(p.last_event_at, dialect).label("last_event_at"),
                p.sample_event_pk,
            )
            .select_from(per_agent.join(AGENTS, a.id == p.agent_id))
            .order_by(p.last_event_at.desc(), a.hostname, a.id)
        )
        if limit is not None:
            query = query.limit(limit)
        rows = connection.execute(query).all()
        # Messages only for the rows kept, by primary key: joined before the LIMIT, the
        # planner may hash the whole event table to find a few thousand of them.
        samples = _sample_messages(connection, [row.sample_event_pk for row in rows])
    return _typed_frame(
        [(*row, samples.get(row.sample_event_pk, (None, None, None))[0]) for row in rows],
        GROUP_HOST_COLUMNS,
    )


# --- chart aggregates -------------------------------------------------------------------

_BUCKET_FREQ = {"hour": "h", "day": "D"}


def events_over_time_frame(
    source: Source,
    *,
    bucket: Bucket = "day",
    filters: EventFilters | None = None,
    fill_gaps: bool = True,
    **filter_values: Any,
) -> pd.DataFrame:
    """Events per UTC hour or day and event type, counted in SQL.

    Columns: bucket_start (UTC), event_type (category), events (int64); long format,
    sorted by bucket then event type. With `fill_gaps`, buckets without events are
    present with 0 (from `since`, or the first event, to `until` or now), for the event
    types that occur, unless that grid would exceed MAX_PAGE_ROWS.
    """
    chosen = make_filters(filters, **filter_values)
    return _counts_over_time(
        source, filters=chosen, bucket=bucket, fill_gaps=fill_gaps, value_name="events"
    )


def failures_over_time_frame(
    source: Source,
    *,
    bucket: Bucket = "day",
    filters: EventFilters | None = None,
    fill_gaps: bool = True,
    **filter_values: Any,
) -> pd.DataFrame:
    """Failed events per UTC hour or day and event type (columns: bucket_start, event_type,
    failures), among the filtered events; otherwise as `events_over_time_frame`."""
    chosen = make_filters(filters, **filter_values)
    if chosen.statuses and Status.FAILED not in chosen.statuses:
        return _typed_frame([], _over_time_columns("failures"))
    # Naming the failure event types (only they can fail) lets the (event_type, status,
    # occurred_at) index serve the query as a covering index.
    failure_types = [
        t for t in FAILURE_EVENT_TYPES if not chosen.event_types or t in chosen.event_types
    ]
    if not failure_types:
        return _typed_frame([], _over_time_columns("failures"))
    chosen = chosen.replace(statuses=(Status.FAILED,), event_types=failure_types)
    return _counts_over_time(
        source, filters=chosen, bucket=bucket, fill_gaps=fill_gaps, value_name="failures"
    )


def _over_time_columns(value_name: str) -> dict[str, _Kind]:
    return {"bucket_start": "timestamp", "event_type": EVENT_TYPE_DTYPE, value_name: "int"}


def _counts_over_time(
    source: Source, *, filters: EventFilters, bucket: Bucket, fill_gaps: bool, value_name: str
) -> pd.DataFrame:
    columns = _over_time_columns(value_name)
    if not filters.event_types:
        # Naming every event type (and, implied, every status) changes no result but lets
        # both planners read the covering (event_type, status, occurred_at) index instead
        # of visiting every row of the table.
        filters = filters.replace(event_types=tuple(EventType))
    engine = engine_for(source)
    start = time_bucket(EVENTS.c.occurred_at, bucket=bucket, dialect_name=engine.dialect.name)
    event_type = _raw_text(EVENTS.c.event_type)
    query = (
        sa.select(start.label("bucket_start"), event_type.label("event_type"), sa.func.count())
        .where(*event_conditions(filters))
        .group_by(start, event_type)
        .order_by(start, event_type)
    )
    with engine.connect() as connection:
        frame = _typed_frame(connection.execute(query).all(), columns)
    if fill_gaps and not frame.empty:
        frame = _fill_time_grid(frame, filters=filters, bucket=bucket, value_name=value_name)
    return frame


def _fill_time_grid(
    frame: pd.DataFrame, *, filters: EventFilters, bucket: Bucket, value_name: str
) -> pd.DataFrame:
    freq = _BUCKET_FREQ[bucket]
    observed_first = frame["bucket_start"].min()
    observed_last = frame["bucket_start"].max()
    first = pd.Timestamp(filters.since).floor(freq) if filters.since else observed_first
    end = datetime.now(UTC)
    if filters.until is not None:
        end = min(end, filters.until - timedelta(microseconds=1))
    last = max(pd.Timestamp(end).floor(freq), observed_last)
    first = min(first, observed_first)
    grid = pd.date_range(first, last, freq=freq).astype(UTC_DTYPE)
    event_types = [t for t in frame["event_type"].cat.categories if t in set(frame["event_type"])]
    if len(grid) * len(event_types) > MAX_PAGE_ROWS:
        return frame
    index = pd.MultiIndex.from_product([grid, event_types], names=["bucket_start", "event_type"])
    counts = frame.assign(event_type=frame["event_type"].astype(str)).set_index(
        ["bucket_start", "event_type"]
    )[value_name]
    filled = counts.reindex(index, fill_value=0).reset_index()
    filled["event_type"] = pd.Categorical(filled["event_type"], dtype=EVENT_TYPE_DTYPE)
    filled[value_name] = filled[value_name].astype(np.int64)
    return filled


_BREAKDOWN_KEYS: dict[str, tuple[str, ...]] = {
    "os": ("os_type", "os_version"),
    "os_type": ("os_type",),
    "agent_version": ("agent_version",),
    "os_architecture": ("os_architecture",),
}


def breakdown_frame(
    source: Source,
    *,
    by: BreakdownBy,
    now: datetime | None = None,
    include_revoked: bool = False,
) -> pd.DataFrame:
    """Agents grouped by OS (type and version), OS type, agent version or architecture.

    Columns: the key columns (strings), agents, one int64 column per MigrationState value
    (`migrated`, `not_needed`, ...), stale; sorted by agents descending. One GROUP BY
    over the agent table, with a CASE sum per state.
    """
    if by not in _BREAKDOWN_KEYS:
        raise ValueError(f"by must be one of {', '.join(_BREAKDOWN_KEYS)}, not {by!r}")
    keys = [AGENTS.c[name] for name in _BREAKDOWN_KEYS[by]]
    cutoff = _stale_cutoff(now)
    per_state = [
        sa.func.sum(sa.case((AGENTS.c.migration_state == state, 1), else_=0)).label(state.value)
        for state in MigrationState
    ]
    query = (
        sa.select(
            *keys,
            sa.func.count().label("agents"),
            *per_state,
            sa.func.sum(sa.case((_stale(cutoff), 1), else_=0)).label("stale"),
        )
        .where(*_fleet_conditions(cutoff=cutoff, include_revoked=include_revoked))
        .group_by(*keys)
        .order_by(sa.desc("agents"), *keys)
    )
    columns: dict[str, _Kind] = dict.fromkeys(_BREAKDOWN_KEYS[by], "string")
    columns["agents"] = "int"
    columns.update({state.value: "int" for state in MigrationState})
    columns["stale"] = "int"
    with engine_for(source).connect() as connection:
        return _typed_frame(connection.execute(query).all(), columns)


MIGRATION_PATH_COLUMNS: dict[str, _Kind] = {
    "migration_from": "string",
    "migration_to": "string",
    "attempts": "int",
    "successes": "int",
    "partials": "int",
    "failures": "int",
    "agents": "int",
    "failed_agents": "int",
}
_EXECUTION_TYPES = (
    EventType.MIGRATION_EXECUTION_SUCCESS,
    EventType.MIGRATION_EXECUTION_PARTIAL,
    EventType.MIGRATION_EXECUTION_FAILED,
)


def migration_path_frame(
    source: Source, *, filters: EventFilters | None = None, **filter_values: Any
) -> pd.DataFrame:
    """The migration-path matrix: per (from, to), execution attempts and their outcomes.

    An attempt is a migration execution event (success, partial or failed); detection
    events are not attempts. Columns: migration_from, migration_to (strings, <NA> when
    the agent did not say), attempts, successes, partials, failures, agents (distinct
    agents that attempted), failed_agents (of those, agents with at least one failure),
    failure_rate (failures / attempts, float64). Sorted by attempts descending.
    """
    chosen = make_filters(filters, **filter_values)
    types = [t for t in _EXECUTION_TYPES if not chosen.event_types or t in chosen.event_types]
    if not types:
        return _with_failure_rate(_typed_frame([], MIGRATION_PATH_COLUMNS))
    chosen = chosen.replace(event_types=types)
    c = EVENTS.c

    def outcome(event_type: EventType) -> Any:
        return sa.func.sum(sa.case((c.event_type == event_type, 1), else_=0))

    failed_agent = sa.case((c.event_type == EventType.MIGRATION_EXECUTION_FAILED, c.agent_id))
    query = (
        sa.select(
            c.migration_from,
            c.migration_to,
            sa.func.count().label("attempts"),
            outcome(EventType.MIGRATION_EXECUTION_SUCCESS).label("successes"),
            outcome(EventType.MIGRATION_EXECUTION_PARTIAL).label("partials"),
            outcome(EventType.MIGRATION_EXECUTION_FAILED).label("failures"),
            sa.func.count(sa.distinct(c.agent_id)).label("agents"),
            sa.func.count(sa.distinct(failed_agent)).label("failed_agents"),
        )
        .where(*event_conditions(chosen))
        .group_by(c.migration_from, c.migration_to)
        .order_by(sa.desc("attempts"), c.migration_from, c.migration_to)
    )
    with engine_for(source).connect() as connection:
        frame = _typed_frame(connection.execute(query).all(), MIGRATION_PATH_COLUMNS)
    return _with_failure_rate(frame)


def _with_failure_rate(frame: pd.DataFrame) -> pd.DataFrame:
    attempts = frame["attempts"].astype(np.float64)
    frame["failure_rate"] = np.divide(
        frame["failures"].astype(np.float64),
        attempts,
        out=np.zeros(len(frame), dtype=np.float64),
        where=attempts.to_numpy() > 0,
    )
    return frame


def filter_choices(source: Source, *, include_revoked: bool = False) -> dict[str, list[str]]:
    """Values for the console's filter pickers, from the agent table (cheap at any size).

    Keys: agent_versions, os_types, migration_from, migration_to (the last migration path
    each agent reported).
    """
    a = AGENTS.c
    where = [] if include_revoked else [a.revoked.is_(False)]
    choices: dict[str, list[str]] = {}
    with engine_for(source).connect() as connection:
        for key, column in (
            ("agent_versions", a.agent_version),
            ("os_types", a.os_type),
            ("migration_from", a.last_migration_from),
            ("migration_to", a.last_migration_to),
        ):
            query = sa.select(column).where(column.is_not(None), *where).distinct().order_by(column)
            choices[key] = [str(v) for v in connection.scalars(query)]
    return choices
