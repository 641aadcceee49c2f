"""The durable write primitives: all or nothing, exact modes, verified copies."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from agent import fsutil
from agent.fsutil import ChecksumMismatchError, copy_verified, write_atomic


def test_atomic_write_sets_the_exact_mode_despite_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    old = os.umask(0o077)
    try:
        write_atomic(target, b"{}", 0o644)
    finally:
        os.umask(old)

    assert target.read_bytes() == b"{}"
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_failed_atomic_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "config.json"
    target.write_bytes(b"old")

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "write_all", full)

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new content", 0o600)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_verified_copy_detects_a_changed_source(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(b"now")
    stale = hashlib.sha256(b"before").hexdigest()

    with pytest.raises(ChecksumMismatchError, match="source changed since detection"):
        copy_verified(source, tmp_path / "b", mode=0o600, expected_sha256=stale, owner=None)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_verified_copy_keeps_bytes_and_mode(tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.write_bytes(b"x" * 3_000_000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    copy_verified(source, tmp_path / "b", mode=0o640, expected_sha256=digest, owner=None)

    assert (tmp_path / "b").read_bytes() == source.read_bytes()
    assert os.stat(tmp_path / "b").st_mode & 0o777 == 0o640
