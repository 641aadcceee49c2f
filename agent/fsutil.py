"""Durable file primitives (atomic writes, verified copies) for every file the agent writes.

Keeping every write of file contents in these few functions is what makes a crash leave
either the old or the new file, never half of one, and gives tests one place to inject
faults such as a full disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

CHUNK_BYTES = 1024 * 1024
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ChecksumMismatchError(Exception):
    """A copy's SHA-256 differs from the source as inventoried."""

    def __init__(self, path: Path, expected: str, actual: str, *, why: str) -> None:
        super().__init__(f"checksum mismatch for {path}: expected {expected}, got {actual} ({why})")
        self.path = path
        self.expected = expected
        self.actual = actual


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read without following a final symlink."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte; os.write may write less than asked, and a full disk raises here."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside a directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _owner_change_allowed() -> bool:
    return os.geteuid() == 0


def write_atomic(
    path: Path, data: bytes, mode: int, *, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync of the directory.

    Readers see the old or the new content, never a mix; the temp file is removed when
    anything fails (a full disk, a permission problem).
    """
    temp = _temp_name(path)
    fd = os.open(temp, _OPEN_NEW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow a deliberate mode
            if owner is not None and _owner_change_allowed():
                os.fchown(fd, *owner)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_dir(path.parent)


def copy_verified(
    source: Path, target: Path, *, mode: int, expected_sha256: str, owner: tuple[int, int] | None
) -> None:
    """Copy a file atomically and prove the copy holds exactly the inventoried bytes.

    The hash of what was read catches a source that changed since it was inventoried;
    re-reading the target catches a copy that did not land on disk as written.
    """
    temp = _temp_name(target)
    digest = hashlib.sha256()
    src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(temp, _OPEN_NEW, mode)
        try:
            try:
                os.fchmod(fd, mode)
                if owner is not None and _owner_change_allowed():
                    os.fchown(fd, *owner)
                while chunk := os.read(src_fd, CHUNK_BYTES):
                    digest.update(chunk)
                    write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            if digest.hexdigest() != expected_sha256:
                raise ChecksumMismatchError(
                    source,
                    expected_sha256,
                    digest.hexdigest(),
                    why="source changed since detection",
                )
            os.replace(temp, target)
        except BaseException:
            _unlink_quietly(temp)
            raise
    finally:
        os.close(src_fd)
    fsync_dir(target.parent)
    actual = sha256_file(target)
    if actual != expected_sha256:
        raise ChecksumMismatchError(target, expected_sha256, actual, why="copy differs on disk")


def make_dir(path: Path, mode: int, *, owner: tuple[int, int] | None = None) -> None:
    """Create one directory with exactly `mode` (mkdir alone is subject to the umask)."""
    os.mkdir(path, mode)
    os.chmod(path, mode)
    if owner is not None and _owner_change_allowed():
        os.chown(path, *owner)


def _unlink_quietly(path: Path) -> None:
    # Called while another error propagates: that error matters, a leftover temp file
    # does not, so nothing raised here may replace it.
    with contextlib.suppress(OSError):
        os.unlink(path)
