"""The console's reads: one cached engine per database, and short-lived cached query results.

Every number comes from `models.analytics`, the functions analysts call too, so the screen
and a notebook agree. Results are cached for `REDFLAG_CONSOLE_CACHE_SECONDS` (shared by
every session: a dozen admins cost the database one query per view and period), and the
table loaders never ask for more than `MAX_PAGE_ROWS` rows.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import streamlit as st
from sqlalchemy.engine import Engine
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from console.settings import ConsoleSettings
from models import analytics
from models.analytics import MAX_PAGE_ROWS, EventFilters, FleetSummary, JsonAs
from models.database import create_db_engine
from models.export import ExportFormat, export_events
from models.settings import Settings

_TTL = ConsoleSettings().cache_seconds
# Bound each loader's entries: the views an admin flips between, not every URL ever seen.
_ENTRIES = 64

# The browser download holds the file in memory; beyond this, the command line is the way.
MAX_DOWNLOAD_ROWS = 1_000_000


def database_url() -> str:
    """The database the console reads (`REDFLAG_DATABASE_URL`)."""
    return Settings().database_url


@st.cache_resource(max_entries=4)
def engine(url: str) -> Engine:
    """One engine (and connection pool) per database for the whole console process."""
    return create_db_engine(url)


def at_once(*loaders: Callable[[], Any]) -> list[Any]:
    """Each loader's result, the loaders run at the same time.

    A page's independent queries then overlap: SQLite reads let go of the GIL and
    PostgreSQL answers in its own processes, so the second core does half the work. Each
    thread carries the script's run context, as the cached loaders expect
    (docs.streamlit.io, "Multithreading in Streamlit").
    """
    context = get_script_run_ctx()

    def run(loader: Callable[[], Any]) -> Any:
        add_script_run_ctx(threading.current_thread(), context)
        return loader()

    with ThreadPoolExecutor(max_workers=len(loaders), thread_name_prefix="console-load") as pool:
        return list(pool.map(run, loaders))


def _capped(limit: int) -> int:
    return max(0, min(int(limit), MAX_PAGE_ROWS))


# --- fleet ------------------------------------------------------------------------------


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def fleet_summary(url: str) -> FleetSummary:
    return analytics.fleet_summary(engine(url))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def fleet_hosts(
    url: str,
    *,
    states: tuple[str, ...] = (),
    stale: bool | None = None,
    host: str | None = None,
    limit: int = MAX_PAGE_ROWS,
) -> tuple[pd.DataFrame, int]:
    """A page of the fleet (by hostname) and how many agents match in all."""
    source = engine(url)
    frame = analytics.fleet_status_frame(
        source, states=states, stale=stale, host=host, limit=_capped(limit)
    )
    total = analytics.count_agents(source, states=states, stale=stale, host=host)
    return frame, total


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def breakdown(url: str, by: str) -> pd.DataFrame:
    return analytics.breakdown_frame(engine(url), by=by)  # type: ignore[arg-type]


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def agent_detail(url: str, agent_id: UUID) -> dict[str, Any] | None:
    return analytics.agent_detail(engine(url), agent_id)


# --- events -----------------------------------------------------------------------------


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def events_page(
    url: str, filters: EventFilters, *, limit: int, offset: int = 0, json_as: JsonAs = "dict"
) -> pd.DataFrame:
    """One page of events, newest first (never more than MAX_PAGE_ROWS).

    A table that shows no JSON column asks for it as text (`json_as="text"`): decoding
    the system info and details of 10,000 rows costs more than reading them.
    """
    return analytics.events_frame(
        engine(url), filters=filters, limit=_capped(limit), offset=offset, json_as=json_as
    )


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def count_events(url: str, filters: EventFilters) -> int:
    return analytics.count_events(engine(url), filters=filters)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def event_detail(url: str, event_pk: int) -> dict[str, Any] | None:
    return analytics.event_detail(engine(url), event_pk)


# --- aggregates -------------------------------------------------------------------------


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def failures_over_time(url: str, filters: EventFilters, bucket: str) -> pd.DataFrame:
    return analytics.failures_over_time_frame(engine(url), filters=filters, bucket=bucket)  # type: ignore[arg-type]


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def events_over_time(url: str, filters: EventFilters, bucket: str) -> pd.DataFrame:
    return analytics.events_over_time_frame(engine(url), filters=filters, bucket=bucket)  # type: ignore[arg-type]


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def error_groups(url: str, filters: EventFilters, *, limit: int = MAX_PAGE_ROWS) -> pd.DataFrame:
    return analytics.error_groups_frame(engine(url), filters=filters, limit=_capped(limit))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def group_hosts(url: str, fingerprint: str, filters: EventFilters) -> pd.DataFrame:
    return analytics.group_hosts_frame(
        engine(url), fingerprint, filters=filters, limit=MAX_PAGE_ROWS
    )


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner=False)
def migration_paths(url: str, filters: EventFilters) -> pd.DataFrame:
    return analytics.migration_path_frame(engine(url), filters=filters)


# --- downloads --------------------------------------------------------------------------

MIME_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def export_file(url: str, filters: EventFilters, fmt: ExportFormat) -> bytes:
    """Every event matching `filters` (not one page) as a CSV or Parquet file's bytes.

    `models.export` streams the rows chunk by chunk into a temporary file, escaping CSV
    cells that a spreadsheet would run as formulas; the file is read back and removed.
    Not cached: each click exports what the database holds at that moment.
    """
    with tempfile.TemporaryDirectory(prefix="redflag-console-export-") as directory:
        target = Path(directory) / f"events.{fmt}"
        export_events(engine(url), fmt=fmt, out=target, filters=filters, progress=False)
        return target.read_bytes()


def export_file_name(fmt: str, *, now: datetime) -> str:
    return f"redflag-events-{now:%Y%m%dT%H%M%SZ}.{fmt}"


def clear_caches() -> None:
    """Forget every cached result (the engines stay): the next view reads fresh data."""
    st.cache_data.clear()
