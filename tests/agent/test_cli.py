"""The command line: exit codes, one-line errors, status, and what `import agent` pulls in."""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from agent import cli
from agent.cli import ExitCode, Runtime, main
from agent.identity import Identity, save_identity
from agent.layout import Layout
from agent.spool import Spool, SpoolKind
from tests.agent.sandbox import (
    NOBODY,
    REPO,
    FakeClock,
    Host,
    agent_command,
    current_config,
    run_agent,
)

AGENT_ID = uuid.UUID("8d5c2f0e-8f4e-4b8b-9b7e-1f2f4b5a6c7d")


class Console:
    def __init__(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()


def runtime(
    console: Console,
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
    clock: FakeClock | None = None,
) -> Runtime:
    clock = clock or FakeClock()
    http = httpx.Client(transport=httpx.MockTransport(handler)) if handler else None
    return Runtime(
        http=http,
        now=clock.now,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        stdout=console.out,
        stderr=console.err,
    )


def accept_all(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/register"):
        return httpx.Response(
            201,
            json={
                "agent_id": str(AGENT_ID),
                "agent_token": "agent-secret-token",
                "check_in_interval_seconds": 120,
            },
        )
    events = json.loads(request.content)["events"]
    return httpx.Response(
        200,
        json={
            "accepted": len(events),
            "duplicates": 0,
            "rejected": [],
            "check_in_interval_seconds": 120,
            "server_time": datetime.now(UTC).isoformat(),
        },
    )


def registered(host: Host) -> Host:
    save_identity(
        Layout.at(host.root),
        Identity(server_url="https://redflag.example.org", agent_id=AGENT_ID, agent_token="secret"),
    )
    return host


def test_import_agent_pulls_in_no_server_or_analysis_library() -> None:
    probe = textwrap.dedent(
        """
        import sys
        import agent, agent.cli
        heavy = {"streamlit", "pandas", "plotly", "fastapi", "starlette", "sqlmodel",
                 "sqlalchemy", "uvicorn", "pyarrow"}
        print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["register"], "the following arguments are required: --server"),
        (["run", "--max-wait", "soon"], "'soon' is not a number of seconds"),
        (["migrate", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == ExitCode.USAGE

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert complaint in err
    assert err.startswith("redflag-agent")
    assert ": error: " in err


def test_root_that_does_not_exist_is_a_usage_error(host: Host) -> None:
    console = Console()

    code = main(["--root", str(host.root / "missing"), "status"], runtime(console))

    assert code == ExitCode.USAGE
    assert console.err.getvalue() == (
        f"redflag-agent: error: --root '{host.root / 'missing'}' is not an existing directory\n"
    )


def test_root_may_follow_the_command(host: Host) -> None:
    console = Console()
    assert main(["status", "--root", str(host.root)], runtime(console)) == ExitCode.OK
    assert f"root:            {host.root}" in console.out.getvalue()


def test_register_stores_an_owner_only_identity(host: Host) -> None:
    console = Console()

    code = main(
        [
            "--root",
            str(host.root),
            "register",
            "--server",
            "https://redflag.example.org",
            "--enrollment-token",
            "enrol",
        ],
        runtime(console, accept_all),
    )

    assert code == ExitCode.OK, console.err.getvalue()
    layout = Layout.at(host.root)
    stored = json.loads(layout.identity_file.read_text())
    assert stored["agent_id"] == str(AGENT_ID)
    assert stored["agent_token"] == "agent-secret-token"
    assert stored["check_in_interval_seconds"] == 120
    assert os.stat(layout.identity_file).st_mode & 0o777 == 0o600
    assert os.stat(layout.reporting_dir).st_mode & 0o777 == 0o700
    assert f"registered as agent {AGENT_ID}" in console.out.getvalue()


def test_register_takes_the_token_from_the_environment(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDFLAG_ENROLLMENT_TOKEN", "from-env")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return accept_all(request)

    code = main(
        ["--root", str(host.root), "register", "--server", "https://redflag.example.org"],
        runtime(Console(), handler),
    )

    assert code == ExitCode.OK
    assert seen == ["Bearer from-env"]


def test_register_twice_needs_force(host: Host) -> None:
    registered(host)
    console = Console()
    argv = ["--root", str(host.root), "register", "--server", "https://x.example.org"]

    code = main([*argv, "--enrollment-token", "t"], runtime(console, accept_all))

    assert code == ExitCode.USAGE
    assert "already registered" in console.err.getvalue()
    assert main([*argv, "--enrollment-token", "t", "--force"], runtime(Console(), accept_all)) == 0


@pytest.mark.parametrize(
    ("handler", "code", "complaint"),
    [
        (
            lambda r: httpx.Response(401, json={"detail": "enrolment token expired"}),
            ExitCode.NOT_AUTHORISED,
            "enrolment token expired",
        ),
        (
            lambda r: (_ for _ in ()).throw(httpx.ConnectError("Connection refused", request=r)),
            ExitCode.DELIVERY_INCOMPLETE,
            "cannot reach https://redflag.example.org: Connection refused",
        ),
        (
            lambda r: httpx.Response(404, json={"detail": "Not Found"}),
            ExitCode.DELIVERY_INCOMPLETE,
            "HTTP 404",
        ),
    ],
)
def test_register_failures_are_one_clear_line(
    host: Host, handler: Any, code: ExitCode, complaint: str
) -> None:
    console = Console()

    result = main(
        [
            "--root",
            str(host.root),
            "register",
            "--server",
            "https://redflag.example.org",
            "--enrollment-token",
            "t",
        ],
        runtime(console, handler),
    )

    assert result == code
    err = console.err.getvalue()
    assert err.count("\n") == 1
    assert complaint in err
    assert not Layout.at(host.root).identity_file.exists()


def test_bad_server_url_is_a_usage_error(host: Host) -> None:
    console = Console()
    code = main(
        ["--root", str(host.root), "register", "--server", "nope", "--enrollment-token", "t"],
        runtime(console),
    )
    assert code == ExitCode.USAGE
    assert "must start with http:// or https://" in console.err.getvalue()


def test_run_without_registration_says_how_to_register(host: Host) -> None:
    console = Console()

    code = main(["--root", str(host.root), "run", "--once"], runtime(console))

    assert code == ExitCode.NOT_AUTHORISED
    assert console.err.getvalue() == (
        "redflag-agent: error: not registered; run `redflag-agent register --server URL "
        "--enrollment-token TOKEN` first\n"
    )


def test_corrupt_identity_is_a_clear_local_error(host: Host) -> None:
    host.write("/var/lib/redflag/agent/reporting/identity.json", "{", 0o600)
    console = Console()

    code = main(["--root", str(host.root), "run", "--once"], runtime(console))

    assert code == ExitCode.LOCAL_STATE
    assert "is corrupt; register again with --force" in console.err.getvalue()


@pytest.mark.parametrize(
    ("prepare", "code"),
    [
        (lambda h: h.with_legacy_layout(), ExitCode.OK),
        (lambda h: h.with_current_layout(current_config()), ExitCode.OK),
        (lambda h: h.write("/etc/aggregator/config.json", "{", 0o600), ExitCode.MIGRATION_FAILED),
    ],
)
def test_migrate_exit_code_reflects_the_outcome(
    host: Host, prepare: Callable[[Host], object], code: ExitCode
) -> None:
    prepare(registered(host))
    console = Console()

    result = main(["--root", str(host.root), "migrate"], runtime(console, accept_all))

    assert result == code, console.err.getvalue()
    assert "delivered" in console.out.getvalue()


def test_partial_migration_exits_3(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    registered(host).with_legacy_layout()
    real_rmdir = os.rmdir
    legacy = str(host.path("/var/lib/aggregator"))

    def rmdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path) == legacy:
            raise PermissionError(13, "Permission denied", str(path))
        real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", rmdir)
    console = Console()

    code = main(["--root", str(host.root), "migrate"], runtime(console, accept_all))

    assert code == ExitCode.MIGRATION_PARTIAL
    assert "migration partial: migration completed with 1 warning" in console.err.getvalue()


def test_migrate_without_registration_keeps_reports_queued(host: Host) -> None:
    host.with_legacy_layout()
    console = Console()

    code = main(["--root", str(host.root), "migrate"], runtime(console))

    assert code == ExitCode.OK
    assert "not registered: 2 reports stay queued" in console.err.getvalue()


def test_report_update_spools_and_delivers_an_update_event(host: Host) -> None:
    registered(host)
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.extend(json.loads(request.content)["events"])
        return accept_all(request)

    console = Console()
    code = main(
        [
            "--root", str(host.root), "report-update", "installed", "--package", "openssl",
            "--from-version", "3.0.11-1~deb12u2", "--to-version", "3.0.15-1~deb12u1",
            "--package-manager", "apt",
        ],
        runtime(console, handler),
    )  # fmt: skip

    assert code == ExitCode.OK, console.err.getvalue()
    assert "recorded update_installed for openssl" in console.out.getvalue()
    assert "delivered 1 reports (accepted 1" in console.out.getvalue()
    [event] = sent
    assert (event["event_type"], event["status"], event["error_message"]) == (
        "update_installed",
        "success",
        None,
    )
    assert event["details"] == {
        "package": "openssl",
        "from_version": "3.0.11-1~deb12u2",
        "to_version": "3.0.15-1~deb12u1",
        "package_manager": "apt",
    }
    assert event["migration_from"] is None
    assert event["system_info"]["agent_version"] == "0.2.0"


def test_failed_update_carries_its_error_and_stays_queued_when_the_server_is_down(
    host: Host,
) -> None:
    registered(host)
    console = Console()
    refuse = lambda r: httpx.Response(503, json={"detail": "down"}, headers={"Retry-After": "999"})  # noqa: E731

    code = main(
        [
            "--root", str(host.root), "report-update", "failed", "--package", "nginx",
            "--error", "dpkg: error processing package nginx (--configure)",
        ],
        runtime(console, refuse),
    )  # fmt: skip

    assert code == ExitCode.OK
    assert "reports stay queued" in console.err.getvalue()
    status = json.loads(_status_json(host))
    assert status["queued"] == 1


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["failed", "--package", "curl"], "a failed update needs --error MESSAGE"),
        (["installed", "--package", "curl", "--error", "x"], "--error is only for a failed"),
    ],
)
def test_report_update_usage_errors_exit_2(host: Host, argv: list[str], complaint: str) -> None:
    console = Console()

    code = main(["--root", str(host.root), "report-update", *argv], runtime(console))

    assert code == ExitCode.USAGE
    assert complaint in console.err.getvalue()
    assert not Layout.at(host.root).reporting_dir.exists()


def _status_json(host: Host) -> str:
    console = Console()
    assert main(["--root", str(host.root), "status", "--json"], runtime(console)) == ExitCode.OK
    return console.out.getvalue()


def test_status_shows_identity_queue_and_last_outcomes_but_never_the_token(host: Host) -> None:
    registered(host).write("/etc/aggregator/config.json", "[]", 0o600)
    main(["--root", str(host.root), "migrate", "--max-wait", "0"], runtime(Console()))
    console = Console()

    code = main(["--root", str(host.root), "status"], runtime(console))

    out = console.out.getvalue()
    assert code == ExitCode.OK
    assert f"agent id:        {AGENT_ID}" in out
    assert "reports:         1 queued, 0 rejected, 0 dropped when the spool was full" in out
    assert "last check-in:   never" in out
    assert "last migration:  " in out
    assert "migration_detection_failed" in out
    assert "holds a JSON array, not an object" in out
    assert "last error:" in out
    assert "secret" not in out


def test_status_json_lists_rejected_events_with_the_reason(host: Host) -> None:
    registered(host).with_legacy_layout()

    def reject_first(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        return httpx.Response(
            200,
            json={
                "accepted": len(events) - 1,
                "duplicates": 0,
                "rejected": [
                    {"index": 0, "event_id": events[0]["event_id"], "error": "details: too deep"}
                ],
                "check_in_interval_seconds": 300,
                "server_time": datetime.now(UTC).isoformat(),
            },
        )

    main(["--root", str(host.root), "migrate"], runtime(Console(), reject_first))
    console = Console()

    main(["--root", str(host.root), "status", "--json"], runtime(console))

    status = json.loads(console.out.getvalue())
    assert status["queued"] == 0
    assert status["rejected"] == 1
    [rejected] = status["spools"][0]["rejected_events"]
    assert rejected["reason"] == "details: too deep"
    assert rejected["event_type"] == "migration_detection_success"
    assert status["last_checkin"]["rejected"] == 1
    assert status["last_migration"]["event_type"] == "migration_execution_success"


def test_run_once_reports_delivery_and_exit_code(host: Host) -> None:
    registered(host).with_legacy_layout()
    main(["--root", str(host.root), "migrate", "--max-wait", "0"], runtime(Console(), None))

    down = Console()
    refuse = lambda r: httpx.Response(503, json={"detail": "down"}, headers={"Retry-After": "999"})  # noqa: E731
    assert main(["--root", str(host.root), "run", "--once"], runtime(down, refuse)) == (
        ExitCode.DELIVERY_INCOMPLETE
    )
    assert "reports stay queued" in down.err.getvalue()

    up = Console()
    assert main(["--root", str(host.root), "run", "--once"], runtime(up, accept_all)) == 0
    assert "delivered 2 reports (accepted 2, duplicates 0, rejected 0); 0 queued" in (
        up.out.getvalue()
    )


def test_run_once_with_a_revoked_token_exits_5(host: Host) -> None:
    registered(host)
    console = Console()
    revoked = lambda r: httpx.Response(401, json={"detail": "agent token revoked"})  # noqa: E731

    code = main(["--root", str(host.root), "run", "--once"], runtime(console, revoked))

    assert code == ExitCode.NOT_AUTHORISED
    assert "agent token revoked" in console.err.getvalue()


def test_run_loop_checks_in_until_stopped(host: Host) -> None:
    registered(host)
    console = Console()
    rt = runtime(console, accept_all)
    waits: list[float] = []

    def wait(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        return len(waits) > 3

    rt.stop.wait = wait  # type: ignore[method-assign]

    code = main(["--root", str(host.root), "run"], rt)

    assert code == ExitCode.OK
    assert 0 <= waits[0] <= 30
    assert all(120 <= w <= 150 for w in waits[1:])


def test_internal_error_is_one_line_without_traceback(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "collect_status", broken)
    console = Console()

    code = main(["--root", str(host.root), "status"], runtime(console))

    assert code == ExitCode.MIGRATION_FAILED
    assert console.err.getvalue() == (
        "redflag-agent: internal error: ZeroDivisionError: division by zero "
        "(run with -vv for the traceback)\n"
    )


def test_real_command_line_never_prints_a_traceback(host: Host) -> None:
    result = run_agent(host.root, "run", "--once")

    assert result.returncode == ExitCode.NOT_AUTHORISED
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == "redflag-agent 0.2.0"


def test_run_loop_backs_off_further_while_the_server_stays_down(host: Host) -> None:
    registered(host)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    rt = runtime(Console(), refuse)
    rt.rng = random.Random(7)
    waits: list[float] = []

    def wait(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        return len(waits) > 8

    rt.stop.wait = wait  # type: ignore[method-assign]

    main(["--root", str(host.root), "run"], rt)

    backoffs = waits[1:]
    assert all(w <= 2**n for n, w in enumerate(backoffs))
    assert max(backoffs) > 8, "the delay must keep growing across check-ins"


def test_spool_that_fails_mid_run_hands_over_to_the_fallback(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered(host).with_legacy_layout()
    real_add = Spool.add

    def add(self: Spool, event: Any) -> None:
        if self.kind is SpoolKind.PRIMARY:
            raise sqlite3.OperationalError("database or disk is full")
        real_add(self, event)

    monkeypatch.setattr(Spool, "add", add)
    console = Console()

    code = main(["--root", str(host.root), "migrate"], runtime(console, accept_all))

    assert code == ExitCode.OK
    assert "delivered 2 reports" in console.out.getvalue()
    assert host.exists(f"/var/tmp/redflag-agent-{os.geteuid()}/spool.sqlite3")


def test_register_checks_the_state_directory_before_spending_the_token(
    host: Host, require_root: None
) -> None:
    # Port 9 (discard) is closed here: reaching the network would exit 4, not 6.
    result = run_agent(
        host.root,
        "register",
        "--server",
        "http://127.0.0.1:9",
        "--enrollment-token",
        "t",
        user=NOBODY,
    )

    assert result.returncode == ExitCode.LOCAL_STATE
    assert result.stderr == (
        "redflag-agent: error: cannot write the agent's state directory "
        f"{host.path('/var/lib/redflag/agent/reporting')}: Permission denied; "
        "run as the agent's user or fix the permissions\n"
    )


def test_a_second_migrate_waits_for_nobody_and_says_one_is_running(host: Host) -> None:
    host.with_legacy_layout()
    layout = Layout.at(host.root)
    layout.reporting_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(layout.reporting_dir / "migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    console = Console()
    try:
        code = main(["--root", str(host.root), "migrate"], runtime(console))
    finally:
        os.close(lock)

    assert code == ExitCode.LOCAL_STATE
    assert "another `redflag-agent migrate` is running" in console.err.getvalue()
    assert host.exists("/etc/aggregator/config.json")
    assert not host.exists("/etc/redflag")


def test_sigterm_ends_the_run_loop_cleanly(host: Host) -> None:
    registered(host)
    process = subprocess.Popen(
        [*agent_command(host.root, "run"), "-v"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        # The loop starts with a splay of up to 30 s: the signal arrives while it waits.
        assert "check-in loop started" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
