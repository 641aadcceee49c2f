"""The console's data access: one engine, short-lived caches, bounded tables, full downloads."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from console import data
from models import analytics
from models.analytics import EventFilters
from models.database import create_db_engine, write_transaction
from models.store import store_events
from models.tables import AGENT_TABLE
from models.wire import Event
from tests.console.conftest import SeededFleet
from tests.factories import agent_row, wire_event

FORMULA = '=HYPERLINK("http://evil.example/","open")'


def _one_failing_host(url: str, *, hostname: str, message: str) -> uuid.UUID:
    engine = create_db_engine(url)
    agent_id = uuid.uuid4()
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent_row(id=agent_id, hostname=hostname)])
        store_events(
            connection,
            agent_id=agent_id,
            events=[Event.model_validate(wire_event(error_message=message))],
            received_at=datetime.now(UTC),
            agent_version="0.2.0",
        )
    engine.dispose()
    return agent_id


def test_a_download_holds_every_matching_event_not_one_page(fleet: SeededFleet) -> None:
    failed = pd.read_csv(
        io.BytesIO(data.export_file(fleet.url, EventFilters(statuses=("failed",)), "csv"))
    )
    everything = pd.read_parquet(io.BytesIO(data.export_file(fleet.url, EventFilters(), "parquet")))

    assert len(failed) == 8
    assert set(failed["status"]) == {"failed"}
    assert len(everything) == 27
    expected = analytics.events_frame(fleet.url)
    assert list(everything["event_pk"]) == list(expected["event_pk"])


def test_a_csv_download_defuses_spreadsheet_formulas(db_url: str) -> None:
    _one_failing_host(db_url, hostname="@SUM(A1)", message=FORMULA)

    frame = pd.read_csv(io.BytesIO(data.export_file(db_url, EventFilters(), "csv")))

    assert frame.loc[0, "error_message"] == "'" + FORMULA
    assert frame.loc[0, "hostname"] == "'@SUM(A1)"


def test_the_engine_is_made_once_and_results_are_cached_briefly(db_url: str) -> None:
    _one_failing_host(db_url, hostname="web-01", message="boom")
    engine = data.engine(db_url)

    assert data.count_events(db_url, EventFilters()) == 1
    _one_failing_host(db_url, hostname="web-02", message="boom")
    assert data.count_events(db_url, EventFilters()) == 1  # cached for a few seconds
    data.clear_caches()
    assert data.count_events(db_url, EventFilters()) == 2
    assert data.engine(db_url) is engine


def test_table_loaders_never_ask_for_more_than_ten_thousand_rows(
    fleet: SeededFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def recorder(name: str, result: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            asked[name] = kwargs.get("limit")
            return result

        return record

    monkeypatch.setattr(
        analytics, "events_frame", recorder("events", analytics.empty_events_frame())
    )
    monkeypatch.setattr(analytics, "fleet_status_frame", recorder("fleet", pd.DataFrame()))
    monkeypatch.setattr(analytics, "count_agents", recorder("count", 0))
    monkeypatch.setattr(analytics, "error_groups_frame", recorder("groups", pd.DataFrame()))

    data.events_page(fleet.url, EventFilters(), limit=50_000)
    data.fleet_hosts(fleet.url, limit=1_000_000)
    data.error_groups(fleet.url, EventFilters(), limit=99_999)

    assert asked == {"events": 10_000, "fleet": 10_000, "count": None, "groups": 10_000}


def test_file_names_say_when_the_export_was_made() -> None:
    when = datetime(2026, 11, 27, 8, 30, 5, tzinfo=UTC)
    assert data.export_file_name("parquet", now=when) == "redflag-events-20261127T083005Z.parquet"
