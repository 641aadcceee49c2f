"""Query results shaped for the console's tables and detail panels, as pure functions.

Everything an agent sent stays a value in a cell (or a JSON/code block on the page):
these functions only choose, order, rename and badge columns. Badges and labels are
built from the event vocabulary and server-side numbers, never from agent text, so they
are safe to use where Streamlit renders Markdown (expander labels, captions).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from models.vocabulary import Category, EventType, MigrationState, Status

# Symbols that common fonts have (no colour-emoji font needed), shown in table cells;
# the timeline draws the same shapes: diamonds for migration, circles for update events.
CATEGORY_BADGES = {
    Category.MIGRATION.value: "◆ migration",
    Category.UPDATE.value: "● update",
}
# Material icons for places that render them (expanders, buttons), by category.
CATEGORY_ICONS = {
    Category.MIGRATION.value: ":material/swap_horiz:",
    Category.UPDATE.value: ":material/system_update_alt:",
}
STATUS_BADGES = {
    Status.SUCCESS.value: "✔ success",
    Status.WARNING.value: "▲ warning",
    Status.FAILED.value: "✖ failed",
}
# Markdown colour directives for our own status words (safe: no agent text inside).
STATUS_COLOURS = {
    Status.SUCCESS.value: "green",
    Status.WARNING.value: "orange",
    Status.FAILED.value: "red",
}
STATE_LABELS = {
    MigrationState.MIGRATED: "Migrated",
    MigrationState.NOT_NEEDED: "Not needed",
    MigrationState.PENDING: "Pending",
    MigrationState.FAILED: "Failed",
    MigrationState.PARTIAL: "Partial",
    MigrationState.NEVER_REPORTED: "Never reported",
}
STATE_BADGES = {
    MigrationState.MIGRATED.value: "✔ migrated",
    MigrationState.NOT_NEEDED.value: "○ not needed",
    MigrationState.PENDING.value: "▷ pending",
    MigrationState.FAILED.value: "✖ failed",
    MigrationState.PARTIAL.value: "▲ partial",
    MigrationState.NEVER_REPORTED.value: "? never reported",
}
MIGRATION_ROW = "background-color: #e8f0fe"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def event_type_label(event_type: Any) -> str:
    """`migration_execution_failed` -> `Migration execution failed` (vocabulary only)."""
    if event_type not in EventType._value2member_map_:
        return "Unknown event type"
    return str(event_type).replace("_", " ").capitalize()


def _badges(values: pd.Series, badges: Mapping[str, str]) -> pd.Series:
    return values.astype("string").map(lambda v: badges.get(v, v) if isinstance(v, str) else v)


def events_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One events page for st.dataframe: badges for kind and status, no JSON columns."""
    table = pd.DataFrame(
        {
            "event_pk": frame["event_pk"],
            "occurred_at": frame["occurred_at"],
            "kind": _badges(frame["category"], CATEGORY_BADGES),
            "event_type": frame["event_type"].astype("string"),
            "status": _badges(frame["status"], STATUS_BADGES),
            "hostname": frame["hostname"],
            "error_message": frame["error_message"],
            "agent_version": frame["agent_version"],
            "migration_from": frame["migration_from"],
            "migration_to": frame["migration_to"],
            "fingerprint": frame["fingerprint"],
        }
    )
    return table.reset_index(drop=True)


def style_events(table: pd.DataFrame) -> Any:
    """Row tints that set migration events apart from update events (small pages only)."""

    def tint(row: pd.Series) -> list[str]:
        migration = str(row["kind"]).endswith("migration")
        return [MIGRATION_ROW if migration else ""] * len(row)

    return table.style.apply(tint, axis=1)


def _text(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, datetime):
        return value.strftime(TIME_FORMAT)
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _field_table(rows: list[tuple[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"field": [name for name, _ in rows], "value": [_text(value) for _, value in rows]},
        dtype="string",
    )


def event_fields(event: Mapping[str, Any]) -> pd.DataFrame:
    """Who, when, what and where of one event, as a two-column table."""
    raw_details = event.get("details")
    details: Mapping[str, Any] = raw_details if isinstance(raw_details, dict) else {}
    rows: list[tuple[str, Any]] = [
        ("Host", event.get("hostname")),
        ("Agent id", event.get("agent_id")),
        ("Occurred at", event.get("occurred_at")),
        ("Received at", event.get("received_at")),
        ("Kind", CATEGORY_BADGES.get(str(event.get("category")), event.get("category"))),
        ("Event type", event.get("event_type")),
        ("Status", STATUS_BADGES.get(str(event.get("status")), event.get("status"))),
        ("Severity", event.get("severity")),
        ("Migration from", event.get("migration_from")),
        ("Migration to", event.get("migration_to")),
        ("Failed step", details.get("failed_step")),
        ("Backup path", details.get("backup_path")),
        ("Path", details.get("path")),
        ("Errno", _errno(details)),
        ("Exception", details.get("exception_type")),
        ("Error group", event.get("fingerprint")),
        ("Agent version (now)", event.get("agent_version")),
        ("Event id", event.get("event_id")),
    ]
    if event.get("error_truncated"):
        rows.append(("Message", "truncated by the agent at 64 KiB"))
    return _field_table([(name, value) for name, value in rows if _text(value) != ""])


def _errno(details: Mapping[str, Any]) -> str | None:
    errno, name = details.get("errno"), details.get("errno_name")
    if errno is None and name is None:
        return None
    return " ".join(
        str(part) for part in (errno, f"({name})" if name else None) if part is not None
    )


STEP_COLUMNS = ("step", "status", "started_at", "finished_at", "reason", "error")


def steps_frame(details: Mapping[str, Any] | None) -> pd.DataFrame:
    """The steps a migration went through, one row each, whatever shape the agent sent.

    Execution events carry `steps` as objects (name, status, times, reason, error);
    detection events carry the names of the steps needed and already done. Anything
    else in those keys is shown as text rather than dropped.
    """
    details = details if isinstance(details, Mapping) else {}
    failed_step = details.get("failed_step")
    rows: list[dict[str, str]] = []
    steps = details.get("steps")
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, Mapping):
                rows.append({column: _text(step.get("name" if column == "step" else column))
                             for column in STEP_COLUMNS})  # fmt: skip
            else:
                rows.append(dict.fromkeys(STEP_COLUMNS, "") | {"step": _text(step)})
    else:
        done = details.get("steps_recorded_done")
        done_names = {str(s) for s in done} if isinstance(done, list) else set()
        needed = details.get("steps_needed")
        for name in needed if isinstance(needed, list) else []:
            status = "done earlier" if str(name) in done_names else "needed"
            rows.append(dict.fromkeys(STEP_COLUMNS, "") | {"step": _text(name), "status": status})
    if failed_step and not any(row["step"] == str(failed_step) for row in rows):
        rows.append(
            dict.fromkeys(STEP_COLUMNS, "") | {"step": _text(failed_step), "status": "failed"}
        )
    frame = pd.DataFrame(rows, columns=list(STEP_COLUMNS), dtype="string")
    return frame.loc[
        :, [c for c in STEP_COLUMNS if (frame[c] != "").any() or c in ("step", "status")]
    ]


def traceback_of(details: Mapping[str, Any] | None) -> str | None:
    if not isinstance(details, Mapping):
        return None
    value = details.get("traceback")
    return value if isinstance(value, str) and value.strip() else None


def event_heading(row: Mapping[str, Any]) -> str:
    """An expander label for one event: time, type and status from the vocabulary only.

    Safe where Markdown renders: the event type and status are checked against the
    vocabulary, and the time is formatted from a timestamp, so no agent text gets in.
    """
    label = event_type_label(row.get("event_type"))
    status = str(row.get("status"))
    status_text = f":{STATUS_COLOURS[status]}[{status}]" if status in STATUS_COLOURS else ""
    when = row.get("occurred_at")
    when_text = when.strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, datetime) else ""
    return " · ".join(part for part in (when_text, label, status_text) if part)


def agent_fields(agent: Mapping[str, Any]) -> pd.DataFrame:
    """One agent's identity and migration summary as a two-column table."""
    rows: list[tuple[str, Any]] = [
        ("Host", agent.get("hostname")),
        ("Agent id", agent.get("agent_id")),
        ("Machine id", agent.get("machine_id")),
        ("OS", " ".join(_text(agent.get(k)) for k in ("os_type", "os_version")).strip()),
        ("Architecture", agent.get("os_architecture")),
        ("Agent version", agent.get("agent_version")),
        ("Registered at", agent.get("created_at")),
        ("Last check-in", agent.get("last_seen_at") or "never"),
        ("Stale", "yes" if agent.get("stale") else "no"),
        ("Revoked", "yes" if agent.get("revoked") else "no"),
        ("Migration state", STATE_BADGES.get(str(agent.get("migration_state")), "")),
        ("State since", agent.get("migration_state_at")),
        ("Last migration event", agent.get("last_migration_event_type")),
        ("Last migration from", agent.get("last_migration_from")),
        ("Last migration to", agent.get("last_migration_to")),
        ("Last error group", agent.get("last_fingerprint")),
        ("Events", agent.get("events")),
        ("Migration events", agent.get("migration_events")),
        ("Failed events", agent.get("failures")),
        ("First event", agent.get("first_event_at")),
        ("Last event", agent.get("last_event_at")),
    ]
    return _field_table([(name, value) for name, value in rows if _text(value) != ""])


def hosts_table(fleet: pd.DataFrame) -> pd.DataFrame:
    """Fleet rows for a host list: state badge, check-in, last error and its group."""
    return pd.DataFrame(
        {
            "hostname": fleet["hostname"],
            "state": _badges(fleet["migration_state"], STATE_BADGES),
            "last_seen_at": fleet["last_seen_at"],
            "stale": fleet["stale"],
            "os": fleet["os_type"] + " " + fleet["os_version"],
            "agent_version": fleet["agent_version"],
            "last_error_message": fleet["last_error_message"],
            "last_fingerprint": fleet["last_fingerprint"],
            "agent_id": fleet["agent_id"],
        }
    ).reset_index(drop=True)


def groups_table(groups: pd.DataFrame) -> pd.DataFrame:
    """Error groups for a table: kind, counts, signature, sample, times, then the group id."""
    return pd.DataFrame(
        {
            "kind": _badges(groups["category"], CATEGORY_BADGES),
            "event_type": groups["event_type"].astype("string"),
            "agents": groups["agents"],
            "events": groups["events"],
            "signature": groups["signature"],
            "sample_message": groups["sample_message"],
            "first_event_at": groups["first_event_at"],
            "last_event_at": groups["last_event_at"],
            "fingerprint": groups["fingerprint"],
        }
    ).reset_index(drop=True)


def group_hosts_table(hosts: pd.DataFrame, *, migration_group: str | None) -> pd.DataFrame:
    """The hosts of one error group, most recently failing first.

    For a migration group (`migration_group` is its fingerprint), `still_failing` says
    whether the host's latest migration outcome is still this error, so hosts that have
    recovered stand out; update failures have no such state and get no such column.
    """
    table = pd.DataFrame(
        {
            "hostname": hosts["hostname"],
            "events": hosts["events"],
            "first_event_at": hosts["first_event_at"],
            "last_event_at": hosts["last_event_at"],
            "state_now": _badges(hosts["migration_state"], STATE_BADGES),
            "last_seen_at": hosts["last_seen_at"],
            "os": hosts["os_type"] + " " + hosts["os_version"],
            "agent_version": hosts["agent_version"],
            "sample_message": hosts["sample_message"],
            "agent_id": hosts["agent_id"],
        }
    )
    if migration_group is not None:
        still = hosts["last_fingerprint"].fillna("") == migration_group
        table.insert(4, "still_failing", still.astype(bool))
    return table.reset_index(drop=True)


def age_text(moment: datetime | None, *, now: datetime) -> str:
    """How long ago, in the largest whole unit: `45 s ago`, `12 min ago`, `3 h ago`, `2 d ago`."""
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def optional_text(value: Any) -> str | None:
    """A frame cell as str, or None when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return None
    return str(value)


def row_dict(frame: pd.DataFrame, position: int) -> dict[str, Any]:
    """One row of a query frame as plain Python values (None for missing, datetimes)."""
    row: dict[str, Any] = {}
    for name, value in frame.iloc[position].items():
        if isinstance(value, pd.Timestamp):
            row[str(name)] = value.to_pydatetime()
        elif not isinstance(value, dict | list) and pd.isna(value):
            row[str(name)] = None
        else:
            row[str(name)] = value
    return row
