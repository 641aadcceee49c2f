"""How a demo host's agent meets real permission and disk-full failures on this machine.

Permission failures need an agent that the kernel actually refuses: as root, the agent of
such a host runs as uid 65534 (setpriv) when that user can reach the sandbox, or else as
root without capabilities; as another user it runs as that user and file modes do the
rest. A full disk is a real 64 KiB tmpfs mounted in a private mount namespace of that one
agent process, so nothing is left mounted when it exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from demo.layouts import NOBODY, Host

TINY_DISK_BYTES = 64 * 1024
# sh runs the mount inside the new namespace, then becomes the agent: no extra process.
_MOUNT_THEN_EXEC = 'mount -t tmpfs -o size={size},mode=0755 tmpfs "$0" && exec "$@"'


class AgentUserMode(StrEnum):
    NOBODY = "nobody"  # root runs the agent as uid 65534 with setpriv
    CAPLESS_ROOT = "capless-root"  # root without capabilities obeys file modes
    SELF = "self"  # not root: the agent runs as the current user


@dataclass(frozen=True, slots=True)
class AgentUser:
    """The unprivileged user that a confined host's agent runs as, and what it may touch."""

    mode: AgentUserMode

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program as this user."""
        if self.mode is AgentUserMode.NOBODY:
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        if self.mode is AgentUserMode.CAPLESS_ROOT:
            return ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
        return []

    @property
    def owner(self) -> int | None:
        """The uid the agent's own files belong to, when it differs from ours."""
        return NOBODY if self.mode is AgentUserMode.NOBODY else None

    @property
    def stranger(self) -> int | None:
        """A uid other than the agent's that can own a file, or None when we cannot chown."""
        if self.mode is AgentUserMode.NOBODY:
            return 0
        if self.mode is AgentUserMode.CAPLESS_ROOT:
            return NOBODY
        return None

    def give(self, root: Path) -> None:
        """Hand a whole host tree to the agent's user, as a real install would be."""
        if self.owner is not None:
            Host(root).chown_all(self.owner)

    def deny_writes(self, path: Path) -> None:
        """The agent may read and enter `path` but not create anything in it."""
        if self.stranger is not None:
            os.chown(path, self.stranger, self.stranger)
            os.chmod(path, 0o755)
        else:
            os.chmod(path, 0o555)

    def deny_reads(self, path: Path) -> None:
        """The agent may not list `path`."""
        if self.stranger is not None:
            os.chown(path, self.stranger, self.stranger)
            os.chmod(path, 0o700)
        else:
            os.chmod(path, 0o000)

    def disown(self, path: Path) -> bool:
        """Give a file to someone else so that the agent cannot change its mode."""
        if self.stranger is None:
            return False
        os.chown(path, self.stranger, self.stranger)
        return True


class ConfinementError(Exception):
    """This machine cannot produce a failure the demo needs; the message says why."""


def choose_agent_user(sandbox: Path) -> AgentUser:
    """The best unprivileged user this machine offers for agents in `sandbox`."""
    if os.geteuid() != 0:
        return AgentUser(AgentUserMode.SELF)
    if shutil.which("setpriv") is None:
        # Root without setpriv cannot drop privileges for one process: the confined hosts
        # would silently succeed, so say so instead.
        raise ConfinementError("running as root needs setpriv (util-linux) to confine agents")
    nobody = AgentUser(AgentUserMode.NOBODY)
    if _can_run(nobody, sandbox):
        return nobody
    return AgentUser(AgentUserMode.CAPLESS_ROOT)


def _can_run(user: AgentUser, sandbox: Path) -> bool:
    """Whether the user can start the agent's Python and reach the sandbox directory."""
    probe = "import agent.cli, os, sys; os.stat(sys.argv[1])"
    result = subprocess.run(
        [*user.prefix, sys.executable, "-c", probe, str(sandbox)],
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return result.returncode == 0


@dataclass(frozen=True, slots=True)
class TinyDisk:
    """Runs a command with a tiny tmpfs on one directory, in a private mount namespace."""

    unshare: tuple[str, ...]

    def wrap(self, mountpoint: Path, command: Sequence[str]) -> list[str]:
        script = _MOUNT_THEN_EXEC.format(size=TINY_DISK_BYTES)
        return [*self.unshare, "--", "sh", "-c", script, str(mountpoint), *command]


def find_tiny_disk(scratch: Path) -> TinyDisk | None:
    """A way to give one process a full disk here, or None when this machine has none."""
    if shutil.which("unshare") is None:
        return None
    if os.geteuid() == 0:
        candidates: list[tuple[str, ...]] = [("unshare", "--mount")]
    else:
        candidates = [("unshare", "--user", "--map-root-user", "--mount")]
    scratch.mkdir(parents=True, exist_ok=True)
    for unshare in candidates:
        disk = TinyDisk(unshare)
        result = subprocess.run(
            disk.wrap(scratch, ["true"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode == 0:
            return disk
    return None
