"""Every console page against a seeded fleet, on SQLite and PostgreSQL: the values shown."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

import pandas as pd
import pytest
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from console import links
from models import analytics
from models.database import create_db_engine, write_transaction
from models.tables import AGENT_TABLE, EVENT_TABLE
from tests.console.conftest import APP, HOSTILE_HOST, SeededFleet
from tests.factories import bulk_agent_rows, bulk_event_rows

PERMISSION_DENIED = "copy <path>: [Errno <n>] Permission denied"
FAILED_HOSTS = {"fail-detect-07", "fail-exec-05", "fail-exec-06", HOSTILE_HOST}

OpenPage = Callable[..., AppTest]


def metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def table(at: AppTest, key_prefix: str) -> pd.DataFrame:
    (found,) = [frame for frame in at.dataframe if (frame.key or "").startswith(key_prefix)]
    return found.value


def keyed_table(at: AppTest, key: str) -> pd.DataFrame:
    """The table inside the container keyed `key` (tables without selection have no key)."""
    return at.get_by_key(key).dataframe[0].value


def page_links(at: AppTest) -> dict[str, dict[str, list[str]]]:
    """Page-link label -> the query parameters it carries."""
    return {link.value: parse_qs(link.proto.query_string) for link in at.page_link}


def codes(at: AppTest) -> list[str]:
    return [code.value for code in at.code]


# --- fleet overview ---------------------------------------------------------------------


def test_overview_counts_every_state_and_lists_the_failed_hosts(console: OpenPage) -> None:
    at = console()

    assert metrics(at) == {
        "Agents": "12",  # revoked-12 is left out; the hostile host is in
        "Migrated": "3",
        "Not needed": "1",
        "Pending": "1",
        "Failed": "4",
        "Partial": "1",
        "Never reported": "2",
        "Stale": "3",  # fail-exec-06, silent-10 (never seen) and stale-ok-11
    }
    assert [m.proto.delta for m in at.metric][1:3] == ["25% of agents", "8% of agents"]
    hosts = table(at, "overview_hosts")
    assert set(hosts["hostname"]) == FAILED_HOSTS
    assert set(hosts["state"]) == {"✖ failed"}
    assert len(at.get("plotly_chart")) == 5


def test_overview_top_groups_count_distinct_hosts(console: OpenPage) -> None:
    at = console()

    groups = table(at, "overview_groups")
    top = groups.iloc[0]
    assert (top["signature"], top["agents"], top["events"]) == (PERMISSION_DENIED, 3, 3)
    assert top["kind"] == "◆ migration"
    # The week holds every failure but revoked-12's (four days old counts, too).
    assert len(groups) == 6


def test_overview_period_and_state_pickers_change_what_is_listed(console: OpenPage) -> None:
    at = console()

    at.segmented_control(key="overview_range").set_value("24h").run()
    groups = table(at, "overview_groups")
    # mig-retry-02 failed three days ago: within 24 hours two hosts share the failure.
    permission = groups[groups["signature"] == PERMISSION_DENIED].iloc[0]
    assert (permission["agents"], permission["events"]) == (2, 2)

    at.segmented_control(key="overview_hosts_state").set_value("never_reported").run()
    assert set(table(at, "overview_hosts")["hostname"]) == {"updates-only-09", "silent-10"}
    assert not at.exception


def test_overview_links_a_state_and_the_groups_to_the_filtered_explorer(console: OpenPage) -> None:
    at = console()

    found = page_links(at)
    assert found["Events that lead to “Failed”"] == {
        "category": ["migration"],
        "event_types": ["migration_detection_failed,migration_execution_failed"],
    }
    assert "All error groups" in found


# --- events explorer --------------------------------------------------------------------


def test_a_deep_link_opens_the_explorer_with_its_filters_applied(console: OpenPage) -> None:
    at = console(links.EVENTS_PAGE, statuses="failed", category="migration")

    events = table(at, "ex_table")
    assert set(events["hostname"]) == {
        "mig-retry-02", "fail-exec-05", "fail-exec-06", "fail-detect-07", "revoked-12", HOSTILE_HOST,
    }  # fmt: skip
    assert set(events["status"]) == {"✖ failed"}
    assert set(events["kind"]) == {"◆ migration"}
    assert list(events["occurred_at"]) == sorted(events["occurred_at"], reverse=True)
    # The widgets show the link's filters, and the URL keeps them.
    assert at.pills(key="ex_statuses").value == ["failed"]
    assert at.segmented_control(key="ex_category").value == "migration"
    assert at.caption[0].value.startswith("6 events match")
    assert at.query_params["statuses"] == "failed"


def test_filters_set_in_the_explorer_are_applied_and_written_to_the_url(console: OpenPage) -> None:
    at = console(links.EVENTS_PAGE)
    assert len(table(at, "ex_table")) == 27  # 25 from the fixture fleet, 2 from the hostile host

    at.text_input(key="ex_host").set_value("fail-exec").run()
    at.pills(key="ex_statuses").set_value(["failed"]).run()

    events = table(at, "ex_table")
    assert sorted(events["hostname"]) == ["fail-exec-05", "fail-exec-06"]
    assert set(events["event_type"]) == {"migration_execution_failed"}
    assert at.query_params["host"] == "fail-exec"
    assert at.query_params["statuses"] == "failed"

    at.text_input(key="ex_error_text").set_value("cache/packages").run()
    assert list(table(at, "ex_table")["hostname"]) == ["fail-exec-06"]
    at.segmented_control(key="ex_category").set_value("update").run()
    assert table(at, "ex_table").empty
    assert at.caption[0].value == "No events match these filters."


def test_a_selected_event_shows_its_full_error_steps_and_host(
    console: OpenPage, fleet: SeededFleet
) -> None:
    pk = fleet.event_pk("fail-exec-05", "migration_execution_failed")

    at = console(links.EVENTS_PAGE, event=str(pk))

    assert "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied" in codes(at)
    steps = keyed_table(at, "ex_detail_steps")
    assert steps.to_dict("records") == [{"step": "copy_state", "status": "failed"}]
    fields = dict(keyed_table(at, "ex_detail_fields").itertuples(index=False))
    assert fields["Host"] == "fail-exec-05"
    assert fields["Event type"] == "migration_execution_failed"
    assert fields["Failed step"] == "copy_state"
    assert fields["Migration from"] == "0.1.18 (config v0, /etc/aggregator)"
    system_info = next(element.value for element in at.json)
    assert '"hostname": "fail-exec-05"' in system_info
    history = page_links(at)["This host's history"]
    assert history == {"agent": [str(fleet.ids["fail-exec-05"])]}
    assert at.query_params["event"] == str(pk)


def test_the_download_offers_every_matching_event_not_one_page(console: OpenPage) -> None:
    at = console(links.EVENTS_PAGE, statuses="failed")

    (button,) = at.get("download_button")
    assert button.proto.label == "Download 8 events as CSV"
    assert any("--status failed" in code for code in codes(at))

    at.segmented_control(key="ex_format").set_value("parquet").run()
    (button,) = at.get("download_button")
    assert button.proto.label == "Download 8 events as PARQUET"


@pytest.fixture
def busy_engine(db_url: str) -> Engine:
    """A database with 130 events from 5 hosts, for paging."""
    engine = create_db_engine(db_url)
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    agents = bulk_agent_rows(5, now=now)
    with write_transaction(engine) as connection:
        connection.execute(AGENT_TABLE.insert(), agents)
        connection.execute(
            EVENT_TABLE.insert(), bulk_event_rows([a["id"] for a in agents], 130, now=now)
        )
    return engine


def test_the_explorer_pages_through_the_set_in_sql(
    busy_engine: Engine, db_url: str, console_env: Callable[..., None]
) -> None:
    console_env(db_url)
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["size"] = "50"
    at.query_params["page"] = "2"
    at.switch_page(links.EVENTS_PAGE).run()

    expected = analytics.events_frame(busy_engine, limit=50, offset=50)
    shown = table(at, "ex_table")
    assert list(shown["event_pk"]) == list(expected["event_pk"])
    assert at.caption[0].value == "130 events match · showing 51 to 100"
    assert at.get("pagination")[0].proto.num_pages == 3

    at.get("pagination")[0].set_value(3).run()
    assert len(table(at, "ex_table")) == 30
    assert at.query_params["page"] == "3"
    # Another filter starts again at the first page.
    at.pills(key="ex_severities").set_value(["info"]).run()
    assert "page" not in at.query_params
    busy_engine.dispose()


# --- agent history ----------------------------------------------------------------------


def test_history_finds_a_host_and_shows_its_state_and_events(
    console: OpenPage, fleet: SeededFleet
) -> None:
    at = console(links.HISTORY_PAGE)
    assert len(table(at, "history_hosts")) == 12  # every agent but the revoked one

    at.text_input(key="history_search").set_value("fail-exec").run()
    assert sorted(table(at, "history_hosts")["hostname"]) == ["fail-exec-05", "fail-exec-06"]

    at = console(links.HISTORY_PAGE, agent=str(fleet.ids["fail-exec-05"]))
    assert metrics(at)["Migration state"] == "Failed"
    assert metrics(at)["Events"] == "2"
    assert metrics(at)["Failed events"] == "1"
    assert "fail-exec-05" in codes(at)
    labels = [expander.label for expander in at.expander if expander.label != "More filters"]
    assert [label.split(" · ", 1)[1] for label in labels] == [
        "Migration execution failed · :red[failed]",
        "Migration detection success · :green[success]",
    ]
    assert "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied" in codes(at)
    assert len(at.get("plotly_chart")) == 1


def test_history_can_show_migration_events_only(console: OpenPage, fleet: SeededFleet) -> None:
    at = console(links.HISTORY_PAGE, agent=str(fleet.ids["mig-retry-02"]))
    assert len(at.expander) == 6

    at.toggle(key="history_migration_only").set_value(True).run()

    assert len(at.expander) == 5
    assert all("Update" not in expander.label for expander in at.expander)
    assert at.query_params["migration"] == "1"


def test_history_of_an_unknown_agent_says_so(console: OpenPage) -> None:
    at = console(links.HISTORY_PAGE, agent="8c3d1a8e-0000-4000-8000-000000000000")

    assert at.warning[0].value == "There is no agent with this id."
    assert not at.metric


# --- error groups -----------------------------------------------------------------------


def test_error_groups_list_one_row_per_fingerprint(console: OpenPage) -> None:
    at = console(links.GROUPS_PAGE)

    groups = table(at, "groups_table")
    assert len(groups) == 6
    assert groups["fingerprint"].is_unique
    top = groups.iloc[0]
    assert (top["signature"], top["agents"], top["events"]) == (PERMISSION_DENIED, 3, 3)
    updates = groups[groups["event_type"] == "update_failed"].iloc[0]
    assert (updates["agents"], updates["events"]) == (1, 2)

    at.segmented_control(key="groups_category").set_value("update").run()
    assert list(table(at, "groups_table")["event_type"]) == ["update_failed"]


def test_opening_a_group_shows_its_hosts_trend_and_who_recovered(console: OpenPage) -> None:
    at = console(links.GROUPS_PAGE)
    fingerprint = table(at, "groups_table").iloc[0]["fingerprint"]

    at = console(links.GROUPS_PAGE, group=fingerprint)

    assert metrics(at)["Hosts"] == "3"
    assert metrics(at)["Events"] == "3"
    assert PERMISSION_DENIED in codes(at)
    hosts = table(at, "groups_hosts").set_index("hostname")
    assert set(hosts.index) == {"mig-retry-02", "fail-exec-05", "fail-exec-06"}
    assert bool(hosts.loc["mig-retry-02", "still_failing"]) is False  # migrated since
    assert bool(hosts.loc["fail-exec-05", "still_failing"]) is True
    assert page_links(at)["All events of this group"] == {"fingerprint": [fingerprint]}
    assert len(at.get("plotly_chart")) == 1


# --- no data yet ------------------------------------------------------------------------


def test_every_page_renders_on_an_empty_database(
    db_url: str, console_env: Callable[..., None]
) -> None:
    console_env(db_url)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert metrics(at)["Agents"] == "0"
    assert "No agents have registered yet" in at.info[0].value

    for page in (links.EVENTS_PAGE, links.HISTORY_PAGE, links.GROUPS_PAGE):
        at.switch_page(page).run()
        assert not at.exception, page
    assert at.success[0].value == "No errors reported in this period."
