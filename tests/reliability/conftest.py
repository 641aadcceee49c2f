"""Fixtures for the reliability tests: sandboxed agent hosts and a tiny filesystem to fill."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.layouts import Host


def _unmount_under(root: Path) -> None:
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


@pytest.fixture
def host() -> Iterator[Host]:
    """A host root for an agent, with its machine id, hostname and temp directories."""
    root = Path(tempfile.mkdtemp(prefix="redflag-host-")).resolve()
    yield Host(root).with_machine_id().with_temp_dirs()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tiny_filesystem() -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the given size (`2m`) on a new directory, or skip where not allowed.

    Everything mounted is unmounted afterwards, even when the test failed with the
    database still open on it.
    """
    base = Path(tempfile.mkdtemp(prefix="redflag-tinyfs-")).resolve()

    def mount(size: str) -> Path:
        target = base / f"fs{len(os.listdir(base))}"
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        return target

    yield mount
    _unmount_under(base)
    shutil.rmtree(base, ignore_errors=True)
