"""`redflag-server export` from the operator's side: filters, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.engine import Engine

from ingest_api import cli
from ingest_api.cli_export import add_export_parser, filters_from_args
from models import analytics
from models.analytics import EventFilters
from models.vocabulary import EventType, Status
from tests.factories import seed_fixture_fleet

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


@pytest.fixture(autouse=True)
def _no_cached_engines() -> Iterator[None]:
    yield
    analytics.dispose_cached_engines()


@pytest.fixture(scope="module")
def fleet_url(module_engine: Engine) -> str:
    """The fixture fleet, seeded once per backend: the tests that use it only read."""
    seed_fixture_fleet(module_engine, now=NOW)
    return module_engine.url.render_as_string(hide_password=False)


def test_export_of_failed_detections_of_the_last_day(
    fleet_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "failed-detections.parquet"

    code = cli.main(
        [
            "--database-url",
            fleet_url,
            "export",
            "--format",
            "parquet",
            "--out",
            str(out),
            "--event-type",
            "migration_detection_failed",
            "--event-type",
            "migration_execution_failed",
            "--since",
            "24h",
            "--compression",
            "zstd",
            "--no-progress",
        ]
    )

    assert code == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("exported 3 events to ")
    assert stdout.count("\n") == 1
    expected = analytics.events_frame(
        fleet_url,
        event_types=["migration_detection_failed", "migration_execution_failed"],
        since=NOW - timedelta(days=1),
    )
    written = pd.read_parquet(out)
    assert list(written["event_pk"]) == list(expected["event_pk"])
    manifest = json.loads((tmp_path / "failed-detections.parquet.manifest.json").read_text())
    assert manifest["rows"] == 3
    assert manifest["compression"] == "zstd"
    assert manifest["filters"]["event_types"] == (
        "migration_detection_failed,migration_execution_failed"
    )


def test_every_filter_option_reaches_the_filters() -> None:
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(), argparse.ArgumentParser)
    agent_id = "0b1aa226-c964-4bda-adeb-b4e5928a46de"
    args = parser.parse_args(
        [
            "export",
            "--format=csv",
            "--out=x.csv",
            "--since=2026-11-26",
            "--until=2026-11-27T12:00:00+01:00",
            "--category=migration",
            "--event-type=migration_execution_failed",
            "--status=failed",
            "--severity=error",
            "--host=web",
            f"--agent-id={agent_id}",
            "--agent-version=0.1.*",
            "--migration-from=0.1.18*",
            "--migration-to=0.2.0*",
            "--fingerprint=928b41a06a850472",
            "--error-text=denied",
            "--limit=10",
        ]
    )

    filters = filters_from_args(args)

    assert filters == EventFilters(
        since=datetime(2026, 11, 26, tzinfo=UTC),
        until=datetime(2026, 11, 27, 11, tzinfo=UTC),
        category="migration",  # type: ignore[arg-type]
        event_types=(EventType.MIGRATION_EXECUTION_FAILED,),
        statuses=(Status.FAILED,),
        severities="error",  # type: ignore[arg-type]
        host="web",
        agent_ids=(agent_id,),  # type: ignore[arg-type]
        agent_version="0.1.*",
        migration_from="0.1.18*",
        migration_to="0.2.0*",
        fingerprint="928b41a06a850472",
        error_text="denied",
    )
    assert (args.limit, args.export_format) == (10, "csv")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--since", "last tuesday"], "--since: cannot read 'last tuesday' as a time"),
        (["--out", "/proc/no/such/dir/x.csv"], "cannot write /proc/no/such/dir/x.csv"),
        (["--agent-id", "not-a-uuid"], "agent_ids: not a UUID"),
        (["--limit", "-1"], "--limit must be zero or more"),
        (["--compression", "rar"], "invalid choice: 'rar'"),
        (["--status", "exploded"], "invalid choice: 'exploded'"),
    ],
)
def test_a_user_mistake_is_one_line_and_a_non_zero_exit(
    fleet_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    expected: str,
) -> None:
    base = ["--format", "csv", "--out", str(tmp_path / "x.csv"), "--no-progress"]

    code = _exit_code(["--database-url", fleet_url, "export", *base, *arguments])

    assert code in (1, 2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("redflag-server")
    assert expected in lines[0]
    assert not (tmp_path / "x.csv").exists()


def _exit_code(argv: list[str]) -> int:
    """What the process would exit with: argparse exits itself, handlers return a code."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_the_export_parser_insists_on_the_cli_parser_class() -> None:
    parser = argparse.ArgumentParser()

    with pytest.raises(TypeError, match="not _Parser"):
        add_export_parser(parser.add_subparsers(), cli._Parser)
