"""Sandboxed hosts for agent tests: legacy and current layouts under a root, and snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.events import new_event
from models.vocabulary import EventType
from models.wire import Event

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
MACHINE_ID = "0123456789abcdef0123456789abcdef"
LEGACY_AGENT_ID = "7b0c1e52-3f2a-4d8e-9a51-0c7c3c9e8f11"
# Everything the agent keeps for its own reporting, which a migration must never touch.
REPORTING_PATHS = ("var/lib/redflag/agent/reporting", "var/tmp", "tmp")


def legacy_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_url": "https://redflag.example.org",
        "agent_id": LEGACY_AGENT_ID,
        "token": "access-token-1",
        "refresh_token": "refresh-token-1",
        "check_in_interval": 300,
        "proxy": {"http": "http://proxy.example.org:3128"},
        "tls": {"insecure_skip_verify": False, "ca_file": "/etc/aggregator/ca.pem"},
    }
    config.update(overrides)
    return config


@dataclass
class Host:
    """A sandboxed host root with helpers to lay out files as a real agent would."""

    root: Path

    def path(self, logical: str) -> Path:
        return self.root / logical.lstrip("/")

    def write(self, logical: str, data: bytes | str, mode: int = 0o644) -> Path:
        path = self.path(logical)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(path, mode)
        return path

    def write_json(self, logical: str, value: Any, mode: int = 0o600) -> Path:
        return self.write(logical, json.dumps(value, indent=2), mode)

    def read_json(self, logical: str) -> Any:
        return json.loads(self.path(logical).read_bytes())

    def exists(self, logical: str) -> bool:
        return os.path.lexists(self.path(logical))

    def with_machine_id(self) -> Host:
        self.write("/etc/machine-id", MACHINE_ID + "\n")
        self.write("/etc/hostname", "web-01\n")
        return self

    def with_legacy_layout(self, config: dict[str, Any] | None = None) -> Host:
        """An agent 0.1.18 install: config, a CA file and some state."""
        self.write_json("/etc/aggregator/config.json", config or legacy_config(), mode=0o600)
        self.write("/etc/aggregator/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n", 0o644)
        self.write_json("/var/lib/aggregator/last_scan.json", {"updates": 3}, mode=0o644)
        self.write("/var/lib/aggregator/history/2024-01.log", "scan ok\n" * 50, 0o640)
        return self

    def with_current_layout(self, config: dict[str, Any]) -> Host:
        self.write_json("/etc/redflag/agent/config.json", config, mode=0o600)
        self.path("/var/lib/redflag/agent/state").mkdir(parents=True, exist_ok=True)
        self.path("/var/lib/redflag/agent/cache").mkdir(parents=True, exist_ok=True)
        return self

    def chown_all(self, uid: int) -> None:
        for directory, dirs, files in os.walk(self.root):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(directory, name), uid, uid)
        os.chown(self.root, uid, uid)


def current_config(**overrides: Any) -> dict[str, Any]:
    """A config a fully migrated agent would have."""
    config: dict[str, Any] = {
        **legacy_config(),
        "version": 5,
        "agent_version": "0.2.0",
        "machine_id": MACHINE_ID,
        "subsystems": {"apt": {"enabled": True}},
        "tls": {"insecure_skip_verify": False, "ca_file": "/etc/redflag/agent/ca.pem"},
    }
    config.update(overrides)
    return config


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
