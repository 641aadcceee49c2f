"""Execution: the migration itself, its rollback to the exact prior state, and partial success."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import execution as execution_module
from agent import fsutil
from agent.config import MigrationStep
from agent.detection import DetectionOutcome, detect
from agent.execution import Execution, ExecutionOutcome, StepStatus, execute
from agent.layout import Layout
from tests.agent.sandbox import (
    LEGACY_AGENT_ID,
    MACHINE_ID,
    FakeClock,
    Host,
    current_config,
    legacy_config,
    snapshot,
)

PRIMITIVES = ("make_dir", "copy_verified", "write_atomic")


def migrate(host: Host, clock: FakeClock | None = None) -> Execution:
    layout = Layout.at(host.root)
    found = detect(layout)
    assert found.outcome is DetectionOutcome.NEEDED, found.failure
    return execute(layout, found, clock=clock.now if clock else execution_module.utc_now)


def statuses(result: Execution) -> dict[str, str]:
    return {step.name: step.status.value for step in result.steps}


def enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# --- success -------------------------------------------------------------------------------


def test_legacy_layout_migrates_to_the_current_layout(host: Host, clock: FakeClock) -> None:
    host.with_legacy_layout().with_machine_id()
    legacy_bytes = host.path("/var/lib/aggregator/last_scan.json").read_bytes()

    result = migrate(host, clock)

    assert result.outcome is ExecutionOutcome.SUCCESS, result.message
    assert result.message is None
    assert host.path("/var/lib/redflag/agent/state/last_scan.json").read_bytes() == legacy_bytes
    assert host.exists("/var/lib/redflag/agent/state/history/2024-01.log")
    assert host.exists("/etc/redflag/agent/ca.pem")
    assert host.exists("/var/lib/redflag/agent/cache")
    assert not host.exists("/etc/aggregator")
    assert not host.exists("/var/lib/aggregator")
    assert set(statuses(result).values()) == {"done"}
    assert list(statuses(result)) == [
        "backup",
        "directory_migration",
        "config_migration",
        "config_v5_migration",
        "security_hardening",
        "write_config",
        "validate",
        "remove_legacy",
    ]


def test_converted_config_keeps_every_setting_and_adds_the_new_ones(
    host: Host, clock: FakeClock
) -> None:
    old = legacy_config(custom={"nested": [1, 2, {"keep": True}]}, check_in_interval=45)
    host.with_legacy_layout(old).with_machine_id()

    result = migrate(host, clock)

    config = host.read_json("/etc/redflag/agent/config.json")
    for key, value in old.items():
        if key != "tls":
            assert config[key] == value, key
    assert config["tls"] == {"insecure_skip_verify": False, "ca_file": "/etc/redflag/agent/ca.pem"}
    assert config["version"] == 5
    assert config["agent_version"] == "0.2.0"
    assert config["machine_id"] == MACHINE_ID
    assert set(config["subsystems"]) >= {"apt", "dnf", "docker"}
    done = config["migration_state"]["completed_steps"]
    assert set(done) == {step.value for step in MigrationStep}
    backup = "/" + str(result.backup_path.relative_to(host.root))  # type: ignore[union-attr]
    for record in done.values():
        assert record["success"] is True
        assert record["backup_path"] == backup
        assert record["completed_at"].startswith(clock.start.date().isoformat())
    assert config["migration_state"]["last_migration"]["from"] == (
        "<=0.1.18 (config v0, /etc/aggregator)"
    )
    assert result.stats["rewritten_settings"] == {"tls.ca_file": "/etc/redflag/agent/ca.pem"}


def test_machine_id_is_generated_when_the_host_has_none(host: Host) -> None:
    host.with_legacy_layout()

    migrate(host)

    machine_id = host.read_json("/etc/redflag/agent/config.json")["machine_id"]
    assert len(machine_id) == 32
    assert machine_id != MACHINE_ID


def test_secret_files_end_up_owner_only(host: Host) -> None:
    host.with_legacy_layout()
    host.write("/etc/aggregator/config.json", json.dumps(legacy_config()), 0o644)
    host.write("/var/lib/aggregator/api_token", "t0k3n", 0o644)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.SUCCESS
    assert os.stat(host.path("/etc/redflag/agent/config.json")).st_mode & 0o777 == 0o600
    assert os.stat(host.path("/var/lib/redflag/agent/state/api_token")).st_mode & 0o777 == 0o600
    # Files that are not secrets keep their mode.
    assert os.stat(
        host.path("/var/lib/redflag/agent/state/history/2024-01.log")
    ).st_mode & 0o777 == (0o640)


def test_backup_holds_every_inventoried_file_with_a_manifest(host: Host) -> None:
    host.with_legacy_layout()
    originals = {
        str(p.relative_to(host.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in host.root.rglob("*")
        if p.is_file()
    }

    result = migrate(host)

    assert result.backup_path is not None
    assert result.backup_retained
    manifest = json.loads((result.backup_path / "manifest.json").read_text())
    listed = {entry["path"]: entry for entry in manifest["entries"]}
    for relative, digest in originals.items():
        copy = result.backup_path / "files" / relative
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
        assert listed["/" + relative]["sha256"] == digest
    assert os.stat(result.backup_path).st_mode & 0o777 == 0o700


def test_both_layouts_merge_with_the_current_config_winning(host: Host) -> None:
    host.with_legacy_layout(legacy_config(only_in_legacy="kept", check_in_interval=60))
    host.with_current_layout(current_config(check_in_interval=120))

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.SUCCESS, result.message
    config = host.read_json("/etc/redflag/agent/config.json")
    assert config["check_in_interval"] == 120
    assert config["only_in_legacy"] == "kept"
    assert config["agent_id"] == LEGACY_AGENT_ID


def test_an_existing_identical_file_is_verified_not_copied(host: Host) -> None:
    host.with_legacy_layout()
    host.with_current_layout(current_config())
    same = host.path("/var/lib/aggregator/last_scan.json").read_bytes()
    host.write("/var/lib/redflag/agent/state/last_scan.json", same, 0o644)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.SUCCESS
    assert result.stats["files_already_present"] == 1


def test_migrated_host_needs_nothing_afterwards(host: Host) -> None:
    host.with_legacy_layout()
    migrate(host)

    assert detect(Layout.at(host.root)).outcome is DetectionOutcome.NOT_NEEDED


def test_execute_refuses_a_detection_that_needs_nothing(host: Host) -> None:
    layout = Layout.at(host.root)
    with pytest.raises(ValueError, match="nothing to execute"):
        execute(layout, detect(layout))


# --- rollback ------------------------------------------------------------------------------


def _scenario_legacy_only(host: Host) -> None:
    host.with_legacy_layout()
    host.path("/var/lib/aggregator/latest").symlink_to("history/2024-01.log")


def _scenario_both_layouts(host: Host) -> None:
    host.with_legacy_layout()
    host.with_current_layout(current_config(version="4"))
    host.write("/var/lib/redflag/agent/state/agent.key", "k", 0o644)
    host.write("/var/lib/redflag/agent/cache/packages.json", "[]", 0o644)


@pytest.mark.parametrize("scenario", [_scenario_legacy_only, _scenario_both_layouts])
def test_failure_at_any_write_rolls_back_byte_for_byte(
    host: Host, monkeypatch: pytest.MonkeyPatch, scenario: Callable[[Host], None]
) -> None:
    """Inject a full disk at every write the migration makes, one run per write."""
    # Durability is not what this test is about, and dozens of runs of fsyncs are slow.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    calls = {"count": 0, "fail_at": -1}
    for name in PRIMITIVES:
        real = getattr(execution_module, name)

        def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            calls["count"] += 1
            if calls["count"] - 1 == calls["fail_at"]:
                raise enospc()
            return _real(*args, **kwargs)

        monkeypatch.setattr(execution_module, name, counted)

    probe = Host(host.root / "probe")
    probe.root.mkdir()
    scenario(probe)
    assert migrate(probe).outcome is ExecutionOutcome.SUCCESS
    total = calls["count"]
    assert total > 10

    for fail_at in range(total):
        sandbox = Host(host.root / f"run-{fail_at}")
        sandbox.root.mkdir()
        scenario(sandbox)
        before = snapshot(sandbox.root)
        calls.update(count=0, fail_at=fail_at)

        result = migrate(sandbox)

        assert result.outcome is ExecutionOutcome.FAILED, fail_at
        assert result.rollback is not None
        assert result.rollback.complete, result.rollback.errors
        assert snapshot(sandbox.root) == before, f"not rolled back after write {fail_at}"
        assert not result.backup_retained
        assert result.failure is not None
        assert result.failure.errno == errno.ENOSPC
        assert result.failure.errno_name == "ENOSPC"
        assert result.failure.path is not None


def test_disk_full_while_writing_the_config_is_reported_with_step_and_path(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_legacy_layout()
    before = snapshot(host.root)
    real_write_all = fsutil.write_all

    def write_all(fd: int, data: bytes) -> None:
        if b'"migration_state"' in data and b'"completed_steps"' in data:
            real_write_all(fd, data[:10])  # part of it lands, then the disk is full
            raise enospc()
        real_write_all(fd, data)

    monkeypatch.setattr(fsutil, "write_all", write_all)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.FAILED
    assert result.failed_step == "write_config"
    details = result.details()
    assert details["errno"] == errno.ENOSPC
    assert details["errno_name"] == "ENOSPC"
    assert details["exception_type"] == "OSError"
    assert details["path"] == str(host.path("/etc/redflag/agent/config.json"))
    assert "No space left on device" in (result.message or "")
    assert "rolled back" in (result.message or "")
    assert statuses(result) == {
        "backup": "rolled_back",
        "directory_migration": "rolled_back",
        "config_migration": "rolled_back",
        "config_v5_migration": "rolled_back",
        "security_hardening": "rolled_back",
        "write_config": "failed",
        "validate": "skipped",
        "remove_legacy": "skipped",
    }
    assert "Traceback" in details["traceback"]
    assert snapshot(host.root) == before


def test_real_full_filesystem_fails_and_rolls_back(
    host: Host, tiny_tmpfs: Callable[[Path], None]
) -> None:
    host.with_legacy_layout(legacy_config(inventory_cache="x" * 100_000))
    tiny_tmpfs(host.path("/etc/redflag"))
    before = snapshot(host.root)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.FAILED
    assert result.failed_step == "write_config"
    assert result.failure is not None
    assert result.failure.errno == errno.ENOSPC
    assert snapshot(host.root) == before
    assert os.listdir(host.path("/etc/redflag")) == []


def test_source_changed_since_detection_fails_with_checksum_mismatch(host: Host) -> None:
    host.with_legacy_layout()
    layout = Layout.at(host.root)
    found = detect(layout)
    host.write("/var/lib/aggregator/last_scan.json", '{"updates": 4}', 0o644)
    before = snapshot(host.root)

    result = execute(layout, found)

    assert result.outcome is ExecutionOutcome.FAILED
    assert result.failed_step == "backup"  # the backup is the first to read it again
    assert result.failure is not None
    assert result.failure.exception_type == "ChecksumMismatchError"
    assert "source changed since detection" in result.failure.message
    assert result.failure.path == str(host.path("/var/lib/aggregator/last_scan.json"))
    assert snapshot(host.root) == before


def test_validation_failure_rolls_back(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.with_legacy_layout()
    before = snapshot(host.root)
    real_render = execution_module.render_config

    def render(config: dict[str, Any]) -> bytes:
        if "migration_state" in config:
            return real_render({**config, "version": 4})
        return real_render(config)

    monkeypatch.setattr(execution_module, "render_config", render)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.FAILED
    assert result.failed_step == "validate"
    assert result.failure is not None
    assert result.failure.exception_type == "ValidationError"
    assert statuses(result)["write_config"] == "rolled_back"
    assert snapshot(host.root) == before


def test_incomplete_rollback_keeps_the_backup_and_says_so(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_legacy_layout()
    real_rmdir = os.rmdir
    state_dir = host.path("/var/lib/redflag/agent/state")

    def write_atomic(*args: Any, **kwargs: Any) -> None:
        raise enospc()

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == state_dir:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        real_rmdir(path, *args, **kwargs)

    real_write_atomic = execution_module.write_atomic
    monkeypatch.setattr(
        execution_module,
        "write_atomic",
        lambda path, *a, **k: (
            write_atomic() if path.name == "config.json" else real_write_atomic(path, *a, **k)
        ),
    )
    monkeypatch.setattr(os, "rmdir", rmdir)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.FAILED
    assert result.rollback is not None
    assert not result.rollback.complete
    assert result.backup_retained
    assert result.backup_path is not None
    assert result.backup_path.is_dir()
    assert "rollback incomplete" in (result.message or "")
    assert str(result.backup_path) in (result.message or "")
    # The legacy layout was never touched, so the host still works.
    assert host.exists("/etc/aggregator/config.json")


def test_interrupt_rolls_back_and_propagates(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.with_legacy_layout()
    before = snapshot(host.root)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(execution_module, "write_atomic", interrupted)

    with pytest.raises(KeyboardInterrupt):
        migrate(host)
    assert snapshot(host.root) == before


# --- partial success -----------------------------------------------------------------------


def test_mode_that_cannot_be_tightened_gives_partial(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_current_layout(current_config())
    secret = host.write("/var/lib/redflag/agent/state/agent.key", "k", 0o644)
    real_chmod = os.chmod

    def chmod(path: Any, mode: int, **kwargs: Any) -> None:
        if Path(path) == secret:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        real_chmod(path, mode, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.PARTIAL
    assert result.warnings == [
        "could not restrict /var/lib/redflag/agent/state/agent.key to mode 0600 "
        "(it stays 0644): Operation not permitted"
    ]
    assert result.message is not None
    assert result.message.startswith("migration completed with 1 warning")
    assert statuses(result)["security_hardening"] == "done"


def test_legacy_directory_that_cannot_be_removed_gives_partial(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.with_legacy_layout()
    legacy = host.path("/var/lib/aggregator")
    real_rmdir = os.rmdir

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == legacy:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", rmdir)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.PARTIAL
    assert result.warnings == [
        "could not remove legacy /var/lib/aggregator: [Errno 13] Permission denied"
    ]
    assert result.stats["legacy_dirs_left"] == 1
    assert host.read_json("/etc/redflag/agent/config.json")["version"] == 5


def test_legacy_file_that_appeared_during_migration_is_kept(host: Host) -> None:
    host.with_legacy_layout()
    layout = Layout.at(host.root)
    found = detect(layout)
    host.write("/var/lib/aggregator/late.json", "{}", 0o644)

    result = execute(layout, found)

    assert result.outcome is ExecutionOutcome.PARTIAL
    assert host.exists("/var/lib/aggregator/late.json")
    assert any("/var/lib/aggregator" in warning for warning in result.warnings)


def test_differing_current_file_is_kept_with_a_warning(host: Host) -> None:
    host.with_legacy_layout()
    host.with_current_layout(current_config())
    host.write("/var/lib/redflag/agent/state/last_scan.json", '{"updates": 9}', 0o644)

    result = migrate(host)

    assert result.outcome is ExecutionOutcome.PARTIAL
    assert host.read_json("/var/lib/redflag/agent/state/last_scan.json") == {"updates": 9}
    assert "kept the current /var/lib/redflag/agent/state/last_scan.json" in result.warnings[0]


def test_recorded_steps_appear_as_skipped(host: Host) -> None:
    config = current_config(version=4, migration_state={"completed_steps": ["security_hardening"]})
    del config["machine_id"]
    host.with_current_layout(config)

    result = migrate(host)

    skipped = next(step for step in result.steps if step.name == "security_hardening")
    assert skipped.status is StepStatus.SKIPPED
    assert skipped.reason == "recorded as done in migration_state"
    assert statuses(result)["config_v5_migration"] == "done"
