"""Migration detection: inventory both layouts and decide what to do, changing nothing."""

from __future__ import annotations

import errno as errno_module
import os
import stat
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent import AGENT_VERSION
from agent.config import (
    CURRENT_CONFIG_VERSION,
    LEGACY_AGENT_VERSION,
    ConfigError,
    MigrationStep,
    agent_id_of,
    completed_steps,
    config_version,
    describe_version,
    is_secret_file,
    missing_security_settings,
    parse_config,
)
from agent.fsutil import sha256_file
from agent.layout import Layout

Clock = Callable[[], datetime]
TRACEBACK_CHARS = 8000


def utc_now() -> datetime:
    return datetime.now(UTC)


class EntryKind(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True)
class Entry:
    """One inventoried file, directory or symlink, as it was when detection looked."""

    path: Path
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    sha256: str | None = None
    link_target: str | None = None

    @property
    def owner(self) -> tuple[int, int]:
        return (self.uid, self.gid)

    def describe(self, layout: Layout) -> dict[str, Any]:
        return {
            "path": layout.logical(self.path),
            "kind": self.kind.value,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "sha256": self.sha256,
            "link_target": self.link_target,
        }


@dataclass(frozen=True, slots=True)
class Tree:
    """An inventoried directory: its own entry first, then everything below it."""

    root: Path
    entries: tuple[Entry, ...] = ()

    @property
    def exists(self) -> bool:
        return bool(self.entries)

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.kind is not EntryKind.DIRECTORY)

    def find(self, path: Path) -> Entry | None:
        return next((e for e in self.entries if e.path == path), None)


class DetectionOutcome(StrEnum):
    NEEDED = "needed"
    NOT_NEEDED = "not_needed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a phase failed, with what an admin needs to fix it."""

    message: str
    path: str | None
    exception_type: str
    errno: int | None = None
    traceback: str | None = None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno)


def errno_name(number: int | None) -> str | None:
    return errno_module.errorcode.get(number) if number is not None else None


@dataclass(frozen=True, slots=True)
class Detection:
    """Everything detection saw and decided; execution acts on exactly this."""

    outcome: DetectionOutcome
    detected_at: datetime
    migration_from: str
    migration_to: str
    steps: tuple[MigrationStep, ...] = ()
    recorded_done: tuple[MigrationStep, ...] = ()
    legacy_config_dir: Tree | None = None
    legacy_state_dir: Tree | None = None
    config_dir: Tree | None = None
    data_dir: Tree | None = None
    legacy_config: dict[str, Any] | None = None
    current_config: dict[str, Any] | None = None
    config_version: int | None = None
    agent_id: str | None = None
    security_findings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    failure: Failure | None = None

    @property
    def trees(self) -> tuple[Tree, ...]:
        found = (self.legacy_config_dir, self.legacy_state_dir, self.config_dir, self.data_dir)
        return tuple(tree for tree in found if tree is not None)

    @property
    def legacy_present(self) -> bool:
        return any(
            t is not None and t.exists for t in (self.legacy_config_dir, self.legacy_state_dir)
        )

    def current_config_entry(self, layout: Layout) -> Entry | None:
        return self.config_dir.find(layout.config) if self.config_dir else None

    def legacy_config_entry(self, layout: Layout) -> Entry | None:
        if self.legacy_config_dir is None:
            return None
        return self.legacy_config_dir.find(layout.legacy_config)

    def summary(self, layout: Layout) -> dict[str, Any]:
        """Detection as event details: steps, findings and an inventory digest."""
        files = [e for tree in self.trees for e in tree.files]
        return {
            "outcome": self.outcome.value,
            "steps_needed": [s.value for s in self.steps],
            "steps_recorded_done": [s.value for s in self.recorded_done],
            "config_version": self.config_version,
            "target_config_version": CURRENT_CONFIG_VERSION,
            "security_findings": list(self.security_findings),
            "notes": list(self.notes),
            "inventory": {
                layout.logical(tree.root): {
                    "exists": tree.exists,
                    "files": len(tree.files),
                    "bytes": sum(e.size for e in tree.files),
                }
                for tree in self.trees
            },
            "inventory_files": len(files),
        }


class DetectionError(Exception):
    """A detection failure that names its path; raised inside, reported as an outcome."""

    def __init__(self, message: str, path: Path | None, cause: BaseException | None = None):
        super().__init__(message)
        self.path = path
        self.cause = cause


@dataclass
class _Cursor:
    """The path detection is looking at, so that even an unexpected error can name it."""

    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def detect(layout: Layout, *, clock: Clock = utc_now) -> Detection:
    """Inventory the legacy and current layouts and decide; never raises, never writes."""
    cursor = _Cursor()
    target = describe_version(AGENT_VERSION, CURRENT_CONFIG_VERSION, "/etc/redflag/agent")
    try:
        return _detect(layout, cursor, clock, target)
    except DetectionError as exc:
        cause = exc.cause
        return Detection(
            outcome=DetectionOutcome.FAILED,
            detected_at=clock(),
            migration_from=_best_known_source(layout),
            migration_to=target,
            notes=tuple(cursor.notes),
            failure=Failure(
                message=str(exc),
                path=str(exc.path) if exc.path else None,
                exception_type=type(cause).__name__ if cause else type(exc).__name__,
                errno=getattr(cause, "errno", None),
            ),
        )
    except Exception as exc:  # the agent must report even the failures nobody foresaw
        where = f" while reading {cursor.path}" if cursor.path else ""
        return Detection(
            outcome=DetectionOutcome.FAILED,
            detected_at=clock(),
            migration_from=_best_known_source(layout),
            migration_to=target,
            notes=tuple(cursor.notes),
            failure=Failure(
                message=f"unexpected {type(exc).__name__}{where}: {exc}",
                path=str(cursor.path) if cursor.path else None,
                exception_type=type(exc).__name__,
                errno=getattr(exc, "errno", None),
                traceback=traceback.format_exc()[-TRACEBACK_CHARS:],
            ),
        )


def _best_known_source(layout: Layout) -> str:
    """A source label for failed detections, from which layout is there at all."""
    try:
        if layout.legacy_config_dir.exists() or layout.legacy_state_dir.exists():
            return describe_version(None, None, "/etc/aggregator")
    except OSError:
        pass
    return describe_version(None, None, "/etc/redflag/agent")


def _detect(layout: Layout, cursor: _Cursor, clock: Clock, target: str) -> Detection:
    excluded = {layout.reporting_dir, layout.backups_dir}
    legacy_config_dir = _inventory(layout, layout.legacy_config_dir, excluded, cursor)
    legacy_state_dir = _inventory(layout, layout.legacy_state_dir, excluded, cursor)
    config_dir = _inventory(layout, layout.config_dir, excluded, cursor)
    data_dir = _inventory(layout, layout.data_dir, excluded, cursor)

    legacy_config = _read_config(layout, legacy_config_dir, layout.legacy_config, cursor)
    current_config = _read_config(layout, config_dir, layout.config, cursor)

    legacy_version = config_version_at(legacy_config, layout.legacy_config)
    current_version = config_version_at(current_config, layout.config)

    legacy_id = agent_id_of(legacy_config) if legacy_config is not None else None
    current_id = agent_id_of(current_config) if current_config is not None else None
    if legacy_id and current_id and legacy_id != current_id:
        raise DetectionError(
            f"conflicting layouts: {layout.legacy_config} names agent {legacy_id} but "
            f"{layout.config} names agent {current_id}; remove the one that is stale",
            layout.legacy_config,
        )

    legacy_present = legacy_config_dir.exists or legacy_state_dir.exists
    governing = current_config if current_config is not None else legacy_config
    version = current_version if current_config is not None else legacy_version
    merged = {**(legacy_config or {}), **(current_config or {})}

    needed: list[MigrationStep] = []
    if legacy_present:
        needed.append(MigrationStep.DIRECTORY_MIGRATION)
    if version is not None and version < 4:
        needed.append(MigrationStep.CONFIG_MIGRATION)
    if version is not None and version < CURRENT_CONFIG_VERSION:
        needed.append(MigrationStep.CONFIG_V5_MIGRATION)
    findings = _security_findings(
        layout,
        merged if governing is not None else None,
        data_dir,
        config_dir,
        legacy_config_dir,
        legacy_state_dir,
    )
    if findings:
        needed.append(MigrationStep.SECURITY_HARDENING)

    done = completed_steps(governing) if governing is not None else set()
    steps = tuple(s for s in needed if s.value not in done)
    recorded_done = tuple(s for s in needed if s.value in done)
    if MigrationStep.DIRECTORY_MIGRATION in recorded_done:
        cursor.notes.append(
            "a legacy directory is still present although directory_migration is recorded "
            "as done; remove it by hand once its contents are no longer needed"
        )

    if legacy_present:
        source_version = (legacy_config or {}).get("agent_version") or LEGACY_AGENT_VERSION
        source = describe_version(str(source_version), legacy_version, "/etc/aggregator")
    elif current_config is not None:
        source_version = current_config.get("agent_version")
        source = describe_version(
            str(source_version) if source_version else None, current_version, "/etc/redflag/agent"
        )
    else:
        cursor.notes.append("no agent configuration found in either layout")
        source = target

    return Detection(
        outcome=DetectionOutcome.NEEDED if steps else DetectionOutcome.NOT_NEEDED,
        detected_at=clock(),
        migration_from=source,
        migration_to=target,
        steps=steps,
        recorded_done=recorded_done,
        legacy_config_dir=legacy_config_dir,
        legacy_state_dir=legacy_state_dir,
        config_dir=config_dir,
        data_dir=data_dir,
        legacy_config=legacy_config,
        current_config=current_config,
        config_version=version,
        agent_id=current_id or legacy_id,
        security_findings=tuple(findings),
        notes=tuple(cursor.notes),
    )


def config_version_at(config: dict[str, Any] | None, path: Path) -> int | None:
    if config is None:
        return None
    try:
        return config_version(config)
    except ConfigError as exc:
        raise DetectionError(f"config {path} {exc}", path, exc) from None


def _security_findings(layout: Layout, config: dict[str, Any] | None, *trees: Tree) -> list[str]:
    findings: list[str] = []
    if config is not None:
        findings.extend(f"config lacks {name}" for name in missing_security_settings(config))
    for tree in trees:
        for entry in tree.files:
            if (
                entry.kind is EntryKind.FILE
                and is_secret_file(entry.path.name)
                and entry.mode & 0o077
            ):
                findings.append(
                    f"{layout.logical(entry.path)} is readable by group or others "
                    f"(mode {entry.mode:04o})"
                )
    return findings


def _read_config(layout: Layout, tree: Tree, path: Path, cursor: _Cursor) -> dict[str, Any] | None:
    entry = tree.find(path)
    if entry is None:
        return None
    cursor.path = path
    if entry.kind is EntryKind.DIRECTORY:
        raise DetectionError(f"config {path} is a directory, not a file", path)
    if entry.kind is EntryKind.SYMLINK and not layout.contains(path):
        raise DetectionError(f"config {path} is a symlink that leads outside {layout.root}", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DetectionError(f"cannot read config {path}: {_os_reason(exc)}", path, exc) from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise DetectionError(f"config {path} {exc}", path, exc) from None


def _inventory(layout: Layout, top: Path, excluded: set[Path], cursor: _Cursor) -> Tree:
    """Every entry under `top` with size, mtime, mode, owner and the SHA-256 of each file."""
    cursor.path = top
    try:
        top_stat = os.lstat(top)
    except FileNotFoundError:
        return Tree(top)
    except OSError as exc:
        raise DetectionError(f"cannot inspect {top}: {_os_reason(exc)}", top, exc) from None
    if not stat.S_ISDIR(top_stat.st_mode):
        raise DetectionError(f"{top} should be a directory but is not", top)
    entries = [_entry(top, top_stat)]
    entries.extend(_walk(layout, top, excluded, cursor))
    return Tree(top, tuple(entries))


def _walk(layout: Layout, directory: Path, excluded: set[Path], cursor: _Cursor) -> Iterator[Entry]:
    cursor.path = directory
    try:
        with os.scandir(directory) as listing:
            children = sorted(listing, key=lambda child: child.name)
    except OSError as exc:
        raise DetectionError(
            f"cannot read directory {directory}: {_os_reason(exc)}", directory, exc
        ) from None
    for child in children:
        path = Path(child.path)
        if path in excluded:
            continue
        cursor.path = path
        try:
            info = child.stat(follow_symlinks=False)
        except OSError as exc:
            raise DetectionError(f"cannot inspect {path}: {_os_reason(exc)}", path, exc) from None
        if stat.S_ISDIR(info.st_mode):
            yield _entry(path, info)
            yield from _walk(layout, path, excluded, cursor)
        elif stat.S_ISLNK(info.st_mode):
            yield _entry(path, info, link_target=os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            try:
                digest = sha256_file(path)
            except OSError as exc:
                raise DetectionError(
                    f"cannot read file {path}: {_os_reason(exc)}", path, exc
                ) from None
            yield _entry(path, info, sha256=digest)
        else:
            # Sockets and fifos are runtime artefacts of a running agent, not state.
            cursor.notes.append(f"ignored special file {layout.logical(path)}")


def _entry(
    path: Path, info: os.stat_result, *, sha256: str | None = None, link_target: str | None = None
) -> Entry:
    if stat.S_ISDIR(info.st_mode):
        kind = EntryKind.DIRECTORY
    elif stat.S_ISLNK(info.st_mode):
        kind = EntryKind.SYMLINK
    else:
        kind = EntryKind.FILE
    return Entry(
        path=path,
        kind=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        size=info.st_size if kind is EntryKind.FILE else 0,
        mtime_ns=info.st_mtime_ns,
        sha256=sha256,
        link_target=link_target,
    )


def _os_reason(exc: OSError) -> str:
    """`[Errno 13] Permission denied`, without repeating the path the message names anyway."""
    if exc.errno is None:
        return str(exc)
    return f"[Errno {exc.errno}] {exc.strerror}"
