"""The console's URLs: explorer views, links between pages, and the equivalent export command."""

from __future__ import annotations

import shlex
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import pytest

from console import links
from console.links import ExplorerView, GroupsView, HistoryView
from models.analytics import MAX_PAGE_ROWS, EventFilters
from models.vocabulary import Category, EventType, MigrationState, Status

NOON = datetime(2026, 11, 27, 12, 0, 30, 123456, tzinfo=UTC)


def test_a_preset_range_stays_relative_in_the_url_and_starts_on_a_whole_minute() -> None:
    view = ExplorerView(filters=EventFilters(statuses=("failed",)), time_range="24h")

    assert view.to_query_params() == {"statuses": "failed", "range": "24h"}
    assert view.query_filters(now=NOON).since == datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert ExplorerView(time_range="all").query_filters(now=NOON).since is None


def test_explorer_views_round_trip_through_the_url() -> None:
    views = [
        ExplorerView(),
        ExplorerView(
            filters=EventFilters(
                category=Category.MIGRATION,
                event_types=(EventType.MIGRATION_EXECUTION_FAILED,),
                statuses=(Status.FAILED,),
                host="web-*",
                error_text="Permission denied",
                fingerprint="928b41a06a850472",
                agent_ids=(uuid.uuid4(),),
            ),
            time_range="7d",
            page=3,
            page_size=500,
            event_pk=42,
        ),
        ExplorerView(
            filters=EventFilters(since=NOON - timedelta(days=2), until=NOON),
            time_range=links.CUSTOM_RANGE,
        ),
    ]
    for view in views:
        # Through a real query string, as a browser would hand it back.
        query = dict(parse_qsl(urlencode(view.to_query_params())))
        assert ExplorerView.from_query_params(query) == view


def test_a_mangled_explorer_url_opens_with_what_can_be_used() -> None:
    view = ExplorerView.from_query_params(
        {
            "statuses": "failed,exploded",
            "range": "forever",
            "page": "-3",
            "size": "50000",
            "event": "12; DROP TABLE",
            "agent_ids": "not-a-uuid",
            "since": "yesterday-ish",
        }
    )

    assert view == ExplorerView(filters=EventFilters(statuses=("failed",)))


def test_page_sizes_never_exceed_the_ten_thousand_row_ceiling() -> None:
    assert max(links.PAGE_SIZES) == MAX_PAGE_ROWS == 10_000
    assert ExplorerView.from_query_params({"size": "10000"}).page_size == 10_000
    assert ExplorerView.from_query_params({"size": "10001"}).page_size == links.DEFAULT_PAGE_SIZE
    assert links.page_count(0, 100) == 1
    assert links.page_count(100, 100) == 1
    assert links.page_count(101, 100) == 2


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (
            MigrationState.FAILED,
            {
                "category": "migration",
                "event_types": "migration_detection_failed,migration_execution_failed",
            },
        ),
        (
            MigrationState.PENDING,
            {"category": "migration", "event_types": "migration_detection_success"},
        ),
        (
            MigrationState.MIGRATED,
            {"category": "migration", "event_types": "migration_execution_success"},
        ),
        (MigrationState.NEVER_REPORTED, {}),
    ],
)
def test_a_state_links_to_the_migration_events_that_lead_to_it(
    state: MigrationState, expected: dict[str, str]
) -> None:
    assert links.events_for_state(state) == expected


def test_links_between_pages_carry_only_ids_and_filters() -> None:
    agent_id = uuid.uuid4()

    assert links.events_for_group("abc123", time_range="7d") == {
        "fingerprint": "abc123",
        "range": "7d",
    }
    assert links.events_for_agent(agent_id, migration_only=True) == {
        "agent_ids": str(agent_id),
        "category": "migration",
    }
    assert links.history_of(agent_id) == {"agent": str(agent_id)}
    assert links.group_view("abc123") == {"group": "abc123"}
    path = links.events_for_path("0.1.18 (config v0)", "0.2.0 (config v5)")
    assert path["migration_from"] == "0.1.18 (config v0)"
    assert path["migration_to"] == "0.2.0 (config v5)"
    # A label with a wildcard would match more than its own path, so it is not a filter.
    assert "migration_from" not in links.events_for_path("0.1.*", None)


def test_history_and_group_urls_drop_what_is_not_an_id() -> None:
    agent_id = uuid.uuid4()

    assert HistoryView.from_query_params({"agent": str(agent_id), "migration": "1"}) == HistoryView(
        agent_id=agent_id, migration_only=True
    )
    assert HistoryView.from_query_params({"agent": "<img src=x>"}) == HistoryView()
    assert GroupsView.from_query_params({"group": "928B41A06A850472"}).fingerprint == (
        "928b41a06a850472"
    )
    assert GroupsView.from_query_params({"group": "**bold**", "range": "1y"}) == GroupsView()
    view = GroupsView(fingerprint="abc", time_range="7d", category="migration")
    assert GroupsView.from_query_params(view.to_query_params()) == view


def test_the_explorer_widgets_show_the_url_view_and_read_back_the_same_view() -> None:
    view = ExplorerView(
        filters=EventFilters(
            category=Category.UPDATE,
            statuses=(Status.FAILED,),
            host="web",
            agent_version="0.1.*",
            since=datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        ),
        time_range=links.CUSTOM_RANGE,
        page=2,
        page_size=50,
    )
    inputs = links.explorer_inputs(view)

    assert inputs["ex_category"] == "update"
    assert inputs["ex_statuses"] == ["failed"]
    # The date-time widget holds naive values, meant as UTC.
    assert inputs["ex_since"] == datetime(2026, 11, 1, 8, 30, tzinfo=UTC).replace(tzinfo=None)
    assert links.explorer_view_from_inputs(inputs) == (view, [])


def test_an_unusable_input_drops_only_its_own_filter_and_is_named() -> None:
    inputs = links.explorer_inputs(ExplorerView(filters=EventFilters(host="db")))
    inputs["ex_agent"] = "<img src=x onerror=alert(1)>"

    view, problems = links.explorer_view_from_inputs(inputs)

    assert view.filters == EventFilters(host="db")
    assert problems == ["Agent id"]


def test_the_export_command_names_the_same_filters() -> None:
    filters = EventFilters(
        statuses=("failed", "warning"), host="web 01", since=datetime(2026, 11, 1, tzinfo=UTC)
    )

    command = links.export_command(filters, "csv")

    assert shlex.split(command) == [
        "redflag-server", "export", "--format", "csv", "--out", "events.csv",
        "--since", "2026-11-01T00:00:00Z", "--host", "web 01",
        "--status", "failed", "--status", "warning",
    ]  # fmt: skip
