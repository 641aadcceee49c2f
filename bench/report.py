"""The benchmark table: the machine, versions and commit, then one row per figure.

Every figure sits beside a baseline measured in the same run and a PASS/FAIL verdict
against its target, so a table read months later still says what it was measured against.
The table is Markdown, readable in a terminal and pasteable into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sqlalchemy",
    "pydantic",
    "pydantic-core",
    "psycopg",
)

PASS, FAIL, INFO = "PASS", "FAIL", "info"


@dataclass
class Row:
    benchmark: str
    backend: str
    figure: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    verdict: str = INFO


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def extend(self, other: Report) -> None:
        self.rows.extend(other.rows)
        self.notes.extend(other.notes)
        self.facts.update(other.facts)

    @property
    def failed(self) -> bool:
        return any(row.verdict == FAIL for row in self.rows)

    def render(self) -> str:
        lines = [f"- {name}: {value}" for name, value in environment().items()]
        lines += [f"- {name}: {value}" for name, value in self.facts.items()]
        lines.append("")
        header = ["benchmark", "backend", "figure", "value", "baseline (same run)", "ratio"]
        header += ["target", "result"]
        cells = [header] + [
            [r.benchmark, r.backend, r.figure, r.value, r.baseline, r.ratio, r.target, r.verdict]
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for number, row in enumerate(cells):
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
            if number == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        verdicts = [r.verdict for r in self.rows if r.verdict != INFO]
        lines.append("")
        lines.append(
            f"{verdicts.count(PASS)} of {len(verdicts)} targets met"
            + ("; see the FAIL rows" if FAIL in verdicts else "")
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "environment": environment(),
                "facts": self.facts,
                "rows": [asdict(r) for r in self.rows],
                "notes": self.notes,
            },
            indent=2,
        )


def environment() -> dict[str, str]:
    """The machine, the interpreter, the libraries and the commit this run measured."""
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    versions.append(f"sqlite {sqlite3.sqlite_version}")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cores()} cores ({_cpu_model()}), {_memory_gib():.1f} GiB memory, "
        f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": ", ".join(versions),
        "commit": _commit(),
    }


def _cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    total = os.cpu_count()
    return f"{usable}" if usable == total or usable is None else f"{usable} usable of {total}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def judge(*, quick: bool, fast_enough: bool, correct: bool = True) -> str:
    """A verdict; a --quick run is too small to judge speed, only correctness."""
    if quick:
        return INFO if correct else FAIL
    return verdict(fast_enough and correct)


def progress(message: str) -> None:
    """A line on stderr for the one waiting, apart from the table on stdout."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def finish(report: Report, json_path: Path | None) -> int:
    """Print the table, keep the JSON if asked; the exit status says whether all targets held."""
    print(report.render())
    if json_path:
        json_path.write_text(report.to_json())
    return 1 if report.failed else 0


def run_alone(benchmark: ModuleType, prog: str, argv: Sequence[str] | None = None) -> int:
    """`python -m bench.<name>`: one benchmark module, with its own options, its own table."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=benchmark.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    benchmark.add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: Report = benchmark.run(benchmark.options_from(args))
    report.facts["benchmark wall time"] = f"{time.perf_counter() - started:.0f} s"
    return finish(report, args.json)
