"""The spool: durable before the network, bounded, with fallbacks and crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.layout import Layout
from agent.spool import (
    Limits,
    Spool,
    SpoolKind,
    gather_spools,
    open_spool,
    read_only_spools,
    spool_files,
)
from tests.agent.sandbox import REPO, Host
from tests.agent.sandbox import sample_event as event


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool.sqlite3", kind=SpoolKind.PRIMARY)


def ids(spool: Spool) -> list[str]:
    return [e.event_id for e in spool.pending(limit=10_000, max_bytes=10**9)]


def test_queued_events_come_back_in_order_until_acknowledged(spool: Spool) -> None:
    events = [event(f"e{i}") for i in range(3)]
    for item in events:
        spool.add(item)

    assert ids(spool) == [str(e.event_id) for e in events]
    first = spool.pending(limit=1, max_bytes=10**9)[0]
    assert json.loads(first.body)["error_message"] == "e0"

    spool.acknowledge([str(events[0].event_id), str(events[2].event_id)])

    assert ids(spool) == [str(events[1].event_id)]


def test_the_same_event_is_queued_once(spool: Spool) -> None:
    item = event()
    spool.add(item)
    spool.add(item)

    assert spool.counts().queued == 1


def test_queued_events_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    item = event()
    with Spool(path, kind=SpoolKind.PRIMARY) as first:
        first.add(item)

    with Spool(path, kind=SpoolKind.PRIMARY) as second:
        assert ids(second) == [str(item.event_id)]


def test_spool_file_is_owner_only_and_durable(spool: Spool) -> None:
    spool.add(event())
    assert spool.path is not None
    assert os.stat(spool.path).st_mode & 0o777 == 0o600
    assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_overflow_by_count_drops_the_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    events = [event(f"e{i}") for i in range(5)]
    with Spool(path, kind=SpoolKind.PRIMARY, limits=Limits(max_events=3)) as bounded:
        for item in events:
            bounded.add(item)
        assert ids(bounded) == [str(e.event_id) for e in events[2:]]

    with Spool(path, kind=SpoolKind.PRIMARY) as reopened:
        counts = reopened.counts()
    assert counts.queued == 3
    assert counts.dropped == 2
    assert counts.dropped_bytes > 0


def test_overflow_by_bytes_drops_the_oldest(tmp_path: Path) -> None:
    big = [event("x" * 3000) for _ in range(4)]
    size = len(json.dumps(big[0].model_dump(mode="json"), separators=(",", ":")))
    limits = Limits(max_events=100, max_bytes=size * 2 + 10)
    with Spool(tmp_path / "s.sqlite3", kind=SpoolKind.PRIMARY, limits=limits) as bounded:
        for item in big:
            bounded.add(item)
        counts = bounded.counts()

    assert counts.queued == 2
    assert counts.queued_bytes <= limits.max_bytes
    assert counts.dropped == 2


def test_pending_respects_the_byte_budget_but_returns_at_least_one(spool: Spool) -> None:
    for _ in range(3):
        spool.add(event("y" * 2000))

    assert len(spool.pending(limit=10, max_bytes=100)) == 1
    assert len(spool.pending(limit=10, max_bytes=10**6)) == 3
    assert len(spool.pending(limit=2, max_bytes=10**6)) == 2


def test_rejected_events_are_kept_apart_with_the_reason(spool: Spool) -> None:
    bad, good = event("bad"), event("good")
    spool.add(bad)
    spool.add(good)

    spool.reject(str(bad.event_id), "timestamp: is before 2000-01-01")

    assert ids(spool) == [str(good.event_id)]
    rejected = spool.rejected()
    assert [(r.event_id, r.reason) for r in rejected] == [
        (str(bad.event_id), "timestamp: is before 2000-01-01")
    ]
    assert rejected[0].event_type == "migration_execution_failed"
    assert spool.counts().rejected == 1


def test_meta_values_round_trip(spool: Spool) -> None:
    spool.put("last_checkin", {"at": "2025-01-01T00:00:00+00:00", "accepted": 2})
    assert spool.get("last_checkin") == {"at": "2025-01-01T00:00:00+00:00", "accepted": 2}
    assert spool.get("missing") is None


def test_memory_spool_works_without_any_disk(tmp_path: Path) -> None:
    memory = Spool(None, kind=SpoolKind.MEMORY)
    memory.add(event())
    assert memory.counts().queued == 1
    assert memory.location == "memory (not durable)"


# --- locations -----------------------------------------------------------------------------


def test_spool_lives_in_the_private_reporting_directory(host: Host) -> None:
    layout = Layout.at(host.root)

    spool, problems = open_spool(layout)

    assert spool.kind is SpoolKind.PRIMARY
    assert spool.path == layout.reporting_dir / "spool.sqlite3"
    assert problems == []
    assert os.stat(layout.reporting_dir).st_mode & 0o777 == 0o700
    spool.close()


def test_unusable_reporting_directory_falls_back_to_var_tmp(host: Host) -> None:
    layout = Layout.at(host.root)
    # A file where the directory should be: unusable even for root.
    host.write("/var/lib/redflag/agent/reporting", "not a directory")

    spool, problems = open_spool(layout)

    assert spool.kind is SpoolKind.FALLBACK
    assert spool.path == host.path(f"/var/tmp/redflag-agent-{os.geteuid()}/spool.sqlite3")
    assert len(problems) == 1
    assert os.stat(spool.path.parent).st_mode & 0o777 == 0o700
    spool.close()


def test_fallback_directory_planted_by_another_user_is_refused(
    host: Host, require_root: None
) -> None:
    layout = Layout.at(host.root)
    host.write("/var/lib/redflag/agent/reporting", "not a directory")
    planted = host.path(f"/var/tmp/redflag-agent-{os.geteuid()}")
    planted.mkdir()
    os.chown(planted, 12345, 12345)

    spool, problems = open_spool(layout)

    assert spool.path == host.path(f"/tmp/redflag-agent-{os.geteuid()}/spool.sqlite3")
    assert "belongs to uid 12345" in problems[1]
    spool.close()


def test_no_writable_location_leaves_a_memory_spool(host: Host) -> None:
    layout = Layout.at(host.root)
    host.write("/var/lib/redflag/agent/reporting", "x")
    host.write(f"/var/tmp/redflag-agent-{os.geteuid()}", "x")
    host.write(f"/tmp/redflag-agent-{os.geteuid()}", "x")

    spool, problems = open_spool(layout)

    assert spool.kind is SpoolKind.MEMORY
    assert len(problems) == 3


def test_fallback_spool_is_drained_into_the_primary_later(host: Host) -> None:
    layout = Layout.at(host.root)
    fallback_dir = host.path(f"/var/tmp/redflag-agent-{os.geteuid()}")
    fallback_dir.mkdir(mode=0o700)
    stranded = event("while the state dir was broken")
    with Spool(fallback_dir / "spool.sqlite3", kind=SpoolKind.FALLBACK) as fallback:
        fallback.add(stranded)
        fallback.put("dropped_events", 4)
        fallback.put("last_migration", {"at": "2030-01-01T00:00:00+00:00", "event_type": "x"})

    primary, _ = open_spool(layout)
    leftovers = gather_spools(layout, primary)

    assert leftovers == []
    assert ids(primary) == [str(stranded.event_id)]
    assert primary.counts().dropped == 4
    assert primary.get("last_migration")["event_type"] == "x"
    with Spool(fallback_dir / "spool.sqlite3", kind=SpoolKind.FALLBACK) as fallback:
        assert fallback.counts().queued == 0
        assert fallback.counts().dropped == 0
    primary.close()


def test_root_ignores_fallback_spools_of_unrelated_users(host: Host) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root collects other users' spools")
    layout = Layout.at(host.root)
    for uid in (4242, 65534):
        directory = host.path(f"/var/tmp/redflag-agent-{uid}")
        directory.mkdir(mode=0o700)
        with Spool(directory / "spool.sqlite3", kind=SpoolKind.FALLBACK) as spool:
            spool.add(event())
        os.chown(directory, uid, uid)
    # 65534 owns the legacy config, so it is the agent's service user.
    host.write_json("/etc/aggregator/config.json", {})
    os.chown(host.path("/etc/aggregator/config.json"), 65534, 65534)

    found = [path.parent.name for path, _ in spool_files(layout)]

    assert found == ["redflag-agent-65534"]


def test_status_reads_spools_without_writing(host: Host) -> None:
    layout = Layout.at(host.root)
    spool, _ = open_spool(layout)
    spool.add(event())
    spool.close()
    before = (layout.reporting_dir / "spool.sqlite3").stat().st_mtime_ns

    [(path, reader, error)] = list(read_only_spools(layout))

    assert error is None
    assert reader is not None
    assert reader.counts().queued == 1
    reader.close()
    assert path.stat().st_mtime_ns == before


# --- crash safety --------------------------------------------------------------------------

_SPOOL_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from agent.spool import Spool, SpoolKind
    from tests.agent.sandbox import sample_event as event
    spool = Spool(Path(sys.argv[1]), kind=SpoolKind.PRIMARY)
    item = event("spooled before the crash")
    spool.add(item)
    print(item.event_id, flush=True)
    time.sleep(60)
    """
)


def test_event_spooled_before_sigkill_is_still_there(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-c", _SPOOL_AND_HANG, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    event_id = process.stdout.readline().strip()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)

    with Spool(path, kind=SpoolKind.PRIMARY) as survivor:
        assert ids(survivor) == [event_id]


def test_spool_created_by_root_belongs_to_the_owner_of_the_directory(host: Host) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can create files for another user")
    layout = Layout.at(host.root)
    layout.reporting_dir.mkdir(parents=True, mode=0o700)
    os.chown(layout.reporting_dir, 65534, 65534)

    spool, _ = open_spool(layout)
    spool.add(event())
    spool.close()

    info = os.stat(layout.reporting_dir / "spool.sqlite3")
    assert (info.st_uid, info.st_gid) == (65534, 65534)
