"""SQLite's WAL is checkpointed on a thread of its own, off the commits' path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from models.database import WalCheckpoints, create_db_engine


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/wal.db")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (n INTEGER PRIMARY KEY, text TEXT)")
    yield engine
    engine.dispose()


def _write(engine: sa.Engine, rows: int) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO t (text) VALUES (?)", [("x" * 500,) for _ in range(rows)]
        )


def test_a_checkpoint_copies_every_committed_frame_into_the_database(
    sqlite_engine: sa.Engine, tmp_path: Path
) -> None:
    _write(sqlite_engine, 2_000)
    database = tmp_path / "wal.db"
    size_before = database.stat().st_size

    busy, frames, done = WalCheckpoints(sqlite_engine).checkpoint()

    assert (busy, done) == (0, frames)
    assert frames > 100
    assert database.stat().st_size > size_before  # the rows are in the database file now
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2_000


@pytest.fixture
def results(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every checkpoint's result, in order."""
    recorded: list[tuple[int, int, int]] = []
    real = WalCheckpoints.checkpoint

    def recording(self: WalCheckpoints) -> tuple[int, int, int]:
        recorded.append(real(self))
        return recorded[-1]

    monkeypatch.setattr(WalCheckpoints, "checkpoint", recording)
    return recorded


def test_the_thread_checkpoints_while_commits_go_on_and_stops(
    sqlite_engine: sa.Engine, results: list[tuple[int, int, int]]
) -> None:
    checkpoints = WalCheckpoints(sqlite_engine, interval=0.02)
    checkpoints.start()
    assert checkpoints.running
    assert any(t.name == "wal-checkpoints" for t in threading.enumerate())
    for _ in range(20):
        _write(sqlite_engine, 50)
    _wait_until(lambda: any(done > 0 for _, _, done in results))
    checkpoints.stop()

    assert not checkpoints.running
    assert not any(t.name == "wal-checkpoints" for t in threading.enumerate())
    assert all(busy == 0 for busy, _, _ in results)
    calls = len(results)
    time.sleep(0.1)
    assert len(results) == calls  # nothing after stop


def test_a_failed_checkpoint_is_logged_and_the_next_one_still_runs(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def flaky(self: WalCheckpoints) -> tuple[int, int, int]:
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("PRAGMA wal_checkpoint", {}, Exception("disk I/O error"))
        return (0, 0, 0)

    monkeypatch.setattr(WalCheckpoints, "checkpoint", flaky)
    checkpoints = WalCheckpoints(sqlite_engine, interval=0.01)
    with caplog.at_level(logging.WARNING, logger="models.database"):
        checkpoints.start()
        _wait_until(lambda: len(calls) >= 3)
        checkpoints.stop()

    assert "WAL checkpoint failed" in caplog.text
    assert "disk I/O error" in caplog.text


def test_checkpoints_take_no_connection_from_the_pool(
    sqlite_engine: sa.Engine, results: list[tuple[int, int, int]]
) -> None:
    """A pooled connection the checkpoint thread handed back would be the next one the
    writer gets (the pool gives out the last returned), its page cache stale: the thread
    takes one connection out of the pool for good."""
    checkouts: list[object] = []
    sa.event.listen(sqlite_engine, "checkout", lambda *args: checkouts.append(args))
    _write(sqlite_engine, 100)
    checkouts.clear()
    pooled = sqlite_engine.pool.checkedin()
    checkpoints = WalCheckpoints(sqlite_engine, interval=0.01)
    checkpoints.start()
    _wait_until(lambda: len(results) >= 5)
    checkpoints.stop()

    assert len(checkouts) == 1  # once, for good: detached from the pool, never returned
    assert sqlite_engine.pool.checkedin() == pooled
    assert any(frames > 0 for _, frames, _ in results)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_nothing_to_checkpoint_in_memory(url: str) -> None:
    engine = create_db_engine(url)
    checkpoints = WalCheckpoints(engine, interval=0.01)
    checkpoints.start()
    assert not checkpoints.running
    checkpoints.stop()
    engine.dispose()


def test_checkpoints_run_for_sqlite_files_only(engine: sa.Engine) -> None:
    checkpoints = WalCheckpoints(engine, interval=0.01)
    checkpoints.start()
    assert checkpoints.running is (engine.dialect.name == "sqlite")
    checkpoints.stop()
