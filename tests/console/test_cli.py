"""`redflag-console`: start Streamlit with the repository's config, or hash a password."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from console import cli
from console.passwords import verify_password


@pytest.fixture
def no_exec(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the command `redflag-console` would replace itself with."""
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: calls.append(list(argv)))
    monkeypatch.setattr(cli.os, "chdir", lambda path: None)
    return calls


def test_the_console_runs_the_app_on_the_address_asked_for(
    no_exec: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDFLAG_CONSOLE_AUTH", "password")

    cli.main(["--host", "0.0.0.0", "--port", "8600"])

    (command,) = no_exec
    assert command[1:4] == ["-m", "streamlit", "run"]
    assert Path(command[4]) == cli.APP
    assert "--server.address=0.0.0.0" in command
    assert "--server.port=8600" in command


def test_no_login_is_refused_on_an_address_other_hosts_reach(
    no_exec: list[list[str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDFLAG_CONSOLE_AUTH", "none")

    assert cli.main(["--host", "0.0.0.0"]) == 1

    assert no_exec == []
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "only allowed on 127.0.0.1" in error


def test_bad_settings_and_bad_ports_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDFLAG_CONSOLE_AUTH", "magic")
    assert cli.main([]) == 1
    assert capsys.readouterr().err.startswith("redflag-console: error: invalid console settings")

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--port", "99999"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_hash_password_prints_a_hash_that_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))

    assert cli.main(["hash-password"]) == 0

    printed = capsys.readouterr().out.strip()
    assert printed.startswith("scrypt$")
    assert verify_password("correct horse battery", printed)
    assert not verify_password("wrong", printed)


def test_hash_password_refuses_a_short_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))

    assert cli.main(["hash-password"]) == 1
    assert "at least 8 characters" in capsys.readouterr().err
