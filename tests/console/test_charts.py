"""Chart builders: pure functions from query frames to plotly figures."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import plotly.graph_objects as go

from console import charts
from models.analytics import (
    EVENT_TYPE_DTYPE,
    MIGRATION_PATH_COLUMNS,
    UTC_DTYPE,
    FleetSummary,
    empty_events_frame,
)
from models.vocabulary import EventType, MigrationState

DAY = datetime(2026, 11, 20, tzinfo=UTC)
HOSTILE = "<img src=x onerror=alert(1)>"


def _text_of(figure: go.Figure) -> str:
    return json.dumps(figure.to_plotly_json(), default=str)


def test_status_distribution_has_one_bar_per_state_in_its_colour() -> None:
    summary = FleetSummary(
        agents=10,
        stale=1,
        by_state={
            MigrationState.MIGRATED: 5, MigrationState.NOT_NEEDED: 1, MigrationState.PENDING: 0,
            MigrationState.FAILED: 3, MigrationState.PARTIAL: 0, MigrationState.NEVER_REPORTED: 1,
        },
    )  # fmt: skip

    (bar,) = charts.status_distribution(summary).data

    assert list(bar.y) == [
        "Migrated",
        "Not needed",
        "Pending",
        "Partial",
        "Failed",
        "Never reported",
    ]
    assert list(bar.x) == [5, 1, 0, 0, 3, 1]
    assert bar.marker.color[4] == charts.STATE_COLOURS[MigrationState.FAILED]
    assert list(bar.customdata) == [s.value for s in charts.STATE_ORDER]
    assert bar.text[0] == "5 (50%)"


def test_failures_over_time_stack_one_trace_per_failure_type() -> None:
    frame = pd.DataFrame(
        {
            "bucket_start": pd.array([DAY, DAY, DAY + timedelta(days=1)], dtype=UTC_DTYPE),
            "event_type": pd.Categorical(
                ["migration_execution_failed", "update_failed", "migration_execution_failed"],
                dtype=EVENT_TYPE_DTYPE,
            ),
            "failures": [3, 1, 2],
        }
    )

    figure = charts.failures_over_time(frame, bucket="day")

    assert figure.layout.barmode == "stack"
    assert [trace.name for trace in figure.data] == ["Migration execution failed", "Update failed"]
    assert list(figure.data[0].y) == [3, 2]
    assert (
        figure.data[0].marker.color
        == charts.EVENT_TYPE_COLOURS[EventType.MIGRATION_EXECUTION_FAILED]
    )


def test_an_empty_period_says_so_instead_of_drawing_empty_axes() -> None:
    empty = pd.DataFrame({"bucket_start": [], "event_type": [], "failures": []})

    figure = charts.failures_over_time(empty, bucket="hour")

    assert not figure.data
    assert figure.layout.annotations[0].text == "No failures in this period"


def test_breakdown_stacks_states_per_label_and_folds_the_tail_into_other() -> None:
    frame = pd.DataFrame(
        {
            "os_type": ["linux"] * 4,
            "os_version": ["Debian 12", "Ubuntu 22.04", "Rocky 9", "Alpine 3"],
            "agents": [10, 5, 2, 1],
            "migrated": [8, 5, 0, 1], "not_needed": [0, 0, 0, 0], "pending": [0, 0, 0, 0],
            "failed": [2, 0, 2, 0], "partial": [0, 0, 0, 0], "never_reported": [0, 0, 0, 0],
            "stale": [0, 0, 0, 0],
        }
    )  # fmt: skip

    figure = charts.state_breakdown(frame, by=("os_type", "os_version"), title="By OS", top=2)

    failed = next(t for t in figure.data if t.name == "Failed")
    labels = list(failed.y)
    assert labels == ["other (2)", "linux Ubuntu 22.04", "linux Debian 12"]
    assert list(failed.x) == [2, 0, 2]
    assert len(figure.data) == len(charts.STATE_ORDER)


def test_migration_path_matrix_colours_cells_by_failure_rate() -> None:
    frame = pd.DataFrame(
        [
            ["legacy", "current", 4, 2, 1, 1, 4, 1],
            ["config v3", "current", 2, 0, 0, 2, 2, 2],
            [None, "current", 1, 1, 0, 0, 1, 0],
        ],
        columns=list(MIGRATION_PATH_COLUMNS),
    )

    (heatmap,) = charts.migration_path_matrix(frame).data

    assert list(heatmap.y) == ["legacy", "config v3", charts.MISSING_LABEL]
    assert list(heatmap.x) == ["current"]
    assert [row[0] for row in heatmap.z] == [0.25, 1.0, 0.0]
    assert heatmap.text[1][0] == "2/2 failed"
    assert (heatmap.zmin, heatmap.zmax) == (0, 1)


def test_an_empty_matrix_or_no_path_taken_leaves_cells_blank() -> None:
    assert not charts.migration_path_matrix(pd.DataFrame(columns=list(MIGRATION_PATH_COLUMNS))).data
    frame = pd.DataFrame(
        [["a", "b", 1, 1, 0, 0, 1, 0], ["c", "d", 1, 0, 0, 1, 1, 1]],
        columns=list(MIGRATION_PATH_COLUMNS),
    )
    (heatmap,) = charts.migration_path_matrix(frame).data
    assert math.isnan(heatmap.z[0][1])  # nobody went from a to d
    assert heatmap.text[0][1] == ""


def _timeline_events(**columns: list[object]) -> pd.DataFrame:
    # The columns the timeline reads, typed as in an events frame.
    dtypes = empty_events_frame().dtypes
    return pd.DataFrame(
        {name: pd.Series(values, dtype=dtypes[name]) for name, values in columns.items()}
    )


def test_agent_timeline_sets_migration_events_apart_from_updates() -> None:
    events = _timeline_events(
        occurred_at=[DAY, DAY + timedelta(hours=1), DAY + timedelta(hours=2)],
        category=["migration", "migration", "update"],
        event_type=[
            "migration_detection_success",
            "migration_execution_failed",
            "update_installed",
        ],
        status=["success", "failed", "success"],
        error_message=[None, f"copy failed {HOSTILE}", None],
    )

    figure = charts.agent_timeline(events)

    by_name = {trace.name: trace for trace in figure.data}
    assert set(by_name) == {"migration · success", "migration · failed", "update · success"}
    assert by_name["migration · failed"].marker.symbol == "diamond"
    assert by_name["update · success"].marker.symbol == "circle"
    assert by_name["migration · failed"].marker.color == charts.STATUS_COLOURS["failed"]
    assert list(figure.layout.yaxis.categoryarray)[-1] == "Migration detection success"


def test_agent_sent_text_is_drawn_literally_not_as_html() -> None:
    breakdown = pd.DataFrame(
        {"agent_version": [HOSTILE], "agents": [1], "migrated": [1], "not_needed": [0],
         "pending": [0], "failed": [0], "partial": [0], "never_reported": [0], "stale": [0]}
    )  # fmt: skip
    paths = pd.DataFrame(
        [[HOSTILE, "<b>x</b>", 1, 0, 0, 1, 1, 1]], columns=list(MIGRATION_PATH_COLUMNS)
    )
    timeline = _timeline_events(
        occurred_at=[DAY], category=["migration"], event_type=["migration_execution_failed"],
        status=["failed"], error_message=[HOSTILE],
    )  # fmt: skip

    for figure in (
        charts.state_breakdown(breakdown, by=("agent_version",), title="By version"),
        charts.migration_path_matrix(paths),
        charts.agent_timeline(timeline),
    ):
        text = _text_of(figure)
        assert "<img" not in text
        assert "<b>x" not in text
        assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_plotly_text_escapes_cuts_and_names_missing_values() -> None:
    assert charts.plotly_text("a <b> & c") == "a &lt;b&gt; &amp; c"
    assert charts.plotly_text("x" * 100, limit=10) == "xxxxxxxxx…"
    assert charts.plotly_text(None) == charts.MISSING_LABEL
    assert charts.plotly_text(pd.NA) == charts.MISSING_LABEL
    assert charts.plotly_text("two\nlines") == "two lines"


def test_group_trend_sums_each_bucket() -> None:
    frame = pd.DataFrame(
        {
            "bucket_start": pd.array([DAY, DAY + timedelta(days=1)], dtype=UTC_DTYPE),
            "event_type": pd.Categorical(["update_failed"] * 2, dtype=EVENT_TYPE_DTYPE),
            "events": [4, 0],
        }
    )

    (bars,) = charts.group_trend(frame, bucket="day").data

    assert list(bars.y) == [4, 0]
