"""The export and agent benchmarks work end to end in a tiny configuration; no timing asserted."""

from __future__ import annotations

import argparse
import sys

import pytest

from bench import agent, export
from bench.report import FAIL, INFO


def _options(module: object, argv: list[str]) -> object:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return module.options_from(parser.parse_args(argv))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_quick_export_run_exports_every_event_in_both_formats() -> None:
    options = _options(export, ["--quick", "--backends", "sqlite"])

    report = export.run(options)  # type: ignore[arg-type]

    assert not [row for row in report.rows if row.verdict == FAIL], report.render()
    figures = [row.figure for row in report.rows]
    assert any(f.startswith("baseline: pandas.read_sql") for f in figures)
    assert any(f.startswith("parquet export of 3,000 events") for f in figures)
    assert any(f.startswith("csv export of 3,000 events") for f in figures)
    # A quick run is too small to judge the 5 s target: it is information only.
    assert {row.verdict for row in report.rows} == {INFO}


def test_a_child_process_is_measured_on_its_own() -> None:
    measured = export.measure([sys.executable, "-c", "x = bytearray(64 * 2**20); print(len(x))"])

    assert measured.returncode == 0
    assert measured.stdout.strip() == str(64 * 2**20)
    assert measured.max_rss_bytes > 64 * 2**20
    assert measured.cpu_seconds > 0


def test_a_failing_child_process_reports_its_last_line() -> None:
    measured = export.measure([sys.executable, "-c", "raise SystemExit('no such database')"])

    assert measured.returncode == 1
    assert measured.failure() == "no such database"


@pytest.mark.slow
def test_quick_agent_run_detects_executes_and_spools() -> None:
    options = _options(agent, ["--quick"])

    report = agent.run(options)  # type: ignore[arg-type]

    assert not [row for row in report.rows if row.verdict == FAIL], report.render()
    figures = [row.figure for row in report.rows]
    assert any(f.startswith("detection, legacy layout") for f in figures)
    assert any(f.startswith("execution (migration)") for f in figures)
    assert any(f.startswith("spool: durable appends") for f in figures)
    assert "agent" in report.render()


def test_the_suite_registers_both_and_accepts_their_options_together() -> None:
    from bench.__main__ import BENCHMARKS

    assert BENCHMARKS["export"] == "bench.export"
    assert BENCHMARKS["agent"] == "bench.agent"
    parser = argparse.ArgumentParser()
    for module in (export, agent):
        module.add_arguments(parser)
    args = parser.parse_args(["--quick", "--export-events", "10", "--agent-files", "5"])
    assert args.quick
