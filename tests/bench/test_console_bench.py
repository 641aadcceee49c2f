"""The console benchmark works end to end in a tiny configuration; no timing is asserted."""

from __future__ import annotations

import argparse

import pytest

from bench import console
from bench.report import FAIL, PASS

PAGES = ("fleet overview", "events explorer", "agent history", "error groups")


@pytest.mark.slow
def test_quick_console_run_times_every_page_and_judges_the_table_sizes() -> None:
    parser = argparse.ArgumentParser()
    console.add_arguments(parser)
    options = console.options_from(parser.parse_args(["--quick", "--console-backends", "sqlite"]))

    report = console.run(options)

    figures = {row.figure: row for row in report.rows}
    for page in PAGES:
        steps = [row for figure, row in figures.items() if figure.startswith(f"{page} · ")]
        assert any(" · first render" in row.figure for row in steps), page
        assert all(row.value.endswith(" s") for row in steps)
        assert all(row.baseline.startswith("read_sql ") for row in steps)
    largest = next(row for figure, row in figures.items() if figure.startswith("largest table"))
    assert largest.verdict == PASS
    assert any(figure.startswith("console process peak RSS") for figure in figures)
    assert any(figure.startswith("bulk seeding") for figure in figures)
    assert not [row for row in report.rows if row.verdict == FAIL], report.render()
    assert "console" in report.render()
