"""Plotly figures for the console, built from query-layer frames by pure functions.

Plotly renders a small HTML subset (`<b>`, `<br>`, `<a href>`) inside any text it draws,
axis categories and hover labels included, and decodes HTML entities. Agent-sent labels
(OS and agent versions, migration paths, error messages) therefore go through
`plotly_text`, which turns `<`, `>` and `&` into entities: they are drawn literally.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from console.views import STATE_LABELS, event_type_label
from models.analytics import FleetSummary
from models.vocabulary import Category, EventType, MigrationState, Status

STATE_COLOURS = {
    MigrationState.MIGRATED: "#2e7d32",
    MigrationState.NOT_NEEDED: "#78909c",
    MigrationState.PENDING: "#f9a825",
    MigrationState.FAILED: "#c62828",
    MigrationState.PARTIAL: "#ef6c00",
    MigrationState.NEVER_REPORTED: "#bdbdbd",
}
# The order in which states read best, from done to trouble to unknown.
STATE_ORDER = (
    MigrationState.MIGRATED,
    MigrationState.NOT_NEEDED,
    MigrationState.PENDING,
    MigrationState.PARTIAL,
    MigrationState.FAILED,
    MigrationState.NEVER_REPORTED,
)
EVENT_TYPE_COLOURS = {
    EventType.MIGRATION_DETECTION_FAILED: "#ad1457",
    EventType.MIGRATION_EXECUTION_FAILED: "#c62828",
    EventType.UPDATE_FAILED: "#5e35b1",
}
STATUS_COLOURS = {Status.SUCCESS: "#2e7d32", Status.WARNING: "#ef6c00", Status.FAILED: "#c62828"}
CATEGORY_SYMBOLS = {Category.MIGRATION: "diamond", Category.UPDATE: "circle"}
# Timeline rows: migration events above update events, in the order a migration runs.
TIMELINE_ORDER = tuple(EventType)
MISSING_LABEL = "(not reported)"
MAX_LABEL = 60
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def plotly_text(value: Any, *, limit: int = MAX_LABEL) -> str:
    """An agent-sent value as text plotly draws literally, cut to `limit` characters."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return MISSING_LABEL
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=False)


def _empty(title: str, message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(
        title=title, xaxis_visible=False, yaxis_visible=False, height=260, margin=_MARGIN
    )
    return figure


def status_distribution(summary: FleetSummary) -> go.Figure:
    """Agents per migration state, one coloured bar each (in STATE_ORDER)."""
    counts = [summary.by_state.get(state, 0) for state in STATE_ORDER]
    total = summary.agents
    shares = [f"{count} ({count / total:.0%})" if total else "0" for count in counts]
    figure = go.Figure(
        go.Bar(
            x=counts,
            y=[STATE_LABELS[state] for state in STATE_ORDER],
            orientation="h",
            marker_color=[STATE_COLOURS[state] for state in STATE_ORDER],
            text=shares,
            textposition="auto",
            customdata=[state.value for state in STATE_ORDER],
            hovertemplate="%{y}: %{x} agents<extra></extra>",
        )
    )
    figure.update_layout(
        title="Agents by migration state",
        yaxis={"autorange": "reversed"},
        xaxis_title="agents",
        height=300,
        margin=_MARGIN,
        showlegend=False,
    )
    return figure


def failures_over_time(frame: pd.DataFrame, *, bucket: str) -> go.Figure:
    """Failed events per hour or day, stacked by event type.

    `frame` is `failures_over_time_frame` (bucket_start, event_type, failures).
    """
    title = f"Failures per {bucket} by event type"
    if frame.empty or int(frame["failures"].sum()) == 0:
        return _empty(title, "No failures in this period")
    figure = go.Figure()
    for event_type in EventType:
        rows = frame[frame["event_type"] == event_type.value]
        if rows.empty:
            continue
        figure.add_trace(
            go.Bar(
                x=rows["bucket_start"],
                y=rows["failures"],
                name=event_type_label(event_type),
                marker_color=EVENT_TYPE_COLOURS.get(event_type, "#757575"),
                hovertemplate="%{x}<br>%{y} failures<extra>%{fullData.name}</extra>",
            )
        )
    figure.update_layout(
        title=title,
        barmode="stack",
        yaxis_title="failed events",
        height=320,
        margin=_MARGIN,
        legend={"orientation": "h", "y": -0.15},
    )
    return figure


def _top_labels(labels: pd.Series, weights: pd.Series, top: int) -> pd.Series:
    """Labels outside the `top` heaviest become one `other` row, so a chart stays legible."""
    order = weights.groupby(labels).sum().sort_values(ascending=False)
    keep = set(order.index[:top])
    return labels.where(labels.isin(keep), f"other ({len(order) - len(keep)})")


def state_breakdown(
    frame: pd.DataFrame, *, by: Sequence[str], title: str, top: int = 12
) -> go.Figure:
    """Agents per state for each value of `by` (a `breakdown_frame`), as stacked bars."""
    if frame.empty:
        return _empty(title, "No agents")
    labels = frame[list(by)].astype("string").fillna(MISSING_LABEL).agg(" ".join, axis=1)
    labels = _top_labels(labels, frame["agents"], top)
    states = [state.value for state in STATE_ORDER]
    grouped = frame.assign(label=labels).groupby("label", sort=False)[[*states, "agents"]].sum()
    grouped = grouped.sort_values("agents", ascending=True)
    shown = [plotly_text(label) for label in grouped.index]
    figure = go.Figure()
    for state in STATE_ORDER:
        figure.add_trace(
            go.Bar(
                x=grouped[state.value],
                y=shown,
                orientation="h",
                name=STATE_LABELS[state],
                marker_color=STATE_COLOURS[state],
                hovertemplate="%{y}: %{x}<extra>%{fullData.name}</extra>",
            )
        )
    figure.update_layout(
        title=title,
        barmode="stack",
        height=max(280, 90 + 30 * len(grouped)),
        margin=_MARGIN,
        legend={"orientation": "h", "y": -0.15, "traceorder": "normal"},
    )
    return figure


def migration_path_matrix(frame: pd.DataFrame, *, top: int = 12) -> go.Figure:
    """From -> to migration paths, each cell coloured by its failure rate (0 green, 1 red).

    `frame` is `migration_path_frame`. Cells show failures/attempts; paths nobody took
    stay blank. Only the `top` busiest from and to labels get a row or column.
    """
    title = "Migration paths: failure rate (failures / attempts)"
    if frame.empty:
        return _empty(title, "No migration attempts in this period")
    data = frame.assign(
        source=frame["migration_from"].astype("string").fillna(MISSING_LABEL),
        target=frame["migration_to"].astype("string").fillna(MISSING_LABEL),
    )
    data = data.assign(
        source=_top_labels(data["source"], data["attempts"], top),
        target=_top_labels(data["target"], data["attempts"], top),
    )
    cells = data.groupby(["source", "target"], sort=False)[["attempts", "failures"]].sum()
    sources = list(cells.groupby(level=0)["attempts"].sum().sort_values(ascending=False).index)
    targets = list(cells.groupby(level=1)["attempts"].sum().sort_values(ascending=False).index)
    rates = np.full((len(sources), len(targets)), np.nan)
    texts = [["" for _ in targets] for _ in sources]
    for (source, target), row in cells.iterrows():
        i, j = sources.index(source), targets.index(target)
        attempts, failures = int(row["attempts"]), int(row["failures"])
        rates[i, j] = failures / attempts if attempts else np.nan
        texts[i][j] = f"{failures}/{attempts} failed"
    figure = go.Figure(
        go.Heatmap(
            z=rates,
            x=[plotly_text(t) for t in targets],
            y=[plotly_text(s) for s in sources],
            text=texts,
            texttemplate="%{text}",
            textfont={"size": 14},
            zmin=0,
            zmax=1,
            colorscale=[[0.0, "#2e7d32"], [0.5, "#f9a825"], [1.0, "#c62828"]],
            colorbar={"title": "failure rate", "tickformat": ".0%"},
            hovertemplate="from %{y}<br>to %{x}<br>%{text} (%{z:.0%})<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="to",
        yaxis_title="from",
        yaxis={"autorange": "reversed"},
        height=max(300, 120 + 40 * len(sources)),
        margin=_MARGIN,
    )
    return figure


def group_trend(frame: pd.DataFrame, *, bucket: str) -> go.Figure:
    """One error group's events per hour or day (`events_over_time_frame` of the group)."""
    title = f"Events of this group per {bucket}"
    if frame.empty:
        return _empty(title, "No events in this period")
    per_bucket = frame.groupby("bucket_start", sort=True)["events"].sum()
    figure = go.Figure(
        go.Bar(
            x=per_bucket.index,
            y=per_bucket.to_numpy(),
            marker_color=EVENT_TYPE_COLOURS[EventType.MIGRATION_EXECUTION_FAILED],
            hovertemplate="%{x}<br>%{y} events<extra></extra>",
        )
    )
    figure.update_layout(title=title, yaxis_title="events", height=260, margin=_MARGIN)
    return figure


def agent_timeline(events: pd.DataFrame) -> go.Figure:
    """One host's events over time: a row per event type, colour by status, shape by kind.

    Migration events are diamonds on the upper rows, update events circles below them,
    so the two read apart at a glance; hovering shows the start of the error message.
    """
    title = ""
    if events.empty:
        return _empty(title, "No events")
    figure = go.Figure()
    for category in Category:
        for status in Status:
            rows = events[
                (events["category"] == category.value) & (events["status"] == status.value)
            ]
            if rows.empty:
                continue
            messages = [plotly_text(m, limit=120) if m is not None and m is not pd.NA else ""
                        for m in rows["error_message"]]  # fmt: skip
            figure.add_trace(
                go.Scatter(
                    x=rows["occurred_at"],
                    y=[event_type_label(t) for t in rows["event_type"].astype(str)],
                    mode="markers",
                    name=f"{category.value} · {status.value}",
                    marker={
                        "symbol": CATEGORY_SYMBOLS[category],
                        "color": STATUS_COLOURS[status],
                        "size": 13 if category is Category.MIGRATION else 9,
                        "line": {"width": 1, "color": "#ffffff"},
                    },
                    customdata=messages,
                    hovertemplate="%{x}<br>%{y}<br>%{customdata}<extra>%{fullData.name}</extra>",
                )
            )
    present = set(events["event_type"].astype(str))
    rows_order = [event_type_label(t) for t in TIMELINE_ORDER if t.value in present]
    figure.update_layout(
        title=title,
        yaxis={"categoryorder": "array", "categoryarray": rows_order[::-1]},
        height=max(260, 100 + 36 * len(rows_order)),
        margin=_MARGIN,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return figure
