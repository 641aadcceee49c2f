"""Builders for sandboxed host roots in the legacy and current RedFlag agent layouts.

The agent resolves every path under `--root`, so a whole host can live in a directory.
The agent tests and the demo fleet lay out their hosts with the same builders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOBODY = 65534
MACHINE_ID = "0123456789abcdef0123456789abcdef"
LEGACY_AGENT_ID = "7b0c1e52-3f2a-4d8e-9a51-0c7c3c9e8f11"


def legacy_config(**overrides: Any) -> dict[str, Any]:
    """A config as agent 0.1.18 and earlier wrote it: no schema version."""
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

    def mkdir(self, logical: str, mode: int = 0o755) -> Path:
        path = self.path(logical)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        return path

    def with_machine_id(self, machine_id: str = MACHINE_ID, hostname: str = "web-01") -> Host:
        self.write("/etc/machine-id", machine_id + "\n")
        self.write("/etc/hostname", hostname + "\n")
        return self

    def with_os_release(self, os_id: str, name: str, version_id: str, pretty_name: str) -> Host:
        self.write(
            "/etc/os-release",
            f'NAME="{name}"\nID={os_id}\nVERSION_ID="{version_id}"\nPRETTY_NAME="{pretty_name}"\n',
        )
        return self

    def with_temp_dirs(self) -> Host:
        """World-writable, sticky /tmp and /var/tmp, where the agent's fallback spool goes."""
        for logical in ("/tmp", "/var/tmp"):
            self.mkdir(logical, 0o1777)
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

    def chown_all(self, uid: int, gid: int | None = None) -> None:
        gid = uid if gid is None else gid
        for directory, dirs, files in os.walk(self.root):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(directory, name), uid, gid)
        os.chown(self.root, uid, gid)


def remove_tree(path: Path) -> None:
    """Delete a sandbox, even where its layout took away the owner's own permissions."""
    if not os.path.lexists(path):
        return
    pending = [path]
    while pending:
        directory = pending.pop()
        try:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                continue
            os.chmod(directory, 0o700)
            with os.scandir(directory) as entries:
                pending.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    shutil.rmtree(path)
