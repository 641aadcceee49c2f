"""`redflag-server db upgrade` from the operator's side: works twice, fails in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _server(*args: str, cwd: object = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest_api.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_db_upgrade_twice_on_each_backend(empty_db_url: str) -> None:
    first = _server("--database-url", empty_db_url, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "upgraded from empty to revision" in first.stdout

    second = _server("--database-url", empty_db_url, "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert "already at revision" in second.stdout


def test_default_database_is_sqlite_under_var(tmp_path: object) -> None:
    result = _server("db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sqlite:///./var/redflag.db" in result.stdout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/nothing", "database error: connection failed"),
        ("not-a-url", "malformed database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("sqlite:////proc/no/such/dir/x.db", "cannot create the directory"),
    ],
)
def test_bad_database_url_is_one_clear_line(url: str, expected: str) -> None:
    result = _server("--database-url", url, "db", "upgrade")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("redflag-server: error: ")
    assert expected in lines[0]


def test_usage_mistake_is_one_line() -> None:
    result = _server("db", "downgrade")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'downgrade'" in result.stderr
