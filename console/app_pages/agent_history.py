"""Agent history: find a host; its identity, state, and timeline of events with details."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import streamlit as st

from console import charts, data, links, ui, views
from models.analytics import EventFilters
from models.vocabulary import Category, MigrationState

database = data.database_url()
SEARCH_LIMIT = 200
TIMELINE_LIMIT = 500

st.title("Agent history")

url_view = links.HistoryView.from_query_params(st.query_params.to_dict())
if ui.load_url_state(
    "history",
    url_view.to_query_params(),
    {"history_migration_only": url_view.migration_only, "history_page": url_view.page},
):
    st.session_state["history_shown"] = None  # a page from the URL is kept
agent_id = url_view.agent_id

search = st.text_input(
    "Find a host",
    key="history_search",
    placeholder="Part of a host name",
    max_chars=255,
    icon=":material/search:",
)
if search.strip() or agent_id is None:
    hosts, total = data.fleet_hosts(database, host=search.strip() or None, limit=SEARCH_LIMIT)
    if hosts.empty:
        st.info("No host matches.", icon=":material/search_off:")
    else:
        picked = st.dataframe(
            views.hosts_table(hosts),
            hide_index=True,
            placeholder="",
            on_select="rerun",
            selection_mode="single-row",
            # Another search is another table, with no row selected yet.
            key="history_hosts_" + hashlib.sha256(search.strip().encode()).hexdigest()[:12],
            height=min(400, 38 + 35 * len(hosts)),
            column_config=ui.HOST_COLUMNS,
            alt="Hosts matching the search",
        )
        caption = (
            f"{total:,} hosts match."
            if total <= len(hosts)
            else (f"{total:,} hosts match; the first {len(hosts):,} by name are listed.")
        )
        st.caption(caption + " Select one to see its history.")
        rows = picked.selection.rows if picked else []
        if rows:
            agent_id = links.agent_param({"agent": str(hosts.iloc[rows[0]]["agent_id"])})

if agent_id is None:
    ui.save_url_state("history", links.HistoryView().to_query_params())
    st.stop()

agent = data.agent_detail(database, agent_id)
if agent is None:
    st.warning("There is no agent with this id.", icon=":material/warning:")
    ui.save_url_state("history", links.HistoryView().to_query_params())
    st.stop()

st.divider()
state = MigrationState(agent["migration_state"])
seen = agent.get("last_seen_at")
st.caption("Host")
st.code(agent["hostname"], language=None)
state_column, seen_column, events_column, failures_column = st.columns(4)
state_column.metric(
    "Migration state",
    views.STATE_LABELS[state],
    help="From the host's latest migration event.",
    border=True,
    height="stretch",
)
seen_column.metric(
    "Last check-in",
    views.age_text(seen, now=datetime.now(UTC)),
    delta="stale" if agent.get("stale") else "checking in",
    delta_color="inverse" if agent.get("stale") else "off",
    delta_arrow="off",
    help=seen.strftime("%Y-%m-%d %H:%M:%S UTC") if seen else "Never checked in.",
    border=True,
    height="stretch",
)
events_column.metric("Events", f"{agent['events']:,}", border=True, height="stretch")
failures_column.metric("Failed events", f"{agent['failures']:,}", border=True, height="stretch")

identity, system = st.columns(2)
with identity:
    st.markdown("**Identity and migration state**")
    ui.field_table(views.agent_fields(agent), alt="The host's identity", key="history_fields")
    if agent.get("last_error_message"):
        st.markdown("**Latest migration error**")
        ui.error_message(agent["last_error_message"])
with system:
    st.markdown("**System info** (latest check-in)")
    st.json(agent.get("system_info") or {}, expanded=2)
with st.container(horizontal=True):
    st.page_link(
        links.EVENTS_PAGE,
        label="This host's events in the explorer",
        icon=":material/manage_search:",
        query_params=links.events_for_agent(agent_id),
    )
    if agent.get("last_fingerprint"):
        st.page_link(
            links.GROUPS_PAGE,
            label="Its latest error group",
            icon=":material/stacks:",
            query_params=links.group_view(str(agent["last_fingerprint"])),
        )

st.subheader("Timeline")
migration_only = st.toggle("Migration events only", key="history_migration_only")
filters = EventFilters(
    agent_ids=(agent_id,), category=Category.MIGRATION if migration_only else None
)
recent = data.events_page(database, filters, limit=TIMELINE_LIMIT)
st.plotly_chart(
    charts.agent_timeline(recent),
    key="history_timeline",
    alt="The host's events over time; migration events as diamonds",
)
st.caption(
    "◆ migration events · ● update events; green succeeded, orange warned, red failed."
    + (f" The newest {TIMELINE_LIMIT} events are drawn." if len(recent) == TIMELINE_LIMIT else "")
)

total = data.count_events(database, filters)
pages = links.page_count(total, links.HISTORY_PAGE_SIZE)
# "history_page" is plain state, not the pagination widget's key (that widget always has
# a default, which must not meet a value set through Session State). Another host or the
# migration-only switch starts at the first page.
shown = [str(agent_id), migration_only]
if st.session_state.get("history_shown") not in (None, shown):
    st.session_state["history_page"] = 1
st.session_state["history_shown"] = shown
page = min(max(1, int(st.session_state.get("history_page") or 1)), pages)
st.session_state["history_page"] = page
events = data.events_page(
    database, filters, limit=links.HISTORY_PAGE_SIZE, offset=(page - 1) * links.HISTORY_PAGE_SIZE
)
if events.empty:
    st.caption("No events to show.")
# The newest failure or warning on the first page opens by itself: it is what one came for.
trouble = events.index[events["status"] != "success"] if page == 1 else events.index[:0]
opened = trouble[0] if len(trouble) else None
for position in range(len(events)):
    event = views.row_dict(events, position)
    category = str(event["category"])
    # Tracking each expander's state lets a closed one skip building its details.
    details = st.expander(
        views.event_heading(event),
        icon=views.CATEGORY_ICONS.get(category),
        expanded=events.index[position] == opened,
        key=f"history_open_{event['event_pk']}",
        on_change="rerun",
    )
    with details:
        if details.open:
            ui.event_detail(
                event, key=f"history_event_{event['event_pk']}", show_history_link=False
            )


def turn_page(widget_key: str) -> None:
    st.session_state["history_page"] = st.session_state[widget_key]


if pages > 1:
    pager_key = f"history_pager_{agent_id}_{migration_only}_{pages}"
    st.pagination(pages, default=page, key=pager_key, on_change=turn_page, args=(pager_key,))

ui.save_url_state(
    "history",
    links.HistoryView(
        agent_id=agent_id, migration_only=migration_only, page=page
    ).to_query_params(),
)
