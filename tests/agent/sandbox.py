"""Agent test helpers: snapshots, a fake clock and subprocess runs; layouts come from demo."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.events import new_event
from demo.layouts import (
    LEGACY_AGENT_ID,
    MACHINE_ID,
    NOBODY,
    Host,
    current_config,
    legacy_config,
)
from models.vocabulary import EventType
from models.wire import Event

__all__ = [
    "LEGACY_AGENT_ID",
    "MACHINE_ID",
    "NOBODY",
    "REPO",
    "FakeClock",
    "Host",
    "agent_command",
    "current_config",
    "legacy_config",
    "run_agent",
    "sample_event",
    "snapshot",
]

REPO = Path(__file__).resolve().parents[2]
# Everything the agent keeps for its own reporting, which a migration must never touch.
REPORTING_PATHS = ("var/lib/redflag/agent/reporting", "var/tmp", "tmp")


def snapshot(root: Path, *, exclude: tuple[str, ...] = REPORTING_PATHS) -> dict[str, Any]:
    """Every entry under root with kind, mode, owner, and bytes and mtime for files."""
    entries: dict[str, Any] = {}
    skipped = {root / relative for relative in exclude}
    for directory, dirs, files in os.walk(root):
        base = Path(directory)
        dirs[:] = [d for d in dirs if base / d not in skipped]
        for name in [*dirs, *files]:
            path = base / name
            info = os.lstat(path)
            key = str(path.relative_to(root))
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entries[key] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[key] = ("dir", oct(mode), info.st_uid, info.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[key] = (
                    "file",
                    oct(mode),
                    info.st_uid,
                    info.st_gid,
                    digest,
                    info.st_mtime_ns,
                )
    return entries


class FakeClock:
    """Wall clock, monotonic clock and sleep that only move when the test sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.start = start or datetime.now(UTC).replace(microsecond=0)
        self.elapsed = 0.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def monotonic(self) -> float:
        return self.elapsed

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.elapsed += seconds


def agent_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "--root", str(root), *args]


def run_agent(
    root: Path, *args: str, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess, as `user` when given (via setpriv)."""
    command = agent_command(root, *args)
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        command,
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sample_event(message: str = "boom", **details: object) -> Event:
    """A valid failed-execution event, as the agent would spool it."""
    return new_event(
        EventType.MIGRATION_EXECUTION_FAILED,
        error_message=message,
        migration_from="0.1.18 (config v0, /etc/aggregator)",
        migration_to="0.2.0 (config v5, /etc/redflag/agent)",
        system_info={"hostname": "web-01"},
        details=dict(details),
    )
