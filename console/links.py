"""The console's pages and the URL state they share, as plain functions a test can call.

Every view that can be shared is a URL: the events explorer keeps its filters, time range,
page and selected event in the query string; the other pages keep the host or error
group they show. Links between pages (a status or a group on the overview, a host in an
event) are query parameters built here, so they are tested without a browser.

The filters are encoded by `EventFilters.to_query_params`, the same encoding the analyst
API documents, rather than one Streamlit widget binding per field: a link made by another
page, a notebook or a colleague opens the same view, and a mangled URL degrades to fewer
filters instead of an error.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from models.analytics import MAX_PAGE_ROWS, EventFilters
from models.vocabulary import Category, EventType, MigrationState

# Paths relative to the entrypoint (console/app.py), as st.Page, st.page_link and
# AppTest.switch_page want them.
OVERVIEW_PAGE = "app_pages/fleet_overview.py"
EVENTS_PAGE = "app_pages/events_explorer.py"
HISTORY_PAGE = "app_pages/agent_history.py"
GROUPS_PAGE = "app_pages/error_groups.py"

# --- time ranges ------------------------------------------------------------------------

ALL_TIME = "all"
CUSTOM_RANGE = "custom"
TIME_RANGES: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    ALL_TIME: None,
}
TIME_RANGE_LABELS = {
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    ALL_TIME: "All time",
    CUSTOM_RANGE: "Custom",
}


def range_start(name: str, *, now: datetime | None = None) -> datetime | None:
    """Where a preset range starts, floored to the minute; None for all time.

    Flooring keeps the start, and so every cache key built from it, stable for a minute
    instead of changing on every script run.
    """
    span = TIME_RANGES.get(name)
    if span is None:
        return None
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return (moment - span).replace(second=0, microsecond=0)


def bucket_for(name: str) -> str:
    """Hourly buckets up to a day, daily beyond: bars wide enough to read."""
    return "hour" if name in ("1h", "24h") else "day"


# --- the events explorer's URL ----------------------------------------------------------

PAGE_SIZES = (50, 100, 500, 1000, MAX_PAGE_ROWS)
DEFAULT_PAGE_SIZE = 100


def _int_param(params: Mapping[str, Any], name: str) -> int | None:
    raw = params.get(name)
    if isinstance(raw, list | tuple):
        raw = raw[-1] if raw else None
    if raw is None:
        return None
    text = str(raw).strip()
    return int(text) if text.isdigit() and len(text) <= 18 else None


def _text_param(params: Mapping[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if isinstance(raw, list | tuple):
        raw = raw[-1] if raw else None
    return None if raw is None else str(raw)


@dataclass(frozen=True)
class ExplorerView:
    """What the events explorer shows: filters, time range, page and selected event.

    `filters` holds since/until only for a custom range; a preset (`24h`) stays relative
    so that a shared link means "the last 24 hours" whenever it is opened.
    """

    filters: EventFilters = field(default_factory=EventFilters)
    time_range: str = ALL_TIME
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    event_pk: int | None = None

    def query_filters(self, *, now: datetime | None = None) -> EventFilters:
        """The filters to query with: a preset range becomes its start time."""
        if self.time_range in TIME_RANGES:
            return self.filters.replace(since=range_start(self.time_range, now=now), until=None)
        return self.filters

    def to_query_params(self) -> dict[str, str]:
        params = self.filters.to_query_params()
        if self.time_range in TIME_RANGES:
            params.pop("since", None)
            params.pop("until", None)
            if self.time_range != ALL_TIME:
                params["range"] = self.time_range
        if self.page > 1:
            params["page"] = str(self.page)
        if self.page_size != DEFAULT_PAGE_SIZE:
            params["size"] = str(self.page_size)
        if self.event_pk is not None:
            params["event"] = str(self.event_pk)
        return params

    @classmethod
    def from_query_params(cls, params: Mapping[str, Any]) -> ExplorerView:
        """The view a URL asks for; anything unusable falls back to its default."""
        filters = EventFilters.from_query_params(params)
        time_range = _text_param(params, "range") or ""
        if time_range not in TIME_RANGES:
            has_bounds = filters.since is not None or filters.until is not None
            time_range = CUSTOM_RANGE if has_bounds else ALL_TIME
        elif time_range != ALL_TIME:
            filters = filters.replace(since=None, until=None)
        page_size = _int_param(params, "size")
        return cls(
            filters=filters,
            time_range=time_range,
            page=max(1, _int_param(params, "page") or 1),
            page_size=page_size if page_size in PAGE_SIZES else DEFAULT_PAGE_SIZE,
            event_pk=_int_param(params, "event"),
        )


def page_count(total: int, page_size: int) -> int:
    """Pages needed for `total` rows (at least one, so an empty table still has page 1)."""
    return max(1, -(-total // page_size))


# --- links between pages ----------------------------------------------------------------

# The migration events that put an agent in each state; a state's click-through lists them.
STATE_EVENT_TYPES: dict[MigrationState, tuple[EventType, ...]] = {
    MigrationState.MIGRATED: (EventType.MIGRATION_EXECUTION_SUCCESS,),
    MigrationState.NOT_NEEDED: (EventType.MIGRATION_DETECTION_NOT_NEEDED,),
    MigrationState.PENDING: (EventType.MIGRATION_DETECTION_SUCCESS,),
    MigrationState.FAILED: (
        EventType.MIGRATION_DETECTION_FAILED,
        EventType.MIGRATION_EXECUTION_FAILED,
    ),
    MigrationState.PARTIAL: (EventType.MIGRATION_EXECUTION_PARTIAL,),
    MigrationState.NEVER_REPORTED: (),
}


def events_for_state(state: MigrationState | str, *, time_range: str = ALL_TIME) -> dict[str, str]:
    """Explorer params for the migration events behind a fleet state (empty: none exist)."""
    event_types = STATE_EVENT_TYPES[MigrationState(state)]
    if not event_types:
        return {}
    filters = EventFilters(category=Category.MIGRATION, event_types=event_types)
    return ExplorerView(filters=filters, time_range=time_range).to_query_params()


def events_for_group(fingerprint: str, *, time_range: str = ALL_TIME) -> dict[str, str]:
    """Explorer params for every event of one error group."""
    view = ExplorerView(filters=EventFilters(fingerprint=fingerprint), time_range=time_range)
    return view.to_query_params()


def events_for_agent(agent_id: UUID | str, *, migration_only: bool = False) -> dict[str, str]:
    """Explorer params for one host's events (migration events only, if asked)."""
    category = Category.MIGRATION if migration_only else None
    filters = EventFilters(agent_ids=(UUID(str(agent_id)),), category=category)
    return ExplorerView(filters=filters).to_query_params()


def events_for_path(
    migration_from: str | None, migration_to: str | None, *, time_range: str = ALL_TIME
) -> dict[str, str]:
    """Explorer params for the migration executions along one from -> to path.

    A wildcard in an agent-sent label would widen the match, so such a label (or a
    missing one) leaves that side unfiltered rather than matching something else.
    """
    filters = EventFilters(
        category=Category.MIGRATION,
        event_types=(
            EventType.MIGRATION_EXECUTION_SUCCESS,
            EventType.MIGRATION_EXECUTION_PARTIAL,
            EventType.MIGRATION_EXECUTION_FAILED,
        ),
        migration_from=_exact_label(migration_from),
        migration_to=_exact_label(migration_to),
    )
    return ExplorerView(filters=filters, time_range=time_range).to_query_params()


def _exact_label(label: str | None) -> str | None:
    if label is None or "*" in label or not label.strip():
        return None
    return label if label == label.strip() else None


def history_of(agent_id: UUID | str) -> dict[str, str]:
    """Agent-history params for one host."""
    return {"agent": str(agent_id)}


def group_view(fingerprint: str) -> dict[str, str]:
    """Error-groups params with one group open."""
    return {"group": fingerprint}


def agent_param(params: Mapping[str, Any]) -> UUID | None:
    """The agent a history URL names, or None when it names none (or garbage)."""
    text = _text_param(params, "agent")
    if not text:
        return None
    try:
        return UUID(text.strip())
    except ValueError:
        return None


def fingerprint_param(params: Mapping[str, Any], name: str = "group") -> str | None:
    """An error-group id from the URL: server-made hex, so anything else is dropped."""
    text = (_text_param(params, name) or "").strip().lower()
    if not text or len(text) > 64 or any(c not in "0123456789abcdef" for c in text):
        return None
    return text


# --- the equivalent command line --------------------------------------------------------

_EXPORT_OPTIONS = {
    "since": "--since",
    "until": "--until",
    "category": "--category",
    "host": "--host",
    "agent_version": "--agent-version",
    "migration_from": "--migration-from",
    "migration_to": "--migration-to",
    "fingerprint": "--fingerprint",
    "error_text": "--error-text",
}
_REPEATED_OPTIONS = {
    "agent_ids": "--agent-id",
    "event_types": "--event-type",
    "statuses": "--status",
    "severities": "--severity",
}


def export_command(filters: EventFilters, fmt: str, *, out: str | None = None) -> str:
    """The `redflag-server export` command line that writes the same rows as the console."""
    words = ["redflag-server", "export", "--format", fmt, "--out", out or f"events.{fmt}"]
    for name, value in filters.to_query_params().items():
        if name in _REPEATED_OPTIONS:
            for part in value.split(","):
                words += [_REPEATED_OPTIONS[name], part]
        else:
            words += [_EXPORT_OPTIONS[name], value]
    return shlex.join(words)


# --- the explorer's widgets -------------------------------------------------------------

ALL_CATEGORIES = "all"
CATEGORY_CHOICES = {
    ALL_CATEGORIES: "All",
    "migration": ":material/swap_horiz: Migration",
    "update": ":material/system_update_alt: Update",
}


def category_label(choice: str) -> str:
    """The label of a kind-of-event choice (its icon renders; no agent text in it)."""
    return CATEGORY_CHOICES[choice]


# Widget keys of the explorer's text filters, by EventFilters field.
TEXT_INPUTS = {
    "host": "ex_host",
    "error_text": "ex_error_text",
    "agent_version": "ex_version",
    "fingerprint": "ex_fingerprint",
    "migration_from": "ex_from",
    "migration_to": "ex_to",
}
CHOICE_INPUTS = {
    "event_types": "ex_types",
    "statuses": "ex_statuses",
    "severities": "ex_severities",
}
FIELD_NAMES = {
    "host": "Host",
    "error_text": "Error text",
    "agent_version": "Agent version",
    "fingerprint": "Error group",
    "migration_from": "Migration from",
    "migration_to": "Migration to",
    "agent_ids": "Agent id",
    "since": "From",
    "until": "To",
}


def _naive_utc(moment: datetime | None) -> datetime | None:
    # Streamlit's date-time input holds naive values; the console's times are UTC.
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


def explorer_inputs(view: ExplorerView) -> dict[str, Any]:
    """The explorer's widget values (by widget key) that show `view`."""
    filters = view.filters
    inputs: dict[str, Any] = {
        "ex_category": filters.category.value if filters.category else ALL_CATEGORIES,
        "ex_range": view.time_range,
        "ex_since": _naive_utc(filters.since) if view.time_range == CUSTOM_RANGE else None,
        "ex_until": _naive_utc(filters.until) if view.time_range == CUSTOM_RANGE else None,
        "ex_agent": ",".join(str(a) for a in filters.agent_ids),
        "ex_size": view.page_size,
        "ex_page": view.page,
    }
    for name, key in CHOICE_INPUTS.items():
        inputs[key] = [value.value for value in getattr(filters, name)]
    for name, key in TEXT_INPUTS.items():
        inputs[key] = getattr(filters, name) or ""
    return inputs


def filters_from_inputs(inputs: Mapping[str, Any]) -> tuple[EventFilters, list[str]]:
    """The filters the explorer's widgets ask for, and the names of inputs left out.

    Each input is checked on its own, so one unusable value (a malformed agent id) drops
    only that filter; the caller says which, without echoing the value.
    """
    values: dict[str, Any] = {}
    category = inputs.get("ex_category")
    if category and category != ALL_CATEGORIES:
        values["category"] = category
    for name, key in CHOICE_INPUTS.items():
        if inputs.get(key):
            values[name] = list(inputs[key])
    for name, key in TEXT_INPUTS.items():
        text = inputs.get(key)
        if isinstance(text, str) and text.strip():
            values[name] = text
    agents = inputs.get("ex_agent")
    if isinstance(agents, str) and agents.strip():
        values["agent_ids"] = [part.strip() for part in agents.split(",") if part.strip()]
    if inputs.get("ex_range") == CUSTOM_RANGE:
        for name, key in (("since", "ex_since"), ("until", "ex_until")):
            moment = inputs.get(key)
            if isinstance(moment, datetime):
                values[name] = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    kept: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        try:
            EventFilters(**{name: value})
        except (ValueError, TypeError):
            problems.append(FIELD_NAMES.get(name, name))
        else:
            kept[name] = value
    return EventFilters(**kept), problems


def explorer_view_from_inputs(
    inputs: Mapping[str, Any], *, event_pk: int | None = None
) -> tuple[ExplorerView, list[str]]:
    """The view the explorer's widgets show (and the inputs that were left out)."""
    filters, problems = filters_from_inputs(inputs)
    time_range = inputs.get("ex_range")
    if time_range not in TIME_RANGES and time_range != CUSTOM_RANGE:
        time_range = ALL_TIME
    size = inputs.get("ex_size")
    page = inputs.get("ex_page")
    view = ExplorerView(
        filters=filters,
        time_range=str(time_range),
        page=page if isinstance(page, int) and page > 0 else 1,
        page_size=size if size in PAGE_SIZES else DEFAULT_PAGE_SIZE,
        event_pk=event_pk,
    )
    return view, problems


# --- the other pages' URLs --------------------------------------------------------------

HISTORY_PAGE_SIZE = 25


@dataclass(frozen=True)
class HistoryView:
    """Which host the agent-history page shows, which of its events, and which page."""

    agent_id: UUID | None = None
    migration_only: bool = False
    page: int = 1

    def to_query_params(self) -> dict[str, str]:
        params = history_of(self.agent_id) if self.agent_id else {}
        if self.migration_only:
            params["migration"] = "1"
        if self.page > 1:
            params["page"] = str(self.page)
        return params

    @classmethod
    def from_query_params(cls, params: Mapping[str, Any]) -> HistoryView:
        return cls(
            agent_id=agent_param(params),
            migration_only=_text_param(params, "migration") in ("1", "true", "yes"),
            page=max(1, _int_param(params, "page") or 1),
        )


GROUP_RANGES = ("24h", "7d", "30d", "90d", ALL_TIME)
DEFAULT_GROUP_RANGE = "7d"


@dataclass(frozen=True)
class GroupsView:
    """The error-groups page: period, kind of event, and the group that is open."""

    fingerprint: str | None = None
    time_range: str = DEFAULT_GROUP_RANGE
    category: str = ALL_CATEGORIES

    def filters(self, *, now: datetime | None = None) -> EventFilters:
        category = None if self.category == ALL_CATEGORIES else Category(self.category)
        return EventFilters(since=range_start(self.time_range, now=now), category=category)

    def to_query_params(self) -> dict[str, str]:
        params = group_view(self.fingerprint) if self.fingerprint else {}
        if self.time_range != DEFAULT_GROUP_RANGE:
            params["range"] = self.time_range
        if self.category != ALL_CATEGORIES:
            params["category"] = self.category
        return params

    @classmethod
    def from_query_params(cls, params: Mapping[str, Any]) -> GroupsView:
        time_range = _text_param(params, "range")
        category = _text_param(params, "category")
        return cls(
            fingerprint=fingerprint_param(params),
            time_range=time_range if time_range in GROUP_RANGES else DEFAULT_GROUP_RANGE,
            category=category if category in {c.value for c in Category} else ALL_CATEGORIES,
        )
