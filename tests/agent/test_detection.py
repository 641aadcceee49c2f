"""Detection: what it inventories, which steps it asks for, and every way it fails."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from agent import detection as detection_module
from agent.config import MigrationStep
from agent.detection import DetectionOutcome, EntryKind, detect
from agent.layout import Layout
from tests.agent.sandbox import Host, current_config, legacy_config, snapshot

ALL_STEPS = (
    MigrationStep.DIRECTORY_MIGRATION,
    MigrationStep.CONFIG_MIGRATION,
    MigrationStep.CONFIG_V5_MIGRATION,
    MigrationStep.SECURITY_HARDENING,
)


def test_legacy_layout_needs_every_step(host: Host) -> None:
    host.with_legacy_layout()

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.NEEDED
    assert found.steps == ALL_STEPS
    assert found.config_version == 0
    assert found.migration_from == "<=0.1.18 (config v0, /etc/aggregator)"
    assert found.migration_to == "0.2.0 (config v5, /etc/redflag/agent)"
    assert "config lacks machine_id" in found.security_findings


def test_inventory_records_size_mode_mtime_and_sha256(host: Host) -> None:
    path = host.with_legacy_layout().path("/var/lib/aggregator/last_scan.json")

    found = detect(Layout.at(host.root))

    assert found.legacy_state_dir is not None
    entry = found.legacy_state_dir.find(path)
    assert entry is not None
    assert entry.kind is EntryKind.FILE
    assert entry.size == path.stat().st_size
    assert entry.mode == 0o644
    assert entry.mtime_ns == path.stat().st_mtime_ns
    assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    nested = found.legacy_state_dir.find(host.path("/var/lib/aggregator/history/2024-01.log"))
    assert nested is not None


def test_detection_changes_nothing(host: Host) -> None:
    host.with_legacy_layout()
    before = snapshot(host.root, exclude=())

    detect(Layout.at(host.root))

    assert snapshot(host.root, exclude=()) == before


def test_fully_migrated_host_needs_nothing(host: Host) -> None:
    host.with_current_layout(current_config())

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.NOT_NEEDED
    assert found.steps == ()
    assert found.migration_from == "0.2.0 (config v5, /etc/redflag/agent)"


def test_host_without_any_agent_config_needs_nothing(host: Host) -> None:
    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.NOT_NEEDED
    assert "no agent configuration found in either layout" in found.notes


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (3, (MigrationStep.CONFIG_MIGRATION, MigrationStep.CONFIG_V5_MIGRATION)),
        ("3", (MigrationStep.CONFIG_MIGRATION, MigrationStep.CONFIG_V5_MIGRATION)),
        (4, (MigrationStep.CONFIG_V5_MIGRATION,)),
        ("v4", (MigrationStep.CONFIG_V5_MIGRATION,)),
        (4.0, (MigrationStep.CONFIG_V5_MIGRATION,)),
        ("5", ()),
        (5, ()),
    ],
)
def test_config_version_as_number_or_string_decides_config_steps(
    host: Host, version: object, expected: tuple[MigrationStep, ...]
) -> None:
    host.with_current_layout(current_config(version=version))

    found = detect(Layout.at(host.root))

    assert found.steps == expected


def test_version_newer_than_supported_reports_detection_failed(host: Host) -> None:
    host.with_current_layout(current_config(version=7))

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert str(host.path("/etc/redflag/agent/config.json")) in found.failure.message
    assert "newer than this agent supports" in found.failure.message


@pytest.mark.parametrize("version", ["five", True, -1, [5], "5.x"])
def test_unrecognised_version_reports_detection_failed(host: Host, version: object) -> None:
    host.with_current_layout(current_config(version=version))

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert "unrecognised schema version" in found.failure.message


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"{not json", "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b"[1, 2]", "holds a JSON array, not an object"),
        (b'"text"', "holds a JSON string, not an object"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_corrupt_config_reports_detection_failed(
    host: Host, content: bytes, complaint: str
) -> None:
    config = host.with_legacy_layout().write("/etc/aggregator/config.json", content, 0o600)

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert str(config) in found.failure.message
    assert complaint in found.failure.message
    assert found.failure.path == str(config)
    assert found.migration_from.endswith("/etc/aggregator)")


def test_layouts_naming_different_agents_report_detection_failed(host: Host) -> None:
    host.with_legacy_layout()
    host.with_current_layout(current_config(agent_id="00000000-0000-4000-8000-000000000000"))

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert "conflicting layouts" in found.failure.message
    assert str(host.path("/etc/aggregator/config.json")) in found.failure.message
    assert str(host.path("/etc/redflag/agent/config.json")) in found.failure.message


def test_layouts_naming_the_same_agent_need_only_the_directory_move(host: Host) -> None:
    host.with_legacy_layout()
    host.with_current_layout(current_config())

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.NEEDED
    assert found.steps == (MigrationStep.DIRECTORY_MIGRATION,)


def test_unreadable_directory_reports_detection_failed(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_legacy_layout()
    locked = host.path("/var/lib/aggregator/history")
    real_scandir = os.scandir

    def scandir(path: str | Path) -> object:
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(detection_module.os, "scandir", scandir)

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert found.failure.message == (
        f"cannot read directory {locked}: [Errno 13] Permission denied"
    )
    assert found.failure.errno == errno.EACCES
    assert found.failure.errno_name == "EACCES"
    assert found.failure.exception_type == "PermissionError"


def test_unexpected_exception_reports_detection_failed_with_traceback(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_legacy_layout()

    def broken(path: Path) -> str:
        raise RuntimeError("hash engine exploded")

    monkeypatch.setattr(detection_module, "sha256_file", broken)

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert found.failure.exception_type == "RuntimeError"
    assert "hash engine exploded" in found.failure.message
    assert str(host.path("/etc/aggregator")) in found.failure.message
    assert found.failure.traceback is not None
    assert "RuntimeError" in found.failure.traceback


def test_config_symlink_leading_outside_the_root_reports_detection_failed(
    host: Host, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    host.path("/etc/aggregator").mkdir(parents=True)
    host.path("/etc/aggregator/config.json").symlink_to(outside)

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.FAILED
    assert found.failure is not None
    assert "leads outside" in found.failure.message


@pytest.mark.parametrize(
    "state",
    [
        {"completed_steps": {"security_hardening": {"success": True}}},
        {"completed_steps": ["security_hardening"]},
        {"completed_migrations": ["security_hardening"]},
    ],
)
def test_steps_recorded_as_done_are_skipped(host: Host, state: dict[str, object]) -> None:
    config = current_config(version=4, migration_state=state)
    del config["machine_id"]
    host.with_current_layout(config)

    found = detect(Layout.at(host.root))

    assert found.steps == (MigrationStep.CONFIG_V5_MIGRATION,)
    assert found.recorded_done == (MigrationStep.SECURITY_HARDENING,)


def test_failed_step_in_migration_state_is_not_skipped(host: Host) -> None:
    config = current_config(
        migration_state={"completed_steps": {"security_hardening": {"success": False}}}
    )
    del config["subsystems"]
    host.with_current_layout(config)

    found = detect(Layout.at(host.root))

    assert found.steps == (MigrationStep.SECURITY_HARDENING,)


def test_world_readable_secret_file_needs_security_hardening(host: Host) -> None:
    host.with_current_layout(current_config())
    host.write("/var/lib/redflag/agent/state/agent.key", "secret", 0o644)

    found = detect(Layout.at(host.root))

    assert found.steps == (MigrationStep.SECURITY_HARDENING,)
    assert found.security_findings == (
        "/var/lib/redflag/agent/state/agent.key is readable by group or others (mode 0644)",
    )


def test_reporting_state_and_old_backups_are_not_inventoried(host: Host) -> None:
    host.with_current_layout(current_config())
    host.write("/var/lib/redflag/agent/reporting/spool.sqlite3", "x", 0o644)
    host.write("/var/lib/redflag/agent/reporting/identity.json", "{}", 0o644)
    host.write("/var/lib/redflag/agent/migration_backups/old/token", "x", 0o644)

    found = detect(Layout.at(host.root))

    assert found.outcome is DetectionOutcome.NOT_NEEDED
    assert found.data_dir is not None
    assert all("reporting" not in str(e.path) for e in found.data_dir.entries)
    assert all("migration_backups" not in str(e.path) for e in found.data_dir.entries)


def test_summary_describes_steps_and_inventory(host: Host) -> None:
    host.with_legacy_layout(legacy_config(extra="x" * 100))
    layout = Layout.at(host.root)

    summary = detect(layout).summary(layout)

    assert summary["steps_needed"] == [step.value for step in ALL_STEPS]
    assert summary["inventory"]["/var/lib/aggregator"]["files"] == 2
    assert summary["inventory"]["/etc/redflag/agent"]["exists"] is False
    assert summary["inventory_files"] == 4
