"""The host context every report carries, so a failure can be understood without logging in."""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import shlex
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent import AGENT_VERSION
from agent.layout import Layout

MAX_FIELD_CHARS = 255


def read_os_release(path: Path) -> dict[str, str]:
    """Key/value pairs of an os-release file; empty when it is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip() or key.lstrip().startswith("#"):
            continue
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = " ".join(parts)[:MAX_FIELD_CHARS]
    return values


def hostname(layout: Layout) -> str:
    """The host's name; a sandboxed host (a root other than `/`) may name itself."""
    if layout.root != Path("/"):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = layout.hostname_file.read_text(encoding="utf-8").split()
            if lines:
                return lines[0][:MAX_FIELD_CHARS]
    return socket.gethostname()[:MAX_FIELD_CHARS] or "unknown"


def os_description(layout: Layout) -> tuple[str, str, str]:
    """(os type, OS name, OS version), e.g. ("linux", "Debian GNU/Linux", "12")."""
    release = read_os_release(layout.os_release_file)
    os_type = platform.system().lower() or "unknown"
    name = release.get("NAME") or platform.system() or "unknown"
    version = release.get("VERSION_ID") or release.get("VERSION") or platform.release()
    return os_type, name, version


def machine_id(layout: Layout) -> str | None:
    """The machine id from `/etc/machine-id` under the root, when it holds a valid one."""
    try:
        value = layout.machine_id_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    valid = len(value) == 32 and all(c in "0123456789abcdef" for c in value)
    return value if valid else None


def free_disk_bytes(layout: Layout, paths: Iterable[Path]) -> dict[str, int | None]:
    """Free bytes on the filesystem of each path (or its nearest existing parent)."""
    free: dict[str, int | None] = {}
    for path in paths:
        probe = path
        while not probe.exists() and probe != layout.root:
            probe = probe.parent
        try:
            free[layout.logical(path)] = shutil.disk_usage(probe).free
        except OSError:
            free[layout.logical(path)] = None
    return free


def affected_paths(layout: Layout) -> tuple[Path, ...]:
    """Where the migration reads and writes: the filesystems whose free space matters."""
    return (
        layout.legacy_config_dir,
        layout.legacy_state_dir,
        layout.config_dir,
        layout.data_dir,
    )


def collect_system_info(layout: Layout, *, agent_machine_id: str | None = None) -> dict[str, Any]:
    """Host, OS, versions, identity and free disk, as the `system_info` of an event."""
    os_type, os_name, os_version = os_description(layout)
    euid = os.geteuid()
    user = None
    with contextlib.suppress(KeyError):
        user = pwd.getpwuid(euid).pw_name
    info: dict[str, Any] = {
        "hostname": hostname(layout),
        "os_type": os_type,
        "os_name": os_name,
        "os_version": os_version,
        "architecture": platform.machine() or "unknown",
        "kernel": platform.release(),
        "agent_version": AGENT_VERSION,
        "python_version": platform.python_version(),
        "machine_id": agent_machine_id or machine_id(layout),
        "euid": euid,
        "user": user,
        "disk_free_bytes": free_disk_bytes(layout, affected_paths(layout)),
    }
    if layout.root != Path("/"):
        info["root"] = str(layout.root)
    return info
