"""Agent benchmark: detection and execution on a 1,000-file legacy layout, and the spool.

In a sandboxed host root (the agent's `--root`), laid out as agent 0.1.18 left it with its
state directory holding `--agent-files` files (1,000 by default) in nested directories:
1. detection (`agent.detection.detect`: inventory, stat of every entry, config parsing)
   against the same-run baseline of `os.walk` + `os.lstat` of the same trees;
2. execution (`agent.execution.execute`: backup, copy with modes and owners, config
   conversion, validation, fsyncs) on a fresh copy of the layout each round, against
   `shutil.copytree` of the same trees (copy only: no backup, no fsync, no checks);
3. the spool: events appended one by one (`Spool.add`: JSON, one `synchronous=FULL` WAL
   transaction each, bounds enforced) against raw `sqlite3` inserts of the same bodies
   with the same durability (WAL, `synchronous=FULL`, one transaction each).

Each figure is the median of `--agent-rounds` rounds. No target in DESIGN section 8: the
rows are information. Run alone: `python -m bench.agent [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.detection import DetectionOutcome, detect
from agent.events import new_event
from agent.execution import ExecutionOutcome, execute
from agent.layout import Layout
from agent.spool import Spool, SpoolKind
from bench.report import FAIL, Report, Row, run_alone
from demo.layouts import Host, remove_tree
from models.vocabulary import EventType

QUICK = {"files": 40, "rounds": 1, "spool_events": 30}
FILES_PER_DIRECTORY = 50


@dataclass(frozen=True)
class Options:
    files: int
    rounds: int
    spool_events: int
    quick: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("agent")
    with contextlib.suppress(argparse.ArgumentError):  # shared with the other benchmarks
        group.add_argument(
            "--quick", action="store_true", help="a tiny run that only proves it works"
        )
    group.add_argument("--agent-files", type=int, default=1_000, help="files in the layout")
    group.add_argument("--agent-rounds", type=int, default=5, help="rounds; the median counts")
    group.add_argument("--spool-events", type=int, default=500, help="events appended per round")


def options_from(args: argparse.Namespace) -> Options:
    if args.quick:
        return Options(quick=True, **QUICK)
    return Options(files=args.agent_files, rounds=args.agent_rounds, spool_events=args.spool_events)


def run(options: Options) -> Report:
    report = Report()
    with _sandbox() as base:
        template = _legacy_host(base / "template", files=options.files)
        _detection(report, options, template)
        _execution(report, options, template, base)
        _spool(report, options, base)
    if options.quick:
        report.notes.append("agent: quick run, too small to judge speed; correctness judged")
    report.notes.append(
        f"agent: legacy layout with {options.files:,} files in nested directories of "
        f"{FILES_PER_DIRECTORY}; median of {options.rounds} round(s); spool: "
        f"{options.spool_events:,} events appended one by one per round, each its own "
        "durable transaction (WAL, synchronous=FULL), on the benchmark machine's disk"
    )
    return report


# --- layout -------------------------------------------------------------------------------


@contextlib.contextmanager
def _sandbox() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="redflag-agent-bench-"))
    try:
        yield base
    finally:
        remove_tree(base)


def _legacy_host(root: Path, *, files: int) -> Host:
    """A host as agent 0.1.18 left it, its state directory holding `files` files in all."""
    root.mkdir(parents=True)
    host = Host(root).with_temp_dirs().with_machine_id().with_legacy_layout()
    already = sum(len(names) for _, _, names in os.walk(host.path("/etc/aggregator")))
    already += sum(len(names) for _, _, names in os.walk(host.path("/var/lib/aggregator")))
    for number in range(max(0, files - already)):
        directory = f"/var/lib/aggregator/cache/{number // FILES_PER_DIRECTORY:03d}"
        host.write(f"{directory}/entry-{number:05d}.json", f'{{"package": "p{number}"}}\n', 0o640)
    return host


def _legacy_trees(host: Host) -> tuple[Path, ...]:
    return (host.path("/etc/aggregator"), host.path("/var/lib/aggregator"))


# --- detection ----------------------------------------------------------------------------


def _detection(report: Report, options: Options, host: Host) -> None:
    layout = Layout.at(host.root)
    outcome = detect(layout).outcome
    if outcome is not DetectionOutcome.NEEDED:
        report.add(Row("agent", "-", "detection", f"outcome {outcome.value}", verdict=FAIL))
        return
    seconds = _median(options.rounds, lambda: detect(layout))
    baseline = _median(options.rounds, lambda: _walk_and_stat(_legacy_trees(host)))
    report.add(
        Row(
            "agent",
            "-",
            f"detection, legacy layout of {options.files:,} files",
            f"{seconds * 1000:.1f} ms",
            baseline=f"os.walk + lstat {baseline * 1000:.1f} ms",
            ratio=f"x{seconds / baseline:.1f}",
        )
    )


def _walk_and_stat(trees: tuple[Path, ...]) -> int:
    seen = 0
    for top in trees:
        for directory, dirs, files in os.walk(top):
            for name in [*dirs, *files]:
                os.lstat(os.path.join(directory, name))
                seen += 1
    return seen


# --- execution ----------------------------------------------------------------------------


def _execution(report: Report, options: Options, template: Host, base: Path) -> None:
    timings: list[float] = []
    copies: list[float] = []
    for round_number in range(options.rounds):
        root = base / f"execute-{round_number}"
        shutil.copytree(template.root, root, symlinks=True)
        layout = Layout.at(root)
        found = detect(layout)
        started = time.perf_counter()
        result = execute(layout, found)
        timings.append(time.perf_counter() - started)
        if result.outcome is not ExecutionOutcome.SUCCESS:
            report.add(
                Row("agent", "-", "execution", f"outcome {result.outcome.value}", verdict=FAIL)
            )
            return
        target = base / f"copy-{round_number}"
        started = time.perf_counter()
        for top in _legacy_trees(template):
            shutil.copytree(top, target / top.relative_to(template.root), symlinks=True)
        copies.append(time.perf_counter() - started)
        remove_tree(root)
        remove_tree(target)
    seconds, baseline = statistics.median(timings), statistics.median(copies)
    report.add(
        Row(
            "agent",
            "-",
            f"execution (migration), legacy layout of {options.files:,} files",
            f"{seconds * 1000:.0f} ms",
            baseline=f"shutil.copytree {baseline * 1000:.0f} ms",
            ratio=f"x{seconds / baseline:.1f}",
        )
    )


# --- spool --------------------------------------------------------------------------------


def _spool(report: Report, options: Options, base: Path) -> None:
    count = options.spool_events
    events = [
        new_event(
            EventType.UPDATE_INSTALLED,
            error_message=None,
            migration_from=None,
            migration_to=None,
            system_info={"hostname": "bench-01", "os_name": "Debian", "os_version": "12"},
            details={"package": "openssl", "version": f"3.0.{n}"},
        )
        for n in range(count)
    ]
    spool_rates: list[float] = []
    raw_rates: list[float] = []
    for round_number in range(options.rounds):
        directory = base / f"spool-{round_number}"
        directory.mkdir()
        with Spool(directory / "spool.db", kind=SpoolKind.PRIMARY) as spool:
            started = time.perf_counter()
            for event in events:
                spool.add(event)
            spool_rates.append(count / (time.perf_counter() - started))
            if spool.counts().queued != count:
                report.add(Row("agent", "-", "spool", "events missing", verdict=FAIL))
                return
        bodies = [event.model_dump_json() for event in events]
        raw_rates.append(_raw_inserts(directory / "raw.db", bodies))
    rate, raw = statistics.median(spool_rates), statistics.median(raw_rates)
    report.add(
        Row(
            "agent",
            "-",
            "spool: durable appends, one event per transaction",
            f"{rate:,.0f} events/s ({1e6 / rate:,.0f} µs/event)",
            baseline=f"raw sqlite3 {raw:,.0f}/s ({1e6 / raw:,.0f} µs)",
            ratio=f"{rate / raw:.0%}",
        )
    )


def _raw_inserts(path: Path, bodies: list[str]) -> float:
    """Events/s of plain sqlite3 inserts, one durable (WAL, FULL) transaction each."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE queued_event (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        started = time.perf_counter()
        for body in bodies:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO queued_event (body) VALUES (?)", (body,))
            db.execute("COMMIT")
        return len(bodies) / (time.perf_counter() - started)
    finally:
        db.close()


def _median(rounds: int, action: Callable[[], object]) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    return run_alone(sys.modules[__name__], "python -m bench.agent", argv)


if __name__ == "__main__":
    sys.exit(main())
