"""Events: each outcome becomes a valid wire event with its context, within the limits."""

from __future__ import annotations

import json
from datetime import UTC

import pytest

from agent.detection import detect
from agent.events import detection_event, execution_event, fit_details, new_event
from agent.execution import execute
from agent.layout import Layout
from agent.sysinfo import collect_system_info
from models.vocabulary import EventType, Status
from models.wire import MAX_DETAILS_BYTES, Event
from tests.agent.sandbox import FakeClock, Host, current_config


def wire_roundtrip(event: Event) -> Event:
    """What the server will parse from the JSON the agent sends."""
    return Event.model_validate(json.loads(json.dumps(event.model_dump(mode="json"))))


def test_needed_detection_gives_detection_success(host: Host, clock: FakeClock) -> None:
    layout = Layout.at(host.with_legacy_layout().root)

    event = detection_event(
        layout, detect(layout), system_info=collect_system_info(layout), clock=clock.now
    )

    assert event.event_type is EventType.MIGRATION_DETECTION_SUCCESS
    assert event.status is Status.SUCCESS
    assert event.error_message is None
    assert event.migration_from == "<=0.1.18 (config v0, /etc/aggregator)"
    assert event.migration_to == "0.2.0 (config v5, /etc/redflag/agent)"
    assert event.timestamp == clock.now()
    assert event.timestamp.tzinfo is not None
    assert event.details["steps_needed"][0] == "directory_migration"
    assert wire_roundtrip(event) == event


def test_not_needed_detection_gives_not_needed(host: Host) -> None:
    layout = Layout.at(host.with_current_layout(current_config()).root)

    event = detection_event(layout, detect(layout), system_info={})

    assert event.event_type is EventType.MIGRATION_DETECTION_NOT_NEEDED


def test_failed_detection_carries_message_errno_and_path(host: Host) -> None:
    path = host.with_legacy_layout().write("/etc/aggregator/config.json", "{", 0o600)
    layout = Layout.at(host.root)

    event = detection_event(layout, detect(layout), system_info={})

    assert event.event_type is EventType.MIGRATION_DETECTION_FAILED
    assert event.status is Status.FAILED
    assert str(path) in (event.error_message or "")
    assert event.details["path"] == str(path)
    assert event.details["exception_type"] == "ConfigError"


def test_execution_outcomes_map_to_their_event_types(host: Host) -> None:
    layout = Layout.at(host.with_legacy_layout().root)
    result = execute(layout, detect(layout))

    event = execution_event(result, system_info={}, extra={"note": 1})

    assert event.event_type is EventType.MIGRATION_EXECUTION_SUCCESS
    assert event.details["phase"] == "execution"
    assert event.details["note"] == 1
    assert [step["status"] for step in event.details["steps"]] == ["done"] * 8
    assert wire_roundtrip(event) == event


def test_every_event_gets_a_fresh_id(host: Host) -> None:
    layout = Layout.at(host.root)
    found = detect(layout)

    first = detection_event(layout, found, system_info={})
    second = detection_event(layout, found, system_info={})

    assert first.event_id != second.event_id


def test_system_info_names_host_os_versions_identity_and_free_disk(host: Host) -> None:
    host.with_machine_id()
    host.write("/etc/os-release", 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    layout = Layout.at(host.root)

    info = collect_system_info(layout)

    assert info["hostname"] == "web-01"
    assert (info["os_name"], info["os_version"], info["os_type"]) == (
        "Debian GNU/Linux",
        "12",
        "linux",
    )
    assert info["machine_id"] == "0123456789abcdef0123456789abcdef"
    assert info["agent_version"] == "0.2.0"
    assert info["python_version"].startswith("3.")
    for key in ("architecture", "kernel", "euid", "user", "root"):
        assert key in info
    assert set(info["disk_free_bytes"]) == {
        "/etc/aggregator",
        "/var/lib/aggregator",
        "/etc/redflag/agent",
        "/var/lib/redflag/agent",
    }
    assert all(isinstance(v, int) and v > 0 for v in info["disk_free_bytes"].values())
    new_event(
        EventType.MIGRATION_DETECTION_NOT_NEEDED,
        error_message=None,
        migration_from=None,
        migration_to=None,
        system_info=info,
        details={},
    )


def test_oversized_details_are_trimmed_to_fit_the_server_limit() -> None:
    details = {
        "phase": "execution",
        "failed_step": "backup",
        "traceback": "frame\n" * 20_000,
        "warnings": [f"warning {i} " + "w" * 200 for i in range(400)],
    }

    fitted = fit_details(details)

    assert len(json.dumps(fitted).encode()) < MAX_DETAILS_BYTES
    assert fitted["details_trimmed"] is True
    assert fitted["failed_step"] == "backup"
    assert details["traceback"].startswith("frame")  # the caller's dict is left alone


def test_small_details_are_left_alone() -> None:
    details = {"phase": "detection", "steps": ["a"]}
    assert fit_details(details) is details


def test_long_migration_labels_are_cut_to_the_wire_limit() -> None:
    event = new_event(
        EventType.MIGRATION_EXECUTION_PARTIAL,
        error_message="warned",
        migration_from="x" * 400,
        migration_to="0.2.0",
        system_info={},
        details={},
    )
    assert len(event.migration_from or "") == 255
    assert event.timestamp.tzinfo is UTC


@pytest.mark.parametrize("event_type", list(EventType)[:6])
def test_status_always_agrees_with_the_vocabulary(event_type: EventType) -> None:
    event = new_event(
        event_type,
        error_message="why",
        migration_from=None,
        migration_to=None,
        system_info={},
        details={},
    )
    assert wire_roundtrip(event).event_type is event_type
