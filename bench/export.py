"""Export benchmark: a million events to Parquet and CSV, against pandas.read_sql of the table.

For each backend (SQLite, PostgreSQL), on the shared seeded database (`bench.seed`: 10,000
agents, 1,000,000 events), each step a separate process whose wall time, CPU time and peak
memory (max RSS, from the kernel's accounting of that child) are measured:
1. the baseline: `pandas.read_sql` of the whole `update_events` table through the
   project's engine (no join, no order, nothing written): what an analyst's first attempt
   costs;
2. `redflag-server export --format parquet` of every event (the DESIGN section 8 target:
   under 5 s), then the same to CSV; each file's manifest must count every event.

Times are whole processes (interpreter start and imports included) for the baseline and the
exports alike. Run alone: `python -m bench.export [--backends sqlite] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import seed
from bench.report import FAIL, INFO, Report, Row, judge, progress, run_alone
from bench.server import DEFAULT_PG_ADMIN_URL

TARGET_PARQUET_SECONDS = 5.0
QUICK_EVENTS = 3_000
QUICK_AGENTS = 50
# One process may run this long; a stuck export fails the row rather than the suite.
STEP_TIMEOUT_SECONDS = 600

_BASELINE = """
import sys, pandas, sqlalchemy
from models.database import create_db_engine
engine = create_db_engine(sys.argv[1])
frame = pandas.read_sql(sqlalchemy.text("SELECT * FROM update_events"), engine)
print(len(frame))
"""


Options = seed.SeededOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export")
    # Shared with the other benchmarks of `python -m bench` (which may define them first).
    seed.add_once(parser, "--backends", default="sqlite,postgresql", help="comma-separated")
    seed.add_once(parser, "--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    seed.add_once(
        parser, "--quick", action="store_true", help="a tiny run that only proves it works"
    )
    group.add_argument("--export-events", type=int, default=seed.DEFAULT_EVENTS)
    group.add_argument("--export-agents", type=int, default=seed.DEFAULT_AGENTS)


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        agents=QUICK_AGENTS if args.quick else args.export_agents,
        events=QUICK_EVENTS if args.quick else args.export_events,
        pg_admin_url=args.pg_admin_url,
        quick=args.quick,
    )


@dataclass(frozen=True)
class Measured:
    """One child process: how long it took, the CPU it used, its peak memory."""

    seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def memory(self) -> str:
        return f"{self.max_rss_bytes / 2**20:,.0f} MiB"

    def failure(self) -> str:
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {self.returncode}"


def measure(argv: list[str], *, timeout: float = STEP_TIMEOUT_SECONDS) -> Measured:
    """Run `argv` and take its wall time and its own rusage (not that of other children)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        # Reaped here, so that Popen does not wait for it again.
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            seconds=seconds,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            max_rss_bytes=usage.ru_maxrss * 1024,  # KiB on Linux
            returncode=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
        )


def run(options: Options) -> Report:
    report = Report()
    if options.quick:
        report.notes.append("export: quick run, too small to judge speed; correctness judged")
    for backend in options.backends:
        progress(f"export, {backend}: seeding {options.events:,} events (shared with others)")
        try:
            with seed.seeded_database(
                backend,
                agents=options.agents,
                events=options.events,
                pg_admin_url=options.pg_admin_url,
            ) as url:
                _run_backend(report, options, backend, url)
        except RuntimeError as exc:
            report.add(Row("export", backend, "seeded database", str(exc), verdict=FAIL))
    report.notes.append(
        f"export: {options.events:,} events of {options.agents:,} agents per backend "
        "(bench.seed); every figure is a whole process (start-up and imports included), "
        "peak memory is its max RSS; the baseline is pandas.read_sql('SELECT * FROM "
        "update_events') through the project's engine"
    )
    return report


def _run_backend(report: Report, options: Options, backend: str, url: str) -> None:
    python = sys.executable
    progress(f"export, {backend}: baseline pandas.read_sql of the whole table")
    baseline = measure([python, "-c", _BASELINE, url])
    if baseline.returncode != 0:
        report.add(
            Row("export", backend, "baseline pandas.read_sql", baseline.failure(), verdict=FAIL)
        )
        return
    report.add(
        Row(
            "export",
            backend,
            f"baseline: pandas.read_sql of {options.events:,} events",
            f"{baseline.seconds:.1f} s, {baseline.memory} peak",
            verdict=INFO,
        )
    )
    with tempfile.TemporaryDirectory(prefix="redflag-export-bench-") as directory:
        for fmt in ("parquet", "csv"):
            out = Path(directory) / f"events.{fmt}"
            progress(f"export, {backend}: {options.events:,} events to {fmt}")
            result = measure(
                [
                    python,
                    "-m",
                    "ingest_api.cli",
                    "--database-url",
                    url,
                    "export",
                    "--format",
                    fmt,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            rows = _manifest_rows(out) if result.returncode == 0 else None
            complete = rows == options.events
            if result.returncode != 0 or not complete:
                problem = result.failure() if result.returncode else f"{rows} rows written"
                report.add(Row("export", backend, f"export to {fmt}", problem, verdict=FAIL))
                continue
            size = out.stat().st_size / 2**20
            figure = f"{fmt} export of {options.events:,} events ({size:,.0f} MiB file)"
            is_target = fmt == "parquet"
            report.add(
                Row(
                    "export",
                    backend,
                    figure + ", wall time",
                    f"{result.seconds:.2f} s ({options.events / result.seconds:,.0f} events/s)",
                    baseline=f"read_sql {baseline.seconds:.1f} s",
                    ratio=f"x{baseline.seconds / result.seconds:.1f} faster",
                    target=f"< {TARGET_PARQUET_SECONDS:.0f} s" if is_target else "-",
                    verdict=judge(
                        quick=options.quick,
                        fast_enough=result.seconds < TARGET_PARQUET_SECONDS,
                    )
                    if is_target
                    else INFO,
                )
            )
            report.add(
                Row(
                    "export",
                    backend,
                    f"{fmt} export: peak memory (max RSS), CPU time",
                    f"{result.memory}, {result.cpu_seconds:.1f} s CPU",
                    baseline=f"read_sql {baseline.memory}, {baseline.cpu_seconds:.1f} s CPU",
                    ratio=f"x{baseline.max_rss_bytes / max(result.max_rss_bytes, 1):.1f} less",
                )
            )


def _manifest_rows(out: Path) -> int | None:
    try:
        manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    except (OSError, ValueError):
        return None
    rows = manifest.get("rows")
    return rows if isinstance(rows, int) else None


def main(argv: list[str] | None = None) -> int:
    return run_alone(sys.modules[__name__], "python -m bench.export", argv)


if __name__ == "__main__":
    sys.exit(main())
