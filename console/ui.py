"""Streamlit pieces that more than one page shows: the event detail panel and time pickers.

The rule for agent-sent text holds here as everywhere in the console: it is shown only
through elements that render it literally (st.dataframe cells, st.code, st.text,
st.json), never in a label, caption, title or Markdown string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from console import links, views

TABLE_TIME = st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss", timezone="UTC")


def _minutes(label: str) -> Any:
    return st.column_config.DatetimeColumn(label, format="YYYY-MM-DD HH:mm", timezone="UTC")


# Columns of the tables more than one page shows: the same labels everywhere.
GROUP_COLUMNS = {
    "fingerprint": st.column_config.TextColumn("Group", width="small"),
    "kind": st.column_config.TextColumn("Kind"),
    "event_type": st.column_config.TextColumn("Event type"),
    "agents": st.column_config.NumberColumn("Hosts", help="Distinct agents affected"),
    "events": st.column_config.NumberColumn("Events"),
    "signature": st.column_config.TextColumn("Signature", width="large"),
    "sample_message": st.column_config.TextColumn("Latest message", width="large"),
    "first_event_at": _minutes("First seen"),
    "last_event_at": _minutes("Last seen"),
}
HOST_COLUMNS = {
    "hostname": st.column_config.TextColumn("Host", pinned=True),
    "state": st.column_config.TextColumn("Migration state"),
    "last_seen_at": _minutes("Last check-in"),
    "stale": st.column_config.CheckboxColumn("Stale"),
    "os": st.column_config.TextColumn("OS"),
    "agent_version": st.column_config.TextColumn("Agent version"),
    "last_error_message": st.column_config.TextColumn("Last error", width="large"),
    "last_fingerprint": st.column_config.TextColumn("Error group"),
    "agent_id": None,
}


def field_table(frame: pd.DataFrame, *, alt: str, key: str) -> None:
    """A two-column field/value table (in a container keyed `key`, for tests to find)."""
    with st.container(key=key):
        st.dataframe(
            frame,
            hide_index=True,
            placeholder="",
            height=38 + 35 * max(1, len(frame)),
            column_config={
                "field": st.column_config.TextColumn("Field", width=150),
                "value": st.column_config.TextColumn("Value", width="large"),
            },
            alt=alt,
        )


def error_message(message: Any, *, truncated: bool = False) -> None:
    """The full error message, as literal text with its line breaks."""
    if message is None or message is pd.NA or message == "":
        st.caption("No error message.")
        return
    st.code(str(message), language=None, wrap_lines=True)
    if truncated:
        st.caption("The agent cut this message at 64 KiB.")


def event_detail(event: Mapping[str, Any], *, key: str, show_history_link: bool = True) -> None:
    """Everything about one event: message, steps, fields, system info, links onward."""
    details = event.get("details") if isinstance(event.get("details"), dict) else {}
    left, right = st.columns(2)
    with left:
        st.markdown("**Error message**")
        error_message(event.get("error_message"), truncated=bool(event.get("error_truncated")))
        st.markdown("**Steps**")
        steps = views.steps_frame(details)
        if steps.empty:
            st.caption("The agent reported no steps for this event.")
        else:
            with st.container(key=f"{key}_steps"):
                st.dataframe(steps, hide_index=True, alt="Migration steps")
        traceback = views.traceback_of(details)
        if traceback:
            st.markdown("**Traceback**")
            st.code(traceback, language=None, wrap_lines=True)
    with right:
        field_table(views.event_fields(event), alt="Event fields", key=f"{key}_fields")
        with st.container(horizontal=True):
            agent_id = event.get("agent_id")
            if show_history_link and agent_id:
                st.page_link(
                    links.HISTORY_PAGE,
                    label="This host's history",
                    icon=":material/history:",
                    query_params=links.history_of(agent_id),
                )
            fingerprint = event.get("fingerprint")
            if fingerprint:
                st.page_link(
                    links.GROUPS_PAGE,
                    label="Its error group",
                    icon=":material/stacks:",
                    query_params=links.group_view(str(fingerprint)),
                )
    st.markdown("**System info** (as the agent reported it with this event)")
    st.json(event.get("system_info") or {}, expanded=1)
    st.markdown("**All details**")
    st.json(details, expanded=False)


def time_range_picker(*, key: str, options: tuple[str, ...], label: str = "Time range") -> str:
    """A preset time range (the widget's state lives under `key`)."""
    choice = st.segmented_control(
        label,
        options,
        format_func=lambda name: links.TIME_RANGE_LABELS[name],
        key=key,
        required=True,
    )
    return str(choice)


def load_url_state(name: str, url_params: Mapping[str, str], inputs: Mapping[str, Any]) -> bool:
    """Put a view that came from the URL into its widgets; True when that happened.

    The URL changes under a page when a link, a reload or the browser's history opens
    it; then the URL wins. Otherwise the widgets hold the view and `save_url_state`
    writes it back, so the address bar can always be copied and shared.
    """
    if st.session_state.get(f"{name}_url") == dict(url_params):
        return False
    for key, value in inputs.items():
        st.session_state[key] = value
    return True


def save_url_state(name: str, params: Mapping[str, str]) -> None:
    st.query_params.from_dict(dict(params))
    st.session_state[f"{name}_url"] = dict(params)
