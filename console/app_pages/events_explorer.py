"""Events explorer: every event, filtered in SQL, paged, with details and a full download."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from datetime import UTC, datetime

import streamlit as st

from console import data, links, ui, views
from models.export import ExportFormat
from models.vocabulary import EventType, Severity, Status

database = data.database_url()
STYLED_ROWS = 500  # pandas Styler costs per cell: row tints only on pages this small

st.title("Events explorer")

# The URL is the source of truth for the view: a link, a reload or the browser's history
# load it into the widgets; otherwise the widgets hold it and the URL follows them.
url_view = links.ExplorerView.from_query_params(st.query_params.to_dict())
if ui.load_url_state("explorer", url_view.to_query_params(), links.explorer_inputs(url_view)):
    # A view loaded from the URL keeps its page; only a change made here starts at page 1.
    st.session_state["explorer_filters"] = None
    st.session_state["explorer_selection"] = st.session_state.get("explorer_selection", 0) + 1
st.session_state.setdefault("explorer_selection", 0)
event_pk = url_view.event_pk


def turn_page(widget_key: str) -> None:
    st.session_state["ex_page"] = st.session_state[widget_key]


def clear_filters() -> None:
    st.query_params.clear()


def close_event() -> None:
    st.query_params.pop("event", None)
    st.session_state["explorer_selection"] = st.session_state.get("explorer_selection", 0) + 1


with st.container(border=True):
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.segmented_control(
            "Kind",
            list(links.CATEGORY_CHOICES),
            format_func=links.category_label,
            key="ex_category",
            required=True,
        )
        ui.time_range_picker(key="ex_range", options=(*links.TIME_RANGES, links.CUSTOM_RANGE))
    if st.session_state.get("ex_range") == links.CUSTOM_RANGE:
        st.session_state.setdefault("ex_since", None)
        st.session_state.setdefault("ex_until", None)
        with st.container(horizontal=True):
            st.datetime_input("From (UTC)", key="ex_since", step=60)
            st.datetime_input("To (UTC, exclusive)", key="ex_until", step=60)
    with st.container(horizontal=True):
        st.multiselect(
            "Event type", [t.value for t in EventType], key="ex_types", placeholder="Any type"
        )
        st.pills("Status", [s.value for s in Status], selection_mode="multi", key="ex_statuses")
        st.pills(
            "Severity", [s.value for s in Severity], selection_mode="multi", key="ex_severities"
        )
    with st.container(horizontal=True):
        st.text_input("Host contains", key="ex_host", max_chars=255)
        st.text_input("Error text contains", key="ex_error_text", max_chars=255)
        st.text_input(
            "Agent version", key="ex_version", max_chars=255, help="Exact, or a pattern with *"
        )
        st.text_input("Error group", key="ex_fingerprint", max_chars=64)
    with st.expander("More filters", icon=":material/tune:"), st.container(horizontal=True):
        st.text_input(
            "Migration from", key="ex_from", max_chars=255, help="Exact, or a pattern with *"
        )
        st.text_input("Migration to", key="ex_to", max_chars=255, help="Exact, or a pattern with *")
        st.text_input("Agent id", key="ex_agent", help="One or more UUIDs, comma-separated")

inputs = {key: st.session_state.get(key) for key in links.explorer_inputs(url_view)}
view, problems = links.explorer_view_from_inputs(inputs, event_pk=event_pk)
if problems:
    st.warning(
        "Left out, as they cannot be used: " + ", ".join(problems) + ".", icon=":material/warning:"
    )
filters = view.query_filters()

total = data.count_events(database, filters)
pages = links.page_count(total, view.page_size)
# The page number is kept under "ex_page" (not a widget key: st.pagination always has a
# default, which must not meet a value set through Session State). New filters start at
# the first page; a page beyond the end shows the last one.
filter_params = {k: v for k, v in view.to_query_params().items() if k not in ("page", "event")}
if st.session_state.get("explorer_filters") not in (None, filter_params):
    st.session_state["ex_page"] = 1
st.session_state["explorer_filters"] = filter_params
page = min(max(1, int(st.session_state.get("ex_page") or 1)), pages)
st.session_state["ex_page"] = page
view = dataclasses.replace(view, page=page)

first = (page - 1) * view.page_size
# The table shows no JSON column; a selected event's details are read on their own.
events = data.events_page(database, filters, limit=view.page_size, offset=first, json_as="text")
with st.container(horizontal=True, vertical_alignment="center"):
    if total:
        st.caption(f"{total:,} events match · showing {first + 1:,} to {first + len(events):,}")
    else:
        st.caption("No events match these filters.")
    st.space("stretch")
    st.button(
        "Clear filters", icon=":material/filter_alt_off:", on_click=clear_filters, key="ex_clear"
    )
    with st.popover("Download all matching", icon=":material/download:"):
        chosen_format = st.segmented_control(
            "Format", ["csv", "parquet"], key="ex_format", required=True, default="csv"
        )
        fmt: ExportFormat = "parquet" if chosen_format == "parquet" else "csv"
        too_many = total > data.MAX_DOWNLOAD_ROWS
        st.download_button(
            f"Download {total:,} events as {fmt.upper()}",
            # Made when the button is pressed, from the filters shown now.
            data=functools.partial(data.export_file, database, filters, fmt),
            file_name=data.export_file_name(fmt, now=datetime.now(UTC)),
            mime=data.MIME_TYPES[fmt],
            icon=":material/download:",
            on_click="ignore",
            disabled=too_many or total == 0,
            key="ex_download",
        )
        if too_many:
            st.caption(f"More than {data.MAX_DOWNLOAD_ROWS:,} events: export them on the server.")
        st.caption("The same rows from the command line:")
        st.code(links.export_command(filters, fmt), language="bash", wrap_lines=True)

table = views.events_table(events)
# A new table (other filters or page) or a closed event starts without a selected row.
table_identity = [filter_params, st.session_state["explorer_selection"]]
digest = hashlib.sha256(json.dumps(table_identity, sort_keys=True).encode()).hexdigest()[:12]
# The event a link opened is shown selected when it is on this page.
linked_rows = table.index[table["event_pk"] == view.event_pk].tolist()
selection = st.dataframe(
    views.style_events(table) if len(table) <= STYLED_ROWS else table,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    selection_default={"selection": {"rows": linked_rows[:1]}} if linked_rows else None,
    placeholder="",
    key=f"ex_table_{digest}_{page}",
    height=min(420, 38 + 35 * max(3, len(table))),
    column_config={
        "event_pk": None,
        "occurred_at": st.column_config.DatetimeColumn(
            "Time (UTC)", format="YYYY-MM-DD HH:mm:ss", timezone="UTC", pinned=True
        ),
        "kind": st.column_config.TextColumn("Kind"),
        "event_type": st.column_config.TextColumn("Event type"),
        "status": st.column_config.TextColumn("Status", width="small"),
        "hostname": st.column_config.TextColumn("Host"),
        "error_message": st.column_config.TextColumn("Error", width="large"),
        "agent_version": st.column_config.TextColumn("Agent version", width="small"),
        "migration_from": st.column_config.TextColumn("From"),
        "migration_to": st.column_config.TextColumn("To"),
        "fingerprint": st.column_config.TextColumn("Error group", width="small"),
    },
    alt="Events matching the filters, newest first",
)
with st.container(horizontal=True, vertical_alignment="center"):
    if pages > 1:
        # A new table (filters, page count, a view from the URL) gets a new widget.
        pager_key = f"ex_pager_{digest}_{pages}"
        st.pagination(pages, default=page, key=pager_key, on_change=turn_page, args=(pager_key,))
    st.selectbox(
        "Rows per page",
        links.PAGE_SIZES,
        key="ex_size",
        format_func=lambda n: f"{n:,} rows per page",
        label_visibility="collapsed",
        width=200,
    )

rows = selection.selection.rows if selection else []
if rows and rows[0] < len(events):
    view = dataclasses.replace(view, event_pk=int(events.iloc[rows[0]]["event_pk"]))

ui.save_url_state("explorer", view.to_query_params())

if view.event_pk is not None:
    st.divider()
    with st.container(horizontal=True, vertical_alignment="center"):
        st.subheader("Event details")
        st.button("Close", icon=":material/close:", on_click=close_event, key="ex_close")
    detail = data.event_detail(database, view.event_pk)
    if detail is None:
        st.warning("This event does not exist (any more).", icon=":material/warning:")
    else:
        ui.event_detail(detail, key="ex_detail")
else:
    st.caption("Select a row to see the event's full error message, steps and system info.")
