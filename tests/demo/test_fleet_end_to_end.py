"""The seed's integration test plan end to end: real agents, real failures, real server.

Every host of the demo fleet ran the real `redflag-agent` as a subprocess on its sandbox
root against the ingest API running as a server process; the assertions read the result
the way the console and the analysts do, through `models.analytics`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from demo.fleet import HostKind
from models.analytics import error_groups_frame, events_frame, fleet_status_frame
from models.vocabulary import EventType, MigrationState, kind_of
from tests.demo.conftest import DemoFleet

pytestmark = pytest.mark.slow

# What the issue asks the fleet to show, and the host kinds that show it.
OUTCOMES_ASKED_FOR: dict[str, set[HostKind]] = {
    "permission denied": {HostKind.PERMISSION_DENIED, HostKind.UNREADABLE_STATE},
    "corrupt config": {HostKind.CORRUPT_CONFIG},
    "config from a newer version": {HostKind.NEWER_CONFIG},
    "conflicting layouts": {HostKind.CONFLICTING_LAYOUTS},
    "disk full": {HostKind.DISK_FULL},
    "partial": {HostKind.LOOSE_SECRET, HostKind.LEGACY_LEFT_BEHIND},
    "not needed": {HostKind.CURRENT},
    "success": {HostKind.LEGACY, HostKind.OUTDATED_CONFIG},
    "never reported": {HostKind.NEVER_MIGRATES, HostKind.SILENT},
}
DETECTION_FAILURES = {
    HostKind.CORRUPT_CONFIG,
    HostKind.NEWER_CONFIG,
    HostKind.CONFLICTING_LAYOUTS,
    HostKind.UNREADABLE_STATE,
}
PLANNED_KINDS = list(HostKind)


def migration_events(fleet: DemoFleet, hostname: str) -> pd.DataFrame:
    """The host's migration events, oldest first."""
    events = events_frame(fleet.database_url, category="migration", host=hostname)
    return events[events["hostname"] == hostname].iloc[::-1].reset_index(drop=True)


def fleet_row(fleet: DemoFleet, hostname: str) -> dict[str, Any]:
    frame = fleet_status_frame(fleet.database_url)
    [row] = frame[frame["hostname"] == hostname].to_dict("records")
    return row


def missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def test_the_fleet_has_a_host_for_every_outcome_the_issue_asks_for(demo_fleet: DemoFleet) -> None:
    kinds = {host.spec.kind for host in demo_fleet.hosts}

    lacking = [outcome for outcome, makers in OUTCOMES_ASKED_FOR.items() if not kinds & makers]

    assert lacking == [], f"this machine could not produce: {lacking} ({demo_fleet.substitutes})"


def test_every_host_is_enrolled_with_its_own_name_os_and_agent_version(
    demo_fleet: DemoFleet,
) -> None:
    frame = fleet_status_frame(demo_fleet.database_url).set_index("hostname")

    assert sorted(frame.index) == sorted(host.hostname for host in demo_fleet.hosts)
    for host in demo_fleet.hosts:
        row = frame.loc[host.hostname]
        assert row["os_version"] == f"{host.spec.os.name} {host.spec.os.version_id}"
        assert row["os_type"] == "linux"
        assert row["agent_version"] == "0.2.0"


@pytest.mark.parametrize("index", range(len(PLANNED_KINDS)), ids=[k.value for k in PLANNED_KINDS])
def test_host_outcome_is_in_the_fleet_status_with_its_state_and_error(
    demo_fleet: DemoFleet, index: int
) -> None:
    host = demo_fleet.hosts[index]
    expected = host.spec.expectation

    row = fleet_row(demo_fleet, host.hostname)

    assert row["migration_state"] == expected.state
    last_type = row["last_migration_event_type"]
    assert (None if missing(last_type) else EventType(last_type)) == expected.event_type
    if expected.error is None:
        assert missing(row["last_error_message"])
    else:
        assert expected.error in row["last_error_message"]
    if expected.state in (MigrationState.FAILED, MigrationState.PARTIAL):
        assert not missing(row["last_fingerprint"])


@pytest.mark.parametrize("index", range(len(PLANNED_KINDS)), ids=[k.value for k in PLANNED_KINDS])
def test_host_migration_events_have_type_status_failed_step_and_error_text(
    demo_fleet: DemoFleet, index: int
) -> None:
    host = demo_fleet.hosts[index]
    kind, expected = host.spec.kind, host.spec.expectation

    events = migration_events(demo_fleet, host.hostname)

    if expected.event_type is None:
        assert events.empty
        return
    types = [EventType(t) for t in events["event_type"]]
    if kind is HostKind.CURRENT or kind in DETECTION_FAILURES:
        assert types == [expected.event_type]
    else:
        assert types == [EventType.MIGRATION_DETECTION_SUCCESS, expected.event_type]
    last = events.iloc[-1]
    details = last["details"]
    assert last["status"] == kind_of(expected.event_type).status
    assert last["phase"] == kind_of(expected.event_type).phase
    assert details.get("failed_step") == expected.failed_step
    if expected.error is not None:
        assert expected.error in last["error_message"]
    assert last["system_info"]["hostname"] == host.hostname
    assert last["migration_to"] == "0.2.0 (config v5, /etc/redflag/agent)"


def test_execution_failures_name_errno_and_path_and_are_rolled_back(demo_fleet: DemoFleet) -> None:
    for kind, errno_name, path in (
        (HostKind.PERMISSION_DENIED, "EACCES", "/etc/redflag"),
        (HostKind.DISK_FULL, "ENOSPC", "/etc/redflag/agent/config.json"),
    ):
        host = demo_fleet.host(kind)
        details = migration_events(demo_fleet, host.hostname).iloc[-1]["details"]

        assert details["errno_name"] == errno_name
        assert details["path"] == str(host.root / path.lstrip("/"))
        assert details["rollback"]["status"] == "complete"
        assert not (host.root / "etc/redflag/agent/config.json").exists()


def test_disk_full_host_reports_its_tiny_filesystem(demo_fleet: DemoFleet) -> None:
    host = demo_fleet.host(HostKind.DISK_FULL)

    last = migration_events(demo_fleet, host.hostname).iloc[-1]

    free = last["system_info"]["disk_free_bytes"]["/etc/redflag/agent"]
    assert free <= 64 * 1024


def test_confined_hosts_ran_as_an_unprivileged_user(demo_fleet: DemoFleet) -> None:
    for kind in (HostKind.PERMISSION_DENIED, HostKind.UNREADABLE_STATE):
        host = demo_fleet.host(kind)
        last = migration_events(demo_fleet, host.hostname).iloc[-1]

        assert last["details"]["errno_name"] == "EACCES"
        if demo_fleet.agent_user.owner is not None:
            assert last["system_info"]["euid"] == demo_fleet.agent_user.owner


def test_partial_migrations_list_their_warnings(demo_fleet: DemoFleet) -> None:
    partial = [
        host for host in demo_fleet.hosts if host.spec.expectation.state is MigrationState.PARTIAL
    ]

    for host in partial:
        last = migration_events(demo_fleet, host.hostname).iloc[-1]
        assert last["severity"] == "warning"
        [warning] = last["details"]["warnings"]
        assert warning in last["error_message"]
        assert (host.root / "etc/redflag/agent/config.json").exists()


def test_silent_hosts_are_never_reported_and_stale_the_others_are_fresh(
    demo_fleet: DemoFleet,
) -> None:
    frame = fleet_status_frame(demo_fleet.database_url).set_index("hostname")

    for host in demo_fleet.hosts:
        row = frame.loc[host.hostname]
        if host.spec.kind is HostKind.SILENT:
            assert row["migration_state"] == MigrationState.NEVER_REPORTED
            assert pd.isna(row["last_seen_at"])
            assert row["stale"]
        else:
            assert not pd.isna(row["last_seen_at"])
            assert not row["stale"]


def test_every_failure_belongs_to_an_error_group(demo_fleet: DemoFleet) -> None:
    groups = error_groups_frame(demo_fleet.database_url, category="migration")
    frame = fleet_status_frame(demo_fleet.database_url)
    failing = frame[frame["migration_state"].isin([MigrationState.FAILED, MigrationState.PARTIAL])]

    assert set(failing["last_fingerprint"]) <= set(groups["fingerprint"])
    assert len(groups) == len(set(failing["last_fingerprint"]))


def test_update_events_sit_beside_migration_events(demo_fleet: DemoFleet) -> None:
    updates = events_frame(demo_fleet.database_url, category="update")
    row = fleet_row(demo_fleet, demo_fleet.updated_host)

    assert list(updates["hostname"]) == [demo_fleet.updated_host]
    for update in updates.to_dict("records"):
        assert update["event_type"].startswith("update_")
        assert update["details"]["package"]
        assert update["details"]["package_manager"] in ("apt", "dnf", "zypper")
        assert missing(update["migration_from"])
    assert row["migration_state"] == MigrationState.MIGRATED
