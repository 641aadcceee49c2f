"""The benchmark harness works end to end in a tiny configuration; no timing is asserted."""

from __future__ import annotations

import argparse

import pytest

from bench import ingest
from bench.report import FAIL, PASS


@pytest.mark.slow
def test_quick_ingest_run_reports_every_figure_and_loses_nothing() -> None:
    parser = argparse.ArgumentParser()
    ingest.add_arguments(parser)
    options = ingest.options_from(parser.parse_args(["--quick", "--backends", "sqlite"]))

    report = ingest.run(options)

    figures = {row.figure: row for row in report.rows}
    assert any(figure.startswith("API events/s") for figure in figures)
    assert any(figure.startswith("p99 latency, open loop") for figure in figures)
    assert figures["rows stored after all runs"].verdict == PASS
    assert figures["duplicate replay of every batch, events/s"].verdict == PASS
    assert not [row for row in report.rows if row.verdict == FAIL], report.render()
    table = report.render()
    assert "commit:" in table
    assert "sqlalchemy" in table
