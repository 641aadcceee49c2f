"""Migration execution: back up, copy, convert and validate, and roll back on any fatal error.

Every change is journaled the moment it happens, so that a failure at any point can undo
exactly what was done and leave the host byte for byte and mode for mode as before.
"""

from __future__ import annotations

import contextlib
import os
import stat
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent import AGENT_VERSION
from agent.config import (
    CURRENT_CONFIG_VERSION,
    ConfigError,
    MigrationStep,
    StepRecord,
    agent_id_of,
    convert_config,
    is_secret_file,
    parse_config,
    render_config,
)
from agent.detection import (
    TRACEBACK_CHARS,
    Clock,
    Detection,
    DetectionOutcome,
    Entry,
    EntryKind,
    Failure,
    Tree,
    utc_now,
)
from agent.fsutil import (
    ChecksumMismatchError,
    copy_verified,
    fsync_dir,
    make_dir,
    sha256_file,
    write_atomic,
)
from agent.layout import Layout
from agent.sysinfo import machine_id as host_machine_id

_MIGRATION_STEPS = frozenset(step.value for step in MigrationStep)
SECRET_MODE = 0o600
DEFAULT_DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700
MAX_LISTED = 50


class ExecutionOutcome(StrEnum):
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"


class StepStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"


class Stage(StrEnum):
    """Execution stages as reported: the detected migration steps plus the bookkeeping."""

    BACKUP = "backup"
    DIRECTORY_MIGRATION = MigrationStep.DIRECTORY_MIGRATION.value
    CONFIG_MIGRATION = MigrationStep.CONFIG_MIGRATION.value
    CONFIG_V5_MIGRATION = MigrationStep.CONFIG_V5_MIGRATION.value
    SECURITY_HARDENING = MigrationStep.SECURITY_HARDENING.value
    WRITE_CONFIG = "write_config"
    VALIDATE = "validate"
    REMOVE_LEGACY = "remove_legacy"


class MigrationConflictError(Exception):
    """The current layout holds something where the migration must put something else."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class ValidationError(Exception):
    """The migrated layout does not hold what the migration was supposed to produce."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(slots=True)
class StepReport:
    name: str
    status: StepStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"name": self.name, "status": self.status.value}
        if self.started_at is not None:
            report["started_at"] = self.started_at.isoformat()
        if self.finished_at is not None:
            report["finished_at"] = self.finished_at.isoformat()
        if self.reason:
            report["reason"] = self.reason
        if self.error:
            report["error"] = self.error
        return report


@dataclass(slots=True)
class RollbackReport:
    undone: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors


@dataclass(slots=True)
class Execution:
    """The outcome of one execution, with everything the report needs."""

    outcome: ExecutionOutcome
    started_at: datetime
    finished_at: datetime
    migration_from: str
    migration_to: str
    steps: list[StepReport]
    warnings: list[str]
    backup_path: Path | None
    backup_retained: bool
    failed_step: str | None = None
    failure: Failure | None = None
    rollback: RollbackReport | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str | None:
        """The one-line summary an admin reads first; None for a clean success."""
        if self.failure is not None:
            return self.failure.message
        if self.warnings:
            count = len(self.warnings)
            noun = "warning" if count == 1 else "warnings"
            return f"migration completed with {count} {noun}: " + "; ".join(self.warnings[:5])
        return None

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "steps": [step.to_json() for step in self.steps],
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "backup_path": str(self.backup_path) if self.backup_path else None,
            "backup_retained": self.backup_retained,
            "warnings": _capped(self.warnings),
            **self.stats,
        }
        if self.failure is not None:
            details.update(
                failed_step=self.failed_step,
                errno=self.failure.errno,
                errno_name=self.failure.errno_name,
                path=self.failure.path,
                exception_type=self.failure.exception_type,
                traceback=self.failure.traceback,
            )
        if self.rollback is not None:
            details["rollback"] = {
                "status": "complete" if self.rollback.complete else "incomplete",
                "undone": self.rollback.undone,
                "errors": _capped(self.rollback.errors),
            }
        return details


def _capped(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return list(items)
    return [*items[:MAX_LISTED], f"... and {len(items) - MAX_LISTED} more"]


# --- the journal -------------------------------------------------------------------------


class _Journal:
    """Changes in the order they happened; rollback replays their undos backwards."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._backup_mark = 0

    def created_dir(self, path: Path) -> None:
        self._undo.append((f"remove directory {path}", lambda: _remove(path, os.rmdir)))

    def created_file(self, path: Path) -> None:
        self._undo.append((f"remove {path}", lambda: _remove(path, os.unlink)))

    def replaced_file(self, path: Path, original: Entry, saved_copy: Path) -> None:
        self._undo.append((f"restore {path}", lambda: _restore(path, original, saved_copy)))

    def changed_mode(self, path: Path, old_mode: int) -> None:
        self._undo.append(
            (f"restore mode {old_mode:04o} of {path}", lambda: os.chmod(path, old_mode))
        )

    def mark_backup_complete(self) -> None:
        """Everything journaled so far is the backup, which rollback removes last."""
        self._backup_mark = len(self._undo)

    def rollback(self) -> tuple[RollbackReport, bool]:
        """Undo the migration; the backup goes only when everything else was undone.

        Returns the report and whether the backup was kept.
        """
        report = RollbackReport()
        self._replay(self._undo[self._backup_mark :], report)
        if not report.complete:
            return report, True
        self._replay(self._undo[: self._backup_mark], report)
        return report, False

    @staticmethod
    def _replay(entries: list[tuple[str, Callable[[], None]]], report: RollbackReport) -> None:
        for description, undo in reversed(entries):
            try:
                undo()
            except OSError as exc:
                report.errors.append(f"could not {description}: {exc}")
            else:
                report.undone += 1


def _remove(path: Path, remover: Callable[[Path], None]) -> None:
    with contextlib.suppress(FileNotFoundError):
        remover(path)
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)


def _restore(path: Path, original: Entry, saved_copy: Path) -> None:
    """Put a replaced file back: its bytes from the backup, its mode, owner and mtime."""
    if original.link_target is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.symlink(original.link_target, path)
        return
    write_atomic(path, saved_copy.read_bytes(), original.mode, owner=original.owner)
    os.utime(path, ns=(original.mtime_ns, original.mtime_ns))
    if sha256_file(path) != original.sha256:
        raise OSError(f"restored {path} does not match its backup")


# --- execution ---------------------------------------------------------------------------


@dataclass
class _Run:
    """State of one execution while it runs."""

    layout: Layout
    detection: Detection
    clock: Clock
    journal: _Journal = field(default_factory=_Journal)
    warnings: list[str] = field(default_factory=list)
    steps: list[StepReport] = field(default_factory=list)
    backup_root: Path | None = None
    # What moved where (logical host paths) and the expected SHA-256 at each new place.
    path_map: dict[str, str] = field(default_factory=dict)
    expected: dict[Path, str] = field(default_factory=dict)
    records: list[StepRecord] = field(default_factory=list)
    converted: dict[str, Any] | None = None
    current_path: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def at(self, path: Path) -> Iterator[None]:
        """Name the path being worked on, for errors (a full disk) that carry no filename."""
        previous, self.current_path = self.current_path, path
        yield
        # Not restored when the block raises: the failure report needs this very path.
        self.current_path = previous

    def count(self, key: str, amount: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + amount


def execute(
    layout: Layout,
    detection: Detection,
    *,
    clock: Clock = utc_now,
) -> Execution:
    """Run the migration detection asked for; never raises for a migration failure."""
    if detection.outcome is not DetectionOutcome.NEEDED:
        raise ValueError(f"nothing to execute: detection outcome is {detection.outcome.value}")
    run = _Run(layout, detection, clock)
    started = clock()
    plan = _plan(detection)
    actions: dict[Stage, Callable[[], None]] = {
        Stage.BACKUP: lambda: _backup(run),
        Stage.DIRECTORY_MIGRATION: lambda: _migrate_directories(run),
        # The config conversions are pure and land together in write_config; as stages
        # they record that they were part of this migration and roll back with it.
        Stage.CONFIG_MIGRATION: lambda: None,
        Stage.CONFIG_V5_MIGRATION: lambda: None,
        Stage.SECURITY_HARDENING: lambda: _harden(run),
        Stage.WRITE_CONFIG: lambda: _write_config(run),
        Stage.VALIDATE: lambda: _validate(run),
        Stage.REMOVE_LEGACY: lambda: _remove_legacy(run),
    }
    reports = {stage: StepReport(stage.value, StepStatus.SKIPPED) for stage in plan}
    for step in detection.recorded_done:
        reports[Stage(step.value)] = StepReport(
            step.value, StepStatus.SKIPPED, reason="recorded as done in migration_state"
        )
    run.steps = [reports[stage] for stage in Stage if stage in reports]

    current = plan[0]
    try:
        for stage in plan:
            current = stage
            report = reports[stage]
            report.started_at = clock()
            actions[stage]()
            report.status = StepStatus.DONE
            report.finished_at = clock()
            if stage.value in _MIGRATION_STEPS:
                run.records.append(
                    StepRecord(
                        MigrationStep(stage.value),
                        report.finished_at.isoformat(),
                        layout.logical(run.backup_root) if run.backup_root else "",
                    )
                )
    except BaseException as exc:
        failure = _describe_failure(run, current, exc)
        reports[current].status = StepStatus.FAILED
        reports[current].finished_at = clock()
        reports[current].error = failure.message
        rollback, kept = run.journal.rollback()
        for stage in plan:
            report = reports[stage]
            if report.status is StepStatus.DONE:
                report.status = StepStatus.ROLLED_BACK
            elif report.status is StepStatus.SKIPPED and report.started_at is None:
                report.reason = report.reason or "not reached: an earlier step failed"
        suffix = (
            "; rolled back, the host is as it was before the migration"
            if rollback.complete
            else f"; rollback incomplete ({len(rollback.errors)} errors), backup kept at "
            f"{run.backup_root}"
        )
        if not isinstance(exc, Exception):
            raise  # interrupted (SIGINT, SystemExit): rolled back, but not ours to report
        return Execution(
            outcome=ExecutionOutcome.FAILED,
            started_at=started,
            finished_at=clock(),
            migration_from=detection.migration_from,
            migration_to=detection.migration_to,
            steps=run.steps,
            warnings=run.warnings,
            backup_path=run.backup_root,
            backup_retained=kept and run.backup_root is not None,
            failed_step=current.value,
            failure=Failure(
                message=failure.message + suffix,
                path=failure.path,
                exception_type=failure.exception_type,
                errno=failure.errno,
                traceback=failure.traceback,
            ),
            rollback=rollback,
            stats=run.stats,
        )
    return Execution(
        outcome=ExecutionOutcome.PARTIAL if run.warnings else ExecutionOutcome.SUCCESS,
        started_at=started,
        finished_at=clock(),
        migration_from=detection.migration_from,
        migration_to=detection.migration_to,
        steps=run.steps,
        warnings=run.warnings,
        backup_path=run.backup_root,
        backup_retained=run.backup_root is not None,
        stats=run.stats,
    )


def _plan(detection: Detection) -> list[Stage]:
    """The stages to run, in order, for the steps detection asked for."""
    has_config = detection.legacy_config is not None or detection.current_config is not None
    plan = [Stage.BACKUP]
    plan.extend(Stage(step.value) for step in detection.steps)
    if has_config:
        plan.append(Stage.WRITE_CONFIG)
    plan.append(Stage.VALIDATE)
    if MigrationStep.DIRECTORY_MIGRATION in detection.steps:
        plan.append(Stage.REMOVE_LEGACY)
    return sorted(plan, key=list(Stage).index)


def _describe_failure(run: _Run, stage: Stage, exc: BaseException) -> Failure:
    path: str | None = None
    errno: int | None = None
    if isinstance(exc, OSError):
        errno = exc.errno
        if exc.filename is not None:
            path = os.fsdecode(exc.filename)
    elif isinstance(exc, ChecksumMismatchError | MigrationConflictError | ValidationError):
        path = str(exc.path)
    if path is None and run.current_path is not None:
        path = str(run.current_path)
    text = str(exc) or type(exc).__name__
    if path and path not in text:
        text = f"{text}: {path!r}"
    return Failure(
        message=f"{stage.value} failed: {text} ({type(exc).__name__})",
        path=path,
        exception_type=type(exc).__name__,
        errno=errno,
        traceback=traceback.format_exc()[-TRACEBACK_CHARS:],
    )


# --- stages ------------------------------------------------------------------------------


def _ensure_dir(
    run: _Run,
    path: Path,
    mode: int,
    owner: tuple[int, int] | None = None,
    *,
    parents_mode: int = DEFAULT_DIR_MODE,
) -> None:
    """Create a directory and any missing parents below the root, journaling each one."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != run.layout.root:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with run.at(directory):
            leaf = directory == path
            make_dir(directory, mode if leaf else DEFAULT_DIR_MODE, owner=owner if leaf else None)
        run.journal.created_dir(directory)
    if not path.is_dir():
        raise MigrationConflictError(f"{path} exists but is not a directory", path)


def _backup(run: _Run) -> None:
    """Copy every inventoried entry, verified, to a new timestamped backup directory."""
    layout = run.layout
    _ensure_dir(run, layout.backups_dir, PRIVATE_DIR_MODE)
    stamp = run.clock().strftime("%Y%m%dT%H%M%SZ")
    root = layout.backups_dir / stamp
    serial = 1
    while root.exists():
        serial += 1
        root = layout.backups_dir / f"{stamp}-{serial}"
    _ensure_dir(run, root, PRIVATE_DIR_MODE)
    run.backup_root = root
    files_root = root / "files"
    _ensure_dir(run, files_root, PRIVATE_DIR_MODE)
    manifest = []
    for tree in run.detection.trees:
        for entry in tree.entries:
            target = files_root / entry.path.relative_to(layout.root)
            with run.at(target):
                _ensure_dir(run, target.parent, PRIVATE_DIR_MODE, parents_mode=PRIVATE_DIR_MODE)
                if entry.kind is EntryKind.DIRECTORY:
                    if not target.exists():
                        make_dir(target, PRIVATE_DIR_MODE)
                        run.journal.created_dir(target)
                elif entry.kind is EntryKind.SYMLINK:
                    assert entry.link_target is not None
                    os.symlink(entry.link_target, target)
                    run.journal.created_file(target)
                else:
                    assert entry.sha256 is not None
                    # Owner-only mode: the backup holds tokens, and the owner must be able
                    # to read it back even when the original was mode 0000.
                    copy_verified(
                        entry.path,
                        target,
                        mode=SECRET_MODE,
                        expected_sha256=entry.sha256,
                        owner=None,
                    )
                    run.journal.created_file(target)
                    run.count("backup_files")
                    run.count("backup_bytes", entry.size)
            manifest.append(entry.describe(layout))
    manifest_path = root / "manifest.json"
    with run.at(manifest_path):
        document = {
            "created_at": run.clock().isoformat(),
            "agent_version": AGENT_VERSION,
            "root": str(layout.root),
            "migration_from": run.detection.migration_from,
            "migration_to": run.detection.migration_to,
            "entries": manifest,
        }
        write_atomic(manifest_path, render_config(document), SECRET_MODE)
    run.journal.created_file(manifest_path)
    run.journal.mark_backup_complete()


def _saved_copy(run: _Run, path: Path) -> Path:
    assert run.backup_root is not None
    return run.backup_root / "files" / path.relative_to(run.layout.root)


def _migrate_directories(run: _Run) -> None:
    """Create the current layout and copy the legacy contents into it, verified."""
    layout, detection = run.layout, run.detection
    legacy_conf = detection.legacy_config_dir or Tree(layout.legacy_config_dir)
    legacy_state = detection.legacy_state_dir or Tree(layout.legacy_state_dir)
    conf_top = legacy_conf.find(layout.legacy_config_dir)
    state_top = legacy_state.find(layout.legacy_state_dir)
    _ensure_dir(
        run,
        layout.config_dir,
        conf_top.mode if conf_top else DEFAULT_DIR_MODE,
        conf_top.owner if conf_top else None,
    )
    _ensure_dir(run, layout.data_dir, DEFAULT_DIR_MODE)
    _ensure_dir(
        run,
        layout.state_dir,
        state_top.mode if state_top else DEFAULT_DIR_MODE,
        state_top.owner if state_top else None,
    )
    _ensure_dir(
        run,
        layout.cache_dir,
        state_top.mode if state_top else DEFAULT_DIR_MODE,
        state_top.owner if state_top else None,
    )
    run.path_map[layout.logical(layout.legacy_config)] = layout.logical(layout.config)
    run.path_map[layout.logical(layout.legacy_config_dir)] = layout.logical(layout.config_dir)
    run.path_map[layout.logical(layout.legacy_state_dir)] = layout.logical(layout.state_dir)
    for tree, target_root in ((legacy_conf, layout.config_dir), (legacy_state, layout.state_dir)):
        for entry in tree.entries[1:]:
            if entry.path == layout.legacy_config:
                continue  # converted by write_config, not copied
            target = target_root / entry.path.relative_to(tree.root)
            with run.at(target):
                _copy_entry(run, entry, target)


def _copy_entry(run: _Run, entry: Entry, target: Path) -> None:
    layout = run.layout
    existing = os.lstat(target) if os.path.lexists(target) else None
    if entry.kind is EntryKind.DIRECTORY:
        if existing is None:
            make_dir(target, entry.mode, owner=entry.owner)
            run.journal.created_dir(target)
        elif not stat.S_ISDIR(existing.st_mode):
            raise MigrationConflictError(
                f"cannot migrate directory {entry.path}: {target} exists and is not a directory",
                target,
            )
        return
    if existing is not None:
        if entry.kind is EntryKind.FILE and stat.S_ISREG(existing.st_mode):
            if sha256_file(target) == entry.sha256:
                run.count("files_already_present")
                run.expected[target] = entry.sha256
            else:
                run.warnings.append(
                    f"kept the current {layout.logical(target)}, which differs from the legacy "
                    f"{layout.logical(entry.path)} (the legacy copy is in the backup)"
                )
            run.path_map[layout.logical(entry.path)] = layout.logical(target)
            return
        if entry.kind is EntryKind.SYMLINK and stat.S_ISLNK(existing.st_mode):
            if os.readlink(target) != entry.link_target:
                run.warnings.append(f"kept the current symlink {layout.logical(target)}")
            return
        raise MigrationConflictError(
            f"cannot migrate {entry.path}: {target} exists and is of another kind", target
        )
    if entry.kind is EntryKind.SYMLINK:
        assert entry.link_target is not None
        os.symlink(entry.link_target, target)
        run.journal.created_file(target)
        return
    assert entry.sha256 is not None
    copy_verified(
        entry.path, target, mode=entry.mode, expected_sha256=entry.sha256, owner=entry.owner
    )
    run.journal.created_file(target)
    os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
    run.expected[target] = entry.sha256
    run.path_map[layout.logical(entry.path)] = layout.logical(target)
    run.count("files_copied")
    run.count("bytes_copied", entry.size)


def _harden(run: _Run) -> None:
    """Tighten secret files of the current layout to owner-only; failures are warnings.

    The config itself is written owner-only by write_config.
    """
    layout = run.layout
    skip = {layout.config, layout.reporting_dir, layout.backups_dir}
    for top in (layout.config_dir, layout.data_dir):
        if not top.is_dir():
            continue
        for path in sorted(_files_below(top, exclude=skip)):
            if not is_secret_file(path.name):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if not mode & 0o077:
                continue
            try:
                os.chmod(path, SECRET_MODE)
            except OSError as exc:
                run.warnings.append(
                    f"could not restrict {layout.logical(path)} to mode 0600 "
                    f"(it stays {mode:04o}): {exc.strerror or exc}"
                )
                continue
            run.journal.changed_mode(path, mode)
            run.count("modes_tightened")


def _files_below(top: Path, *, exclude: set[Path]) -> Iterator[Path]:
    for directory, dirs, files in os.walk(top):
        dirs[:] = [name for name in dirs if Path(directory) / name not in exclude]
        for name in files:
            path = Path(directory) / name
            if path not in exclude and not path.is_symlink():
                yield path


def _write_config(run: _Run) -> None:
    layout, detection = run.layout, run.detection
    source = detection.current_config_entry(layout) or detection.legacy_config_entry(layout)
    converted = convert_config(
        legacy=detection.legacy_config,
        current=detection.current_config,
        steps=detection.steps,
        agent_version=AGENT_VERSION,
        machine_id=host_machine_id(layout) or uuid.uuid4().hex,
        path_map=run.path_map,
        records=run.records,
        migration_from=detection.migration_from,
        migrated_at=run.clock().isoformat(),
    )
    run.converted = converted.config
    if converted.rewritten_paths:
        run.stats["rewritten_settings"] = converted.rewritten_paths
    if converted.added:
        run.stats["added_settings"] = converted.added
    _ensure_dir(run, layout.config_dir, DEFAULT_DIR_MODE)
    with run.at(layout.config):
        previous = detection.current_config_entry(layout)
        write_atomic(
            layout.config,
            render_config(converted.config),
            SECRET_MODE,
            owner=source.owner if source else None,
        )
    if previous is not None and previous.kind is EntryKind.FILE:
        run.journal.replaced_file(layout.config, previous, _saved_copy(run, layout.config))
    else:
        run.journal.created_file(layout.config)
    run.stats["config_path"] = str(layout.config)


def _validate(run: _Run) -> None:
    """Prove the new layout holds what the migration meant to produce."""
    layout, detection = run.layout, run.detection
    if run.converted is not None:
        path = layout.config
        with run.at(path):
            try:
                config = parse_config(path.read_bytes())
            except ConfigError as exc:
                raise ValidationError(f"migrated config {path} {exc}", path) from None
            if config != run.converted:
                raise ValidationError(f"migrated config {path} differs from what was written", path)
            if config.get("version") != CURRENT_CONFIG_VERSION:
                raise ValidationError(f"migrated config {path} is not version 5", path)
            if agent_id_of(config) != detection.agent_id:
                raise ValidationError(f"migrated config {path} lost the agent id", path)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode != SECRET_MODE:
                raise ValidationError(f"migrated config {path} has mode {mode:04o}, not 0600", path)
    for target, digest in sorted(run.expected.items()):
        with run.at(target):
            if not target.is_file():
                raise ValidationError(f"migrated file {target} is missing", target)
            actual = sha256_file(target)
            if actual != digest:
                raise ChecksumMismatchError(target, digest, actual, why="changed after copying")
    run.count("files_validated", len(run.expected))


def _remove_legacy(run: _Run) -> None:
    """Remove what was migrated from the legacy layout; anything left is a warning.

    Only inventoried entries that are unchanged go: a file that appeared or changed since
    detection is not in the backup and must not be lost.
    """
    layout, detection = run.layout, run.detection
    for tree in (detection.legacy_config_dir, detection.legacy_state_dir):
        if tree is None or not tree.exists:
            continue
        for entry in reversed(tree.entries):
            try:
                if entry.kind is EntryKind.DIRECTORY:
                    os.rmdir(entry.path)
                elif entry.kind is EntryKind.SYMLINK or sha256_file(entry.path) == entry.sha256:
                    os.unlink(entry.path)
                else:
                    run.warnings.append(
                        f"left {layout.logical(entry.path)} in place: "
                        "it changed during the migration"
                    )
            except FileNotFoundError:
                continue
            except OSError as exc:
                if entry.path == tree.root or entry.kind is not EntryKind.DIRECTORY:
                    run.warnings.append(
                        f"could not remove legacy {layout.logical(entry.path)}: "
                        f"[Errno {exc.errno}] {exc.strerror}"
                    )
        if tree.root.exists():
            run.count("legacy_dirs_left")
        else:
            run.count("legacy_dirs_removed")
            with contextlib.suppress(OSError):
                fsync_dir(tree.root.parent)
