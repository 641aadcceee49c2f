"""Error groups: one row per failure signature; open one to see its hosts and its trend."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from console import charts, data, links, ui, views
from models.analytics import MAX_PAGE_ROWS, EventFilters

database = data.database_url()

st.title("Error groups")
st.caption(
    "Events fail the same way when their messages match once paths, numbers, ids and host "
    "names are masked (the signature). Groups are sorted by the hosts they affect."
)

url_view = links.GroupsView.from_query_params(st.query_params.to_dict())
ui.load_url_state(
    "groups",
    url_view.to_query_params(),
    {"groups_range": url_view.time_range, "groups_category": url_view.category},
)
fingerprint = url_view.fingerprint

with st.container(horizontal=True, vertical_alignment="bottom"):
    time_range = ui.time_range_picker(key="groups_range", options=links.GROUP_RANGES)
    category = st.segmented_control(
        "Kind",
        list(links.CATEGORY_CHOICES),
        format_func=links.category_label,
        key="groups_category",
        required=True,
    )
view = links.GroupsView(fingerprint=fingerprint, time_range=time_range, category=str(category))
period = view.filters()

groups = data.error_groups(database, period, limit=MAX_PAGE_ROWS)
if groups.empty:
    st.success("No errors reported in this period.", icon=":material/check_circle:")
else:
    st.caption(f"{len(groups):,} groups. Select one to open it.")
    table = views.groups_table(groups)
    linked_rows = table.index[table["fingerprint"] == fingerprint].tolist()
    picked = st.dataframe(
        table,
        hide_index=True,
        placeholder="",
        on_select="rerun",
        selection_mode="single-row",
        selection_default={"selection": {"rows": linked_rows[:1]}} if linked_rows else None,
        key=f"groups_table_{time_range}_{category}",
        height=min(420, 38 + 35 * len(groups)),
        column_config=ui.GROUP_COLUMNS,
        alt="Error groups, most affected hosts first",
    )
    rows = picked.selection.rows if picked else []
    if rows:
        fingerprint = str(groups.iloc[rows[0]]["fingerprint"])
        view = links.GroupsView(
            fingerprint=fingerprint, time_range=time_range, category=str(category)
        )

ui.save_url_state("groups", view.to_query_params())
if fingerprint is None:
    st.stop()

st.divider()
# The open group, over the chosen period; a link may name a group outside it, which is
# then shown over its whole history.
opened = groups[groups["fingerprint"] == fingerprint] if not groups.empty else groups
group_period = period
if opened.empty:
    group_period = EventFilters()
    opened = data.error_groups(database, EventFilters(fingerprint=fingerprint), limit=1)
    if opened.empty:
        st.warning("No error group has this id.", icon=":material/warning:")
        st.stop()
    st.caption("This group has no events in the chosen period; its whole history is shown.")
group = views.row_dict(opened, 0)
migration_group = group["category"] == "migration"

st.subheader("Group " + fingerprint)
first, last, hosts_metric, events_metric = st.columns(4)
now = datetime.now(UTC)
for column, label, moment in (
    (first, "First seen", group["first_event_at"]),
    (last, "Last seen", group["last_event_at"]),
):
    column.metric(
        label,
        views.age_text(moment, now=now),
        help=moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
        border=True,
    )
hosts_metric.metric("Hosts", f"{group['agents']:,}", border=True)
events_metric.metric("Events", f"{group['events']:,}", border=True)

signature, sample = st.columns(2)
with signature:
    st.markdown("**Signature** (what every message in the group reads as)")
    st.code(group["signature"] or "", language=None, wrap_lines=True)
    st.caption("Event type: " + views.event_type_label(group["event_type"]))
with sample:
    st.markdown("**Latest message**")
    ui.error_message(group["sample_message"])

bucket = links.bucket_for(view.time_range)
trend = data.events_over_time(database, group_period.replace(fingerprint=fingerprint), bucket)
st.plotly_chart(
    charts.group_trend(trend, bucket=bucket),
    key="groups_trend",
    alt="How often this error happened over time",
)

st.markdown("**Hosts in this group**")
hosts = data.group_hosts(database, fingerprint, group_period)
chosen_host = st.dataframe(
    views.group_hosts_table(hosts, migration_group=fingerprint if migration_group else None),
    hide_index=True,
    placeholder="",
    on_select="rerun",
    selection_mode="single-row",
    key=f"groups_hosts_{fingerprint}",
    height=min(420, 38 + 35 * max(1, len(hosts))),
    column_config={
        "hostname": st.column_config.TextColumn("Host", pinned=True),
        "events": st.column_config.NumberColumn("Events"),
        "first_event_at": st.column_config.DatetimeColumn(
            "First", format="YYYY-MM-DD HH:mm", timezone="UTC"
        ),
        "last_event_at": st.column_config.DatetimeColumn(
            "Last", format="YYYY-MM-DD HH:mm", timezone="UTC"
        ),
        "still_failing": st.column_config.CheckboxColumn(
            "Still failing", help="The host's latest migration outcome is still this error"
        ),
        "state_now": st.column_config.TextColumn("Migration state now"),
        "last_seen_at": st.column_config.DatetimeColumn(
            "Last check-in", format="YYYY-MM-DD HH:mm", timezone="UTC"
        ),
        "os": st.column_config.TextColumn("OS"),
        "agent_version": st.column_config.TextColumn("Agent version"),
        "sample_message": st.column_config.TextColumn("Its latest message", width="large"),
        "agent_id": None,
    },
    alt="Hosts affected by this error group",
)
with st.container(horizontal=True):
    rows = chosen_host.selection.rows if chosen_host else []
    if rows:
        st.page_link(
            links.HISTORY_PAGE,
            label="Open the selected host's history",
            icon=":material/history:",
            query_params=links.history_of(str(hosts.iloc[rows[0]]["agent_id"])),
        )
    st.page_link(
        links.EVENTS_PAGE,
        label="All events of this group",
        icon=":material/manage_search:",
        query_params=links.events_for_group(fingerprint),
    )
