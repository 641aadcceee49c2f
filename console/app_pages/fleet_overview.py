"""Fleet overview: migration state of every agent, failure trend, error groups, breakdowns."""

from __future__ import annotations

import streamlit as st

from console import charts, data, links, ui, views
from console.settings import ConsoleSettings
from models.analytics import EventFilters
from models.vocabulary import MigrationState

settings = ConsoleSettings()
database = data.database_url()

OVERVIEW_RANGES = ("24h", "7d", "30d", "90d", links.ALL_TIME)
TOP_GROUPS = 10
HOST_LIMIT = 10_000
st.session_state.setdefault("overview_range", "7d")
st.session_state.setdefault("overview_hosts_state", MigrationState.FAILED.value)

KPIS = (
    ("Agents", None, "Registered agents, revoked ones left out."),
    ("Migrated", MigrationState.MIGRATED, "Latest migration succeeded (or was done before)."),
    ("Not needed", MigrationState.NOT_NEEDED, "Detection found nothing to migrate."),
    ("Pending", MigrationState.PENDING, "Migration detected as needed, not yet executed."),
    ("Failed", MigrationState.FAILED, "Latest migration detection or execution failed."),
    ("Partial", MigrationState.PARTIAL, "Migrated, with warnings to look at."),
    ("Never reported", MigrationState.NEVER_REPORTED, "No migration event: silent is not success."),
    ("Stale", "stale", "No check-in for three check-in intervals, or never."),
)  # fmt: skip

PATH_COLUMNS = {
    "migration_from": st.column_config.TextColumn("From", width="medium"),
    "migration_to": st.column_config.TextColumn("To", width="medium"),
    "attempts": st.column_config.NumberColumn("Attempts"),
    "successes": st.column_config.NumberColumn("Succeeded"),
    "partials": st.column_config.NumberColumn("Partial"),
    "failures": st.column_config.NumberColumn("Failed"),
    "agents": st.column_config.NumberColumn("Hosts"),
    "failed_agents": st.column_config.NumberColumn("Hosts with a failure"),
    "failure_rate": st.column_config.ProgressColumn(
        "Failure rate", format="percent", min_value=0.0, max_value=1.0
    ),
}

st.title("Fleet overview")


@st.fragment(run_every=settings.refresh_seconds)
def overview() -> None:
    summary = data.fleet_summary(database)

    # Two rows of four: the fleet's progress, then what needs attention.
    for row in (KPIS[:4], KPIS[4:]):
        for column, (label, state, help_text) in zip(st.columns(4), row, strict=True):
            if state is None:
                value = summary.agents
            elif state == "stale":
                value = summary.stale
            else:
                value = summary.by_state[MigrationState(state)]
            share = f"{value / summary.agents:.0%} of agents" if summary.agents else None
            column.metric(
                label,
                f"{value:,}",
                delta=share if state is not None else None,
                delta_color="off",
                delta_arrow="off",
                help=help_text,
                border=True,
                height="stretch",
            )
    if summary.agents == 0:
        st.info(
            "No agents have registered yet. Create an enrolment token with "
            "`redflag-server enroll create` and register an agent with it.",
            icon=":material/info:",
        )

    time_range = ui.time_range_picker(
        key="overview_range",
        options=OVERVIEW_RANGES,
        label="Period (failure trend, error groups and migration paths)",
    )
    period = EventFilters(since=links.range_start(time_range))
    bucket = links.bucket_for(time_range)
    # The period's three queries are the page's slowest; they run side by side.
    failures, groups, paths = data.at_once(
        lambda: data.failures_over_time(database, period, bucket),
        lambda: data.error_groups(database, period, limit=TOP_GROUPS),
        lambda: data.migration_paths(database, period),
    )

    left, right = st.columns(2)
    with left:
        status_chart = st.plotly_chart(
            charts.status_distribution(summary),
            on_select="rerun",
            selection_mode="points",
            key="overview_states_chart",
            alt="Agents per migration state",
        )
        st.caption("Click a bar to list that state's migration events.")
    with right:
        st.plotly_chart(
            charts.failures_over_time(failures, bucket=bucket),
            key="overview_failures_chart",
            alt="Failed events over time by event type",
        )
    points = status_chart.selection.points if status_chart else []
    if points:
        chosen = charts.STATE_ORDER[int(points[0]["point_index"])]
        params = links.events_for_state(chosen, time_range=links.ALL_TIME)
        if params:
            st.switch_page(links.EVENTS_PAGE, query_params=params)

    st.subheader("Top error groups")
    st.caption(
        "The same failure on many hosts is one group (messages with paths, numbers and "
        "host names masked). Select a group to open it or list its events."
    )
    if groups.empty:
        st.success("No errors reported in this period.", icon=":material/check_circle:")
    else:
        chosen_groups = st.dataframe(
            views.groups_table(groups),
            hide_index=True,
            placeholder="",
            on_select="rerun",
            selection_mode="single-row",
            key="overview_groups",
            column_config=ui.GROUP_COLUMNS,
            alt="The error groups with the most affected agents",
        )
        with st.container(horizontal=True):
            rows = chosen_groups.selection.rows if chosen_groups else []
            if rows:
                fingerprint = str(groups.iloc[rows[0]]["fingerprint"])
                st.page_link(
                    links.GROUPS_PAGE,
                    label="Open the selected group",
                    icon=":material/stacks:",
                    query_params=links.group_view(fingerprint),
                )
                st.page_link(
                    links.EVENTS_PAGE,
                    label="Its events",
                    icon=":material/manage_search:",
                    query_params=links.events_for_group(fingerprint, time_range=time_range),
                )
            st.page_link(links.GROUPS_PAGE, label="All error groups", icon=":material/list:")

    st.subheader("Hosts by migration state")
    state_value = st.segmented_control(
        "State",
        [state.value for state in charts.STATE_ORDER],
        format_func=lambda v: (
            f"{views.STATE_LABELS[MigrationState(v)]} ({summary.by_state[MigrationState(v)]:,})"
        ),
        key="overview_hosts_state",
        required=True,
    )
    state = MigrationState(str(state_value))
    hosts, total = data.fleet_hosts(database, states=(state.value,), limit=HOST_LIMIT)
    chosen_hosts = st.dataframe(
        views.hosts_table(hosts),
        hide_index=True,
        placeholder="",
        on_select="rerun",
        selection_mode="single-row",
        key="overview_hosts",
        column_config=ui.HOST_COLUMNS,
        alt="Hosts in the chosen migration state",
    )
    if total > len(hosts):
        st.caption(f"Showing the first {len(hosts):,} of {total:,} hosts, by name.")
    with st.container(horizontal=True):
        rows = chosen_hosts.selection.rows if chosen_hosts else []
        if rows:
            agent_id = str(hosts.iloc[rows[0]]["agent_id"])
            st.page_link(
                links.HISTORY_PAGE,
                label="Open the selected host's history",
                icon=":material/history:",
                query_params=links.history_of(agent_id),
            )
        state_events = links.events_for_state(state, time_range=links.ALL_TIME)
        if state_events:
            st.page_link(
                links.EVENTS_PAGE,
                label=f"Events that lead to “{views.STATE_LABELS[state]}”",
                icon=":material/manage_search:",
                query_params=state_events,
            )

    st.subheader("Breakdowns")
    by_os, by_version = st.columns(2)
    with by_os:
        st.plotly_chart(
            charts.state_breakdown(
                data.breakdown(database, "os"), by=("os_type", "os_version"), title="By OS"
            ),
            key="overview_os_chart",
            alt="Agents per migration state by operating system",
        )
    with by_version:
        st.plotly_chart(
            charts.state_breakdown(
                data.breakdown(database, "agent_version"),
                by=("agent_version",),
                title="By agent version",
            ),
            key="overview_version_chart",
            alt="Agents per migration state by agent version",
        )

    st.subheader("Migration paths")
    st.plotly_chart(
        charts.migration_path_matrix(paths),
        key="overview_paths_chart",
        alt="Failure rate of each migration path",
    )
    if not paths.empty:
        chosen_path = st.dataframe(
            paths,
            hide_index=True,
            placeholder="",
            on_select="rerun",
            selection_mode="single-row",
            key="overview_paths",
            column_config=PATH_COLUMNS,
            alt="Migration attempts and failures per path",
        )
        rows = chosen_path.selection.rows if chosen_path else []
        if rows:
            row = paths.iloc[rows[0]]
            st.page_link(
                links.EVENTS_PAGE,
                label="Migration executions along the selected path",
                icon=":material/manage_search:",
                query_params=links.events_for_path(
                    views.optional_text(row["migration_from"]),
                    views.optional_text(row["migration_to"]),
                    time_range=time_range,
                ),
            )


overview()
