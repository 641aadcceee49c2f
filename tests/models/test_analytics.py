"""The analyst API: fleet states, filters, paging, dtypes and the console's aggregates."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models import analytics
from models.analytics import EventFilters, EventKey
from models.database import write_transaction
from models.store import store_events
from models.tables import AGENT_TABLE
from models.vocabulary import Category, EventType, MigrationState, Severity, Status
from models.wire import Event
from tests.factories import (
    CONFIG_V3_LAYOUT,
    CURRENT_LAYOUT,
    LEGACY_LAYOUT,
    agent_row,
    seed_fixture_fleet,
    wire_event,
)

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

EXPECTED_STATES = {
    "mig-ok-01": MigrationState.MIGRATED,
    "mig-retry-02": MigrationState.MIGRATED,  # migrated, then "not needed": still migrated
    "clean-03": MigrationState.NOT_NEEDED,
    "pending-04": MigrationState.PENDING,
    "fail-exec-05": MigrationState.FAILED,
    "fail-exec-06": MigrationState.FAILED,
    "fail-detect-07": MigrationState.FAILED,
    "partial-08": MigrationState.PARTIAL,
    "updates-only-09": MigrationState.NEVER_REPORTED,  # update events only
    "silent-10": MigrationState.NEVER_REPORTED,
    "stale-ok-11": MigrationState.MIGRATED,
}
# Default interval 300 s: stale after 15 minutes without a check-in, or none ever.
EXPECTED_STALE = {"fail-exec-06", "silent-10", "stale-ok-11"}
PERMISSION_DENIED = "copy <path>: [Errno <n>] Permission denied"


@dataclass(frozen=True)
class Fleet:
    engine: Engine
    url: str
    ids: dict[str, uuid.UUID]


@pytest.fixture(autouse=True)
def _no_cached_engines() -> Iterator[None]:
    yield
    analytics.dispose_cached_engines()


@pytest.fixture(scope="module")
def fleet(module_engine: Engine) -> Fleet:
    """The fixture fleet, seeded once per backend: the tests that use it only read."""
    ids = seed_fixture_fleet(module_engine, now=NOW)
    url = module_engine.url.render_as_string(hide_password=False)
    return Fleet(engine=module_engine, url=url, ids=ids)


def _by_host(frame: pd.DataFrame) -> dict[str, Any]:
    return dict(zip(frame["hostname"], frame.to_dict("records"), strict=True))


# --- fleet ------------------------------------------------------------------------------


def test_every_agent_is_in_the_state_its_latest_migration_event_implies(fleet: Fleet) -> None:
    frame = analytics.fleet_status_frame(fleet.url, now=NOW)

    assert {h: MigrationState(r["migration_state"]) for h, r in _by_host(frame).items()} == (
        EXPECTED_STATES
    )
    assert set(frame["migration_state"].cat.categories) == {s.value for s in MigrationState}


def test_stale_marks_agents_silent_for_three_intervals_or_never_seen(fleet: Fleet) -> None:
    frame = analytics.fleet_status_frame(fleet.url, now=NOW)

    assert {h for h, r in _by_host(frame).items() if r["stale"]} == EXPECTED_STALE


def test_stale_follows_the_configured_check_in_interval(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDFLAG_CHECK_IN_INTERVAL_SECONDS", "3600")  # stale after 3 h

    frame = analytics.fleet_status_frame(fleet.url, now=NOW)

    assert {h for h, r in _by_host(frame).items() if r["stale"]} == {"silent-10", "stale-ok-11"}


def test_fleet_row_carries_the_last_error_and_its_fingerprint(fleet: Fleet) -> None:
    rows = _by_host(analytics.fleet_status_frame(fleet.url, now=NOW))

    failed = rows["fail-exec-05"]
    assert failed["last_error_message"].endswith("Permission denied")
    assert failed["last_fingerprint"] == rows["fail-exec-06"]["last_fingerprint"]
    assert failed["last_migration_event_type"] == EventType.MIGRATION_EXECUTION_FAILED
    assert (failed["last_migration_from"], failed["last_migration_to"]) == (
        LEGACY_LAYOUT,
        CURRENT_LAYOUT,
    )
    assert pd.isna(rows["mig-ok-01"]["last_error_message"])
    assert pd.isna(rows["silent-10"]["last_seen_at"])


def test_revoked_agents_are_left_out_unless_asked_for(fleet: Fleet) -> None:
    default = analytics.fleet_status_frame(fleet.url, now=NOW)
    everyone = analytics.fleet_status_frame(fleet.url, now=NOW, include_revoked=True)

    assert "revoked-12" not in set(default["hostname"])
    revoked = _by_host(everyone)["revoked-12"]
    assert revoked["revoked"]
    assert revoked["migration_state"] == MigrationState.FAILED


def test_fleet_summary_counts_agree_with_the_fleet_frame(fleet: Fleet) -> None:
    frame = analytics.fleet_status_frame(fleet.engine, now=NOW)
    summary = analytics.fleet_summary(fleet.engine, now=NOW)

    assert summary.agents == len(frame) == len(EXPECTED_STATES)
    assert summary.stale == int(frame["stale"].sum()) == len(EXPECTED_STALE)
    counted = frame["migration_state"].value_counts()
    assert summary.by_state == {s: int(counted[s.value]) for s in MigrationState}
    assert summary.stale_by_state[MigrationState.NEVER_REPORTED] == 1
    assert summary.stale_by_state[MigrationState.PENDING] == 0
    assert summary.reported == 9
    assert summary.share(MigrationState.FAILED) == pytest.approx(3 / 11)


def test_fleet_frame_filters_and_pages_in_sql(fleet: Fleet) -> None:
    failed = analytics.fleet_status_frame(fleet.url, now=NOW, states=["failed"])
    stale_failed = analytics.fleet_status_frame(fleet.url, now=NOW, states=["failed"], stale=True)
    fresh = analytics.fleet_status_frame(fleet.url, now=NOW, stale=False)
    hosts = analytics.fleet_status_frame(fleet.url, now=NOW, host="EXEC")
    pages = [analytics.fleet_status_frame(fleet.url, now=NOW, limit=4, offset=o) for o in (0, 4, 8)]

    assert set(failed["hostname"]) == {"fail-exec-05", "fail-exec-06", "fail-detect-07"}
    assert list(stale_failed["hostname"]) == ["fail-exec-06"]
    assert len(fresh) == len(EXPECTED_STATES) - len(EXPECTED_STALE)
    assert list(hosts["hostname"]) == ["fail-exec-05", "fail-exec-06"]
    whole = analytics.fleet_status_frame(fleet.url, now=NOW)
    assert list(pd.concat(pages)["hostname"]) == list(whole["hostname"])
    assert list(whole["hostname"]) == sorted(EXPECTED_STATES)
    assert analytics.count_agents(fleet.url, now=NOW, states=["failed"], stale=True) == 1


def test_fleet_frame_dtypes_do_not_depend_on_the_data(fleet: Fleet) -> None:
    full = analytics.fleet_status_frame(fleet.url, now=NOW)
    empty = analytics.fleet_status_frame(fleet.url, now=NOW, host="no such host")

    assert empty.empty
    assert list(full.columns) == list(analytics.FLEET_COLUMNS)
    assert full.dtypes.to_dict() == empty.dtypes.to_dict()
    assert str(full["last_seen_at"].dtype) == "datetime64[us, UTC]"
    assert full["agent_id"].dtype == analytics.STRING_DTYPE
    assert full["stale"].dtype == bool


# --- events: dtypes, filters, paging -------------------------------------------------------


def test_events_frame_columns_and_dtypes_are_as_documented(fleet: Fleet) -> None:
    frame = analytics.events_frame(fleet.url)
    empty = analytics.events_frame(fleet.url, host="no such host")

    assert list(frame.columns) == list(analytics.EVENT_COLUMNS)
    assert frame.dtypes.to_dict() == empty.dtypes.to_dict()
    assert frame.dtypes.to_dict() == analytics.empty_events_frame().dtypes.to_dict()
    dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    assert dtypes["event_pk"] == "int64"
    assert dtypes["occurred_at"] == dtypes["received_at"] == "datetime64[us, UTC]"
    assert dtypes["error_truncated"] == "bool"
    for name in ("event_id", "agent_id", "hostname", "error_message", "fingerprint"):
        assert frame[name].dtype == analytics.STRING_DTYPE, name
    for name, enum in (
        ("category", Category),
        ("event_type", EventType),
        ("status", Status),
        ("severity", Severity),
    ):
        assert list(frame[name].cat.categories) == [m.value for m in enum], name
    assert frame["severity"].cat.ordered
    assert all(isinstance(v, dict) for v in frame["system_info"])
    assert all(isinstance(v, dict) for v in frame["details"])
    assert str(uuid.UUID(frame["agent_id"][0])) == frame["agent_id"][0]
    assert set(frame["hostname"]) >= {"mig-ok-01", "revoked-12"}


def test_json_columns_can_come_as_text(fleet: Fleet) -> None:
    frame = analytics.events_frame(fleet.url, json_as="text", limit=3)

    assert frame["details"].dtype == analytics.STRING_DTYPE
    assert all(isinstance(json.loads(v), dict) for v in frame["details"])


def test_events_are_newest_first_with_the_row_key_breaking_ties(engine: Engine) -> None:
    agent = agent_row(hostname="ties-01")
    same_time = (NOW - timedelta(minutes=5)).isoformat()
    events = [
        Event.model_validate(wire_event(EventType.UPDATE_DISCOVERED, timestamp=time))
        for time in (same_time, same_time, (NOW - timedelta(hours=1)).isoformat(), same_time)
    ]
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent])
        store_events(connection, agent_id=agent["id"], events=events, received_at=NOW)

    frame = analytics.events_frame(engine)
    pages = [analytics.events_frame(engine, limit=1, offset=o) for o in range(4)]

    keys = list(zip(frame["occurred_at"], frame["event_pk"], strict=True))
    assert keys == sorted(keys, reverse=True)
    assert list(pd.concat(pages)["event_pk"]) == list(frame["event_pk"])


# (name, filters for the fleet, the same selection as a pandas mask over every event).
# No fixture event lies within hours of the one-day boundary, so "24h" and "1d", which
# count from the clock at call time, select the same rows as NOW - 1 day.
FILTER_CASES: list[tuple[str, Callable[[Fleet], dict[str, Any]], Callable[..., Any]]] = [
    (
        "since",
        lambda f: {"since": NOW - timedelta(days=1)},
        lambda df, f: df["occurred_at"] >= NOW - timedelta(days=1),
    ),
    (
        "since as an age",
        lambda f: {"since": "1d"},
        lambda df, f: df["occurred_at"] >= NOW - timedelta(days=1),
    ),
    (
        "until",
        lambda f: {"until": NOW - timedelta(hours=5)},
        lambda df, f: df["occurred_at"] < NOW - timedelta(hours=5),
    ),
    (
        "agent ids",
        lambda f: {"agent_ids": [f.ids["mig-retry-02"], str(f.ids["pending-04"])]},
        lambda df, f: df["hostname"].isin(["mig-retry-02", "pending-04"]),
    ),
    (
        "hostname substring, any case",
        lambda f: {"host": "FAIL-exec"},
        lambda df, f: df["hostname"].str.startswith("fail-exec"),
    ),
    (
        "category",
        lambda f: {"category": "update"},
        lambda df, f: df["category"] == "update",
    ),
    (
        "event types",
        lambda f: {"event_types": ["migration_detection_failed", "update_failed"]},
        lambda df, f: df["event_type"].isin(["migration_detection_failed", "update_failed"]),
    ),
    ("status", lambda f: {"status": "failed"}, lambda df, f: df["status"] == "failed"),
    (
        "severities",
        lambda f: {"severities": ["warning", "error"]},
        lambda df, f: df["severity"] != "info",
    ),
    (
        "agent version",
        lambda f: {"agent_version": "0.1.18"},
        lambda df, f: df["agent_version"] == "0.1.18",
    ),
    (
        "agent version pattern",
        lambda f: {"agent_version": "0.1.*"},
        lambda df, f: df["agent_version"].str.startswith("0.1."),
    ),
    (
        "migration from",
        lambda f: {"migration_from": CONFIG_V3_LAYOUT},
        lambda df, f: df["migration_from"] == CONFIG_V3_LAYOUT,
    ),
    (
        "migration to pattern",
        lambda f: {"migration_to": "*CONFIG V5*"},
        lambda df, f: df["migration_to"].fillna("").str.contains("config v5", regex=False),
    ),
    (
        "fingerprint",
        lambda f: {"fingerprint": _fingerprint_of(f, "fail-exec-06")},
        lambda df, f: df["fingerprint"] == _fingerprint_of(f, "fail-exec-06"),
    ),
    (
        "error text, any case",
        lambda f: {"error_text": "permission DENIED"},
        lambda df, f: df["error_message"].fillna("").str.contains("Permission denied"),
    ),
    (
        "error text with a LIKE wildcard is literal",
        lambda f: {"error_text": "last_scan"},
        lambda df, f: df["error_message"].fillna("").str.contains("last_scan", regex=False),
    ),
    (
        "failed detections of the last day",
        lambda f: {"event_type": "migration_detection_failed", "since": "24h"},
        lambda df, f: (
            (df["event_type"] == "migration_detection_failed")
            & (df["occurred_at"] >= NOW - timedelta(days=1))
        ),
    ),
]


def _fingerprint_of(fleet: Fleet, hostname: str) -> str:
    with fleet.engine.connect() as connection:
        return str(
            connection.scalar(
                sa.select(AGENT_TABLE.c.last_fingerprint).where(AGENT_TABLE.c.hostname == hostname)
            )
        )


def test_each_filter_narrows_to_exactly_the_matching_events(fleet: Fleet) -> None:
    # One database for all cases: each case only reads, and a fresh fleet per case would
    # cost far more than the queries themselves.
    everything = analytics.events_frame(fleet.url)
    mismatches = []
    for name, make, expected in FILTER_CASES:
        given = make(fleet)
        narrowed = analytics.events_frame(fleet.url, **given)
        wanted = everything[expected(everything, fleet).fillna(False).astype(bool)]
        counted = analytics.count_events(fleet.url, **given)
        if not (
            0 < len(narrowed) < len(everything)
            and list(narrowed["event_pk"]) == list(wanted["event_pk"])
            and counted == len(wanted)
        ):
            mismatches.append(f"{name}: got {len(narrowed)} (count {counted}), want {len(wanted)}")

    assert not mismatches, mismatches


def test_like_wildcards_in_a_search_match_only_themselves(fleet: Fleet) -> None:
    assert analytics.events_frame(fleet.url, host="%").empty
    assert analytics.events_frame(fleet.url, host="_").empty
    assert analytics.count_events(fleet.url, error_text="%") == 0


def test_filters_combine_with_keywords_winning(fleet: Fleet) -> None:
    base = EventFilters(category=Category.MIGRATION, statuses=(Status.SUCCESS,))

    frame = analytics.events_frame(fleet.url, filters=base, status="failed")

    assert set(frame["category"]) == {"migration"}
    assert set(frame["status"]) == {"failed"}


def test_offset_and_keyset_pages_walk_the_same_order(fleet: Fleet) -> None:
    whole = analytics.events_frame(fleet.url)
    total = analytics.count_events(fleet.url)
    offset_pages = [
        analytics.events_frame(fleet.url, limit=4, offset=o) for o in range(0, total, 4)
    ]
    keyset_pages = []
    key: EventKey | None = None
    while True:
        page = analytics.events_frame(fleet.url, limit=4, after=key)
        if page.empty:
            break
        keyset_pages.append(page)
        key = analytics.next_page_key(page)

    assert total == len(whole) > 8
    assert list(pd.concat(offset_pages)["event_pk"]) == list(whole["event_pk"])
    assert list(pd.concat(keyset_pages)["event_pk"]) == list(whole["event_pk"])
    assert all(len(p) <= 4 for p in keyset_pages)


def test_chunks_of_the_generator_add_up_to_the_frame(fleet: Fleet) -> None:
    filters = EventFilters(category=Category.MIGRATION)
    whole = analytics.events_frame(fleet.url, filters=filters)

    chunks = list(analytics.iter_events_frames(fleet.url, filters=filters, chunk_size=3))
    limited = list(analytics.iter_events_frames(fleet.url, filters=filters, chunk_size=3, limit=7))

    assert [len(c) for c in chunks[:-1]] == [3] * (len(chunks) - 1)
    assert list(pd.concat(chunks)["event_pk"]) == list(whole["event_pk"])
    assert list(pd.concat(limited)["event_pk"]) == list(whole["event_pk"][:7])


def test_bad_paging_arguments_are_value_errors(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="limit"):
        analytics.events_frame(fleet.url, limit=-1)
    with pytest.raises(ValueError, match="offset"):
        analytics.events_frame(fleet.url, offset=-1)
    with pytest.raises(TypeError, match="unknown filter colour"):
        analytics.events_frame(fleet.url, colour="red")


# --- detail views -----------------------------------------------------------------------


def test_event_detail_has_every_column_as_plain_python(fleet: Fleet) -> None:
    newest_failure = analytics.events_frame(fleet.url, status="failed", limit=1)

    detail = analytics.event_detail(fleet.url, int(newest_failure["event_pk"][0]))

    assert detail is not None
    assert list(detail) == list(analytics.EVENT_COLUMNS)
    assert detail["hostname"] == "fail-exec-05"
    assert detail["occurred_at"].tzinfo is not None
    assert type(detail["occurred_at"]) is datetime
    assert detail["details"] == {"failed_step": "copy_state"}
    assert detail["phase"] == "execution"
    assert analytics.event_detail(fleet.url, 10**9) is None


def test_agent_detail_and_history(fleet: Fleet) -> None:
    agent_id = fleet.ids["mig-retry-02"]

    detail = analytics.agent_detail(fleet.url, str(agent_id), now=NOW)
    history = analytics.agent_events_frame(fleet.url, agent_id)
    migrations = analytics.agent_events_frame(fleet.url, agent_id, migration_only=True)

    assert detail is not None
    assert detail["hostname"] == "mig-retry-02"
    assert detail["migration_state"] == "migrated"
    assert (detail["events"], detail["migration_events"], detail["failures"]) == (6, 5, 1)
    assert detail["first_event_at"] < detail["last_event_at"]
    assert "token_hash" not in detail
    assert len(history) == 6
    assert set(history["category"]) == {"migration", "update"}
    assert len(migrations) == 5
    assert set(migrations["category"]) == {"migration"}
    assert analytics.agent_detail(fleet.url, uuid.uuid4()) is None
    assert analytics.agent_detail(fleet.url, "not-a-uuid") is None


# --- error groups -----------------------------------------------------------------------


def test_the_same_failure_on_many_hosts_is_one_group(fleet: Fleet) -> None:
    groups = analytics.error_groups_frame(fleet.url)

    top = groups.iloc[0]
    assert top["signature"] == PERMISSION_DENIED
    assert top["event_type"] == EventType.MIGRATION_EXECUTION_FAILED
    assert top["category"] == "migration"
    assert (top["agents"], top["events"]) == (3, 3)
    # the sample is the most recently stored message of the group
    assert "packages.db" in top["sample_message"]
    assert list(groups["agents"]) == sorted(groups["agents"], reverse=True)
    assert groups["fingerprint"].is_unique
    apt = groups[groups["event_type"] == "update_failed"].iloc[0]
    assert (apt["agents"], apt["events"]) == (1, 2)
    assert apt["signature"] == "apt-get install openssl exited with status <n>"
    assert apt["first_event_at"] < apt["last_event_at"]


def test_error_groups_follow_the_filters(fleet: Fleet) -> None:
    recent = analytics.error_groups_frame(fleet.url, since=NOW - timedelta(days=1))
    migration = analytics.error_groups_frame(fleet.url, category="migration", limit=2)

    top = recent.iloc[0]
    assert top["signature"] == PERMISSION_DENIED
    assert (top["agents"], top["events"]) == (2, 2)  # the failure 3 days ago is left out
    assert len(migration) == 2
    assert set(migration["category"]) == {"migration"}


def test_opening_a_group_lists_its_hosts_and_whether_they_recovered(fleet: Fleet) -> None:
    fingerprint = analytics.error_groups_frame(fleet.url)["fingerprint"][0]

    hosts = analytics.group_hosts_frame(fleet.url, fingerprint, now=NOW)

    assert list(hosts["hostname"]) == ["fail-exec-05", "fail-exec-06", "mig-retry-02"]
    rows = _by_host(hosts)
    assert rows["mig-retry-02"]["migration_state"] == "migrated"  # recovered since
    assert rows["fail-exec-06"]["stale"]
    assert "packages.db" in rows["fail-exec-06"]["sample_message"]
    assert set(hosts["events"]) == {1}


# --- chart aggregates -------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_failures_over_time_add_up_to_the_failed_events(fleet: Fleet, bucket: str) -> None:
    since = NOW - timedelta(days=5)

    frame = analytics.failures_over_time_frame(fleet.url, bucket=bucket, since=since)  # type: ignore[arg-type]

    failed = analytics.events_frame(fleet.url, status="failed", since=since)
    assert frame["failures"].sum() == len(failed)
    per_type = frame.groupby("event_type", observed=True)["failures"].sum()
    counted = failed["event_type"].value_counts()
    assert per_type.to_dict() == counted[counted > 0].to_dict()
    starts = frame["bucket_start"]
    assert (starts == starts.dt.floor("h" if bucket == "hour" else "D")).all()
    # gaps are filled with zeros, from `since` up to now
    step = pd.Timedelta(hours=1) if bucket == "hour" else pd.Timedelta(days=1)
    grid = sorted(set(starts))
    assert all(b - a == step for a, b in itertools.pairwise(grid))
    assert grid[0] <= since < grid[0] + step
    assert (frame["failures"] == 0).any()


def test_failures_over_time_honour_status_and_type_filters(fleet: Fleet) -> None:
    assert analytics.failures_over_time_frame(fleet.url, status="success").empty
    only = analytics.failures_over_time_frame(fleet.url, event_type="update_failed")
    assert set(only["event_type"]) == {"update_failed"}
    assert only["failures"].sum() == 2


def test_day_buckets_are_utc_days_whatever_the_session_time_zone(
    engine: Engine, db_url: str
) -> None:
    agent = agent_row(hostname="tz-01")
    late_evening = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)  # 2 January in Kolkata
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent])
        store_events(
            connection,
            agent_id=agent["id"],
            events=[
                Event.model_validate(
                    wire_event(EventType.UPDATE_FAILED, timestamp=late_evening.isoformat())
                )
            ],
            received_at=late_evening,
        )
    reader = (
        sa.create_engine(db_url, connect_args={"options": "-c TimeZone=Asia/Kolkata"})
        if engine.dialect.name == "postgresql"
        else engine
    )

    daily = analytics.failures_over_time_frame(reader, bucket="day", fill_gaps=False)
    hourly = analytics.failures_over_time_frame(reader, bucket="hour", fill_gaps=False)

    reader.dispose()
    assert list(daily["bucket_start"]) == [pd.Timestamp("2026-01-01T00:00Z")]
    assert list(hourly["bucket_start"]) == [pd.Timestamp("2026-01-01T23:00Z")]


def test_breakdowns_by_os_and_version_count_agents_per_state(fleet: Fleet) -> None:
    by_os = analytics.breakdown_frame(fleet.url, by="os", now=NOW)
    by_version = analytics.breakdown_frame(fleet.url, by="agent_version", now=NOW)

    assert by_os["agents"].sum() == by_version["agents"].sum() == len(EXPECTED_STATES)
    states = [s.value for s in MigrationState]
    assert (by_os[states].sum(axis=1) == by_os["agents"]).all()
    debian = by_os[by_os["os_version"] == "Debian 12"].iloc[0]
    assert (debian["agents"], debian["failed"], debian["partial"], debian["stale"]) == (6, 1, 1, 2)
    versions = by_version.set_index("agent_version")
    assert versions.loc["0.2.0", "migrated"] == 3
    assert versions.loc["0.1.18", "never_reported"] == 2
    assert list(by_os["agents"]) == sorted(by_os["agents"], reverse=True)


def test_migration_path_matrix_counts_attempts_and_failures(fleet: Fleet) -> None:
    matrix = analytics.migration_path_frame(fleet.url).set_index(["migration_from", "migration_to"])

    legacy = matrix.loc[(LEGACY_LAYOUT, CURRENT_LAYOUT)]
    assert legacy[["attempts", "successes", "partials", "failures"]].tolist() == [4, 2, 1, 1]
    assert legacy["failure_rate"] == pytest.approx(0.25)
    assert (legacy["agents"], legacy["failed_agents"]) == (4, 1)
    v3 = matrix.loc[(CONFIG_V3_LAYOUT, CURRENT_LAYOUT)]
    assert v3[["attempts", "failures", "agents", "failed_agents"]].tolist() == [3, 2, 2, 2]
    assert len(matrix) == 2  # detection events are not attempts


def test_migration_path_matrix_follows_the_filters(fleet: Fleet) -> None:
    recent = analytics.migration_path_frame(fleet.url, since=NOW - timedelta(days=1))
    updates = analytics.migration_path_frame(fleet.url, event_types=["update_failed"])

    v3 = recent.set_index(["migration_from", "migration_to"]).loc[
        (CONFIG_V3_LAYOUT, CURRENT_LAYOUT)
    ]
    assert (v3["attempts"], v3["failures"]) == (2, 1)
    assert updates.empty
    assert "failure_rate" in updates.columns


def test_filter_choices_come_from_the_agents(fleet: Fleet) -> None:
    choices = analytics.filter_choices(fleet.url)

    assert choices["agent_versions"] == ["0.1.18", "0.2.0"]
    assert choices["migration_from"] == [LEGACY_LAYOUT, CONFIG_V3_LAYOUT]


# --- filters as values, sources ---------------------------------------------------------


def test_filters_normalise_what_they_are_given() -> None:
    filters = EventFilters(
        since="2026-11-27T08:00:00+02:00",
        statuses="failed",  # type: ignore[arg-type]
        event_types=["update_failed", "migration_detection_failed", "update_failed"],  # type: ignore[arg-type]
        category="migration",  # type: ignore[arg-type]
        host="  web  ",
        error_text="",
    )

    assert filters.since == datetime(2026, 11, 27, 6, tzinfo=UTC)
    assert filters.statuses == (Status.FAILED,)
    assert filters.event_types == (EventType.MIGRATION_DETECTION_FAILED, EventType.UPDATE_FAILED)
    assert filters.category is Category.MIGRATION
    assert filters.host == "web"
    assert filters.error_text is None
    assert hash(filters) == hash(filters.replace())


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"since": datetime(2026, 1, 1)}, "naive"),  # noqa: DTZ001
        ({"statuses": ["broken"]}, "statuses: unknown value"),
        ({"agent_ids": ["nope"]}, "not a UUID"),
        ({"since": "yesterday-ish"}, "cannot read"),
        ({"host": "x" * 300}, "longer than"),
    ],
)
def test_unusable_filters_are_value_errors(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventFilters(**given)


def test_filters_round_trip_through_url_query_params() -> None:
    filters = EventFilters(
        since=datetime(2026, 11, 26, 8, 30, tzinfo=UTC),
        until=datetime(2026, 11, 27, tzinfo=UTC),
        agent_ids=(uuid.uuid4(), uuid.uuid4()),
        host="web, db",
        category=Category.MIGRATION,
        event_types=(EventType.MIGRATION_EXECUTION_FAILED, EventType.UPDATE_FAILED),
        statuses=(Status.FAILED, Status.WARNING),
        severities=(Severity.ERROR,),
        agent_version="0.1.*",
        migration_from=LEGACY_LAYOUT,
        migration_to=CURRENT_LAYOUT,
        fingerprint="928b41a06a850472",
        error_text="Permission denied",
    )

    params = filters.to_query_params()

    assert all(isinstance(v, str) for v in params.values())
    assert params["since"] == "2026-11-26T08:30:00Z"
    assert EventFilters.from_query_params(params) == filters
    assert EventFilters().to_query_params() == {}


def test_garbage_in_the_url_is_dropped_not_raised() -> None:
    good = str(uuid.uuid4())
    params = {
        "since": "not a date",
        "until": "2026-11-27",
        "statuses": "failed,exploded,,warning",
        "event_types": ["update_failed", "<script>"],
        "severities": ["nope"],
        "agent_ids": f"{good},zzz",
        "category": "both",
        "host": "x" * 1000,
        "error_text": ["first", "denied"],
        "unknown": "whatever",
    }

    filters = EventFilters.from_query_params(params)

    assert filters == EventFilters(
        until=datetime(2026, 11, 27, tzinfo=UTC),
        statuses=(Status.FAILED, Status.WARNING),
        event_types=(EventType.UPDATE_FAILED,),
        agent_ids=(uuid.UUID(good),),
        error_text="denied",
    )


def test_parse_time_reads_iso_dates_and_ages() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    assert analytics.parse_time("24h", now=now) == now - timedelta(hours=24)
    assert analytics.parse_time("7d", now=now) == now - timedelta(days=7)
    assert analytics.parse_time("2026-11-27") == datetime(2026, 11, 27, tzinfo=UTC)
    assert analytics.parse_time("2026-11-27T08:00Z") == datetime(2026, 11, 27, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO 8601"):
        analytics.parse_time("last tuesday")


def test_a_url_source_reuses_one_cached_engine(db_url: str) -> None:
    first = analytics.engine_for(db_url)

    assert analytics.engine_for(db_url) is first
    assert analytics.count_events(db_url) == 0
    assert analytics.engine_for(first) is first
    analytics.dispose_cached_engines()
    assert analytics.engine_for(db_url) is not first
    with pytest.raises(TypeError, match="Engine or a database URL"):
        analytics.engine_for(42)  # type: ignore[arg-type]
