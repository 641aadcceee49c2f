"""The seed's test plan for real: the agent against the real ingest API and database.

Failures are produced for real wherever the machine allows it: permissions by running the
agent as an unprivileged user (uid 65534), a full disk with a tiny tmpfs, crashes with
SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from agent.cli import ExitCode, Runtime, main
from agent.delivery import Deliverer
from agent.identity import load_identity
from agent.layout import Layout
from agent.spool import Spool, SpoolKind
from models.settings import Settings
from tests.agent.conftest import LiveServer, stored_events
from tests.agent.sandbox import (
    NOBODY,
    REPO,
    FakeClock,
    Host,
    agent_command,
    current_config,
    legacy_config,
    run_agent,
    snapshot,
)
from tests.agent.sandbox import sample_event as event


def cli(
    host: Host, *args: str, http: httpx.Client | None = None, clock: FakeClock | None = None
) -> tuple[int, str, str]:
    """Run the command line in process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    clock = clock or FakeClock()
    runtime = Runtime(
        http=http,
        now=clock.now,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        stdout=out,
        stderr=err,
    )
    code = main(["--root", str(host.root), *args], runtime)
    return code, out.getvalue(), err.getvalue()


def register(host: Host, server: str, token: str, http: httpx.Client | None = None) -> None:
    code, _, err = cli(host, "register", "--server", server, "--enrollment-token", token, http=http)
    assert code == ExitCode.OK, err


def by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["event_type"]: event for event in events}


def step_statuses(details: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in details["steps"]}


def loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# --- in process, through FastAPI's TestClient ----------------------------------------------


def test_legacy_layout_migrates_and_both_events_reach_the_database(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    host.with_legacy_layout().with_machine_id()
    register(host, "http://testserver", enrollment_token(), api)

    code, out, err = cli(host, "migrate", http=api)

    assert code == ExitCode.OK, err
    assert "delivered 2 reports (accepted 2, duplicates 0, rejected 0); 0 queued" in out
    events = by_type(stored_events(engine))
    assert set(events) == {"migration_detection_success", "migration_execution_success"}
    done = events["migration_execution_success"]
    assert done["migration_from"] == "<=0.1.18 (config v0, /etc/aggregator)"
    assert done["migration_to"] == "0.2.0 (config v5, /etc/redflag/agent)"
    system_info = loaded(done["system_info"])
    assert system_info["hostname"] == "web-01"
    assert system_info["machine_id"] == "0123456789abcdef0123456789abcdef"
    assert set(step_statuses(loaded(done["details"])).values()) == {"done"}
    assert host.read_json("/etc/redflag/agent/config.json")["version"] == 5


def test_invalid_config_gives_detection_failed_in_the_database_naming_the_file(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    config = host.with_legacy_layout().write("/etc/aggregator/config.json", '{"agent_id": ', 0o600)
    register(host, "http://testserver", enrollment_token(), api)

    code, _, err = cli(host, "migrate", http=api)

    assert code == ExitCode.MIGRATION_FAILED
    assert f"migration detection failed: config {config} is not valid JSON" in err
    [stored] = stored_events(engine)
    assert stored["event_type"] == "migration_detection_failed"
    assert stored["status"] == "failed"
    assert str(config) in stored["error_message"]
    assert loaded(stored["details"])["path"] == str(config)


def test_host_that_needs_nothing_reports_not_needed(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    host.with_current_layout(current_config())
    register(host, "http://testserver", enrollment_token(), api)

    code, out, _ = cli(host, "migrate", http=api)

    assert code == ExitCode.OK
    assert "no migration needed" in out
    assert [e["event_type"] for e in stored_events(engine)] == ["migration_detection_not_needed"]


def test_update_events_sit_beside_migration_events_without_changing_the_state(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    host.with_current_layout(current_config())
    register(host, "http://testserver", enrollment_token(), api)
    cli(host, "migrate", http=api)

    code, _, err = cli(
        host, "report-update", "failed", "--package", "nginx", "--from-version", "1.22.1",
        "--to-version", "1.22.1-9+deb12u1", "--error", "post-installation script failed",
        http=api,
    )  # fmt: skip

    assert code == ExitCode.OK, err
    stored = by_type(stored_events(engine))
    assert set(stored) == {"migration_detection_not_needed", "update_failed"}
    assert stored["update_failed"]["status"] == "failed"
    assert stored["update_failed"]["error_message"] == "post-installation script failed"
    with engine.connect() as connection:
        state, category = connection.execute(
            sa.text(
                "SELECT a.migration_state, e.category FROM agent a JOIN update_events e "
                "ON e.agent_id = a.id WHERE e.event_type = 'update_failed'"
            )
        ).one()
    assert (state, category) == ("not_needed", "update")


def test_disk_full_is_reported_with_errno_and_step_and_rolled_back(
    host: Host,
    api: TestClient,
    engine: Engine,
    enrollment_token: Callable[[], str],
    tiny_tmpfs: Callable[[Path], None],
) -> None:
    host.with_legacy_layout(legacy_config(package_cache="p" * 100_000))
    tiny_tmpfs(host.path("/etc/redflag"))
    register(host, "http://testserver", enrollment_token(), api)
    before = snapshot(host.root)

    code, _, err = cli(host, "migrate", http=api)

    assert code == ExitCode.MIGRATION_FAILED
    assert "write_config failed: [Errno 28] No space left on device" in err
    assert snapshot(host.root) == before
    failed = by_type(stored_events(engine))["migration_execution_failed"]
    details = loaded(failed["details"])
    assert (details["failed_step"], details["errno"], details["errno_name"]) == (
        "write_config",
        28,
        "ENOSPC",
    )
    assert details["path"] == str(host.path("/etc/redflag/agent/config.json"))
    assert details["rollback"]["status"] == "complete"
    assert "/etc/redflag/agent" in loaded(failed["system_info"])["disk_free_bytes"]


def test_server_down_during_migrate_then_run_once_delivers_everything_once(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    host.with_legacy_layout()
    register(host, "http://testserver", enrollment_token(), api)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    down = httpx.Client(transport=httpx.MockTransport(refuse))
    clock = FakeClock()
    code, _, err = cli(host, "migrate", "--max-wait", "20", http=down, clock=clock)

    assert code == ExitCode.OK
    assert "reports stay queued: cannot reach http://testserver" in err
    assert clock.sleeps, "delivery should have retried within its budget"
    assert stored_events(engine) == []

    code, out, _ = cli(host, "run", "--once", http=api)
    assert code == ExitCode.OK
    assert "delivered 2 reports (accepted 2, duplicates 0" in out
    code, out, _ = cli(host, "run", "--once", http=api)
    assert "delivered 0 reports" in out

    stored = stored_events(engine)
    assert sorted(e["event_type"] for e in stored) == [
        "migration_detection_success",
        "migration_execution_success",
    ]
    assert len({e["event_id"] for e in stored}) == 2


@pytest.mark.parametrize(
    "server_settings",
    [Settings(rate_limit_per_minute=1, rate_limit_burst=1)],
)
def test_429_from_the_server_delays_the_next_attempt_by_retry_after(
    host: Host, api: TestClient, engine: Engine, enrollment_token: Callable[[], str]
) -> None:
    register(host, "http://testserver", enrollment_token(), api)
    clock = FakeClock()
    # The server's rate limiter runs on the same fake time as the agent.
    api.app.state.runtime.rate_limiter.clock = clock.monotonic  # type: ignore[attr-defined]
    retry_after: list[float] = []
    api.event_hooks["response"] = [
        lambda response: (
            retry_after.append(float(response.headers["Retry-After"]))
            if response.status_code == 429
            else None
        )
    ]
    layout = Layout.at(host.root)
    identity = load_identity(layout)
    assert identity is not None
    spool = Spool(None, kind=SpoolKind.MEMORY)
    spool.add(event("first"))
    spool.add(event("second"))
    from agent.client import IngestClient

    deliverer = Deliverer(
        IngestClient(identity.server_url, http=api, now=clock.now),
        identity,
        system_info=lambda: {},
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        max_batch_events=1,
    )

    result = deliverer.deliver(spool, max_wait=600)

    assert result.complete
    assert retry_after == [60.0]
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] >= retry_after[0]
    assert len(stored_events(engine)) == 2


# --- real processes against a real server --------------------------------------------------


def register_for(host: Host, live_server: LiveServer, user: int) -> None:
    """Register, then hand the whole host to `user`, as if it had registered itself."""
    register(host, live_server.url, live_server.tokens())
    host.chown_all(user)


def test_permission_failure_as_an_unprivileged_user_is_reported_and_rolled_back(
    host: Host, live_server: LiveServer, require_root: None
) -> None:
    host.with_legacy_layout().with_machine_id()
    register_for(host, live_server, NOBODY)
    # The agent's user may not create /etc/redflag: the classic failure in the field.
    os.chown(host.path("/etc"), 0, 0)
    before = snapshot(host.root)

    result = run_agent(host.root, "migrate", user=NOBODY)

    assert result.returncode == ExitCode.MIGRATION_FAILED
    assert "Traceback" not in result.stderr
    assert "directory_migration failed: [Errno 13] Permission denied" in result.stderr
    assert snapshot(host.root) == before
    failed = by_type(stored_events(live_server.engine))["migration_execution_failed"]
    details = loaded(failed["details"])
    assert details["failed_step"] == "directory_migration"
    assert (details["errno"], details["errno_name"]) == (13, "EACCES")
    assert details["path"] == str(host.path("/etc/redflag"))
    assert details["exception_type"] == "PermissionError"
    assert details["backup_path"].startswith(str(host.path("/var/lib/redflag/agent/")))
    assert details["backup_retained"] is False
    assert "PermissionError" in details["traceback"]
    assert step_statuses(details) == {
        "backup": "rolled_back",
        "directory_migration": "failed",
        "config_migration": "skipped",
        "config_v5_migration": "skipped",
        "security_hardening": "skipped",
        "write_config": "skipped",
        "validate": "skipped",
        "remove_legacy": "skipped",
    }
    assert loaded(failed["system_info"])["euid"] == NOBODY
    assert "rolled back" in failed["error_message"]


def test_unreadable_directory_as_an_unprivileged_user_gives_detection_failed(
    host: Host, live_server: LiveServer, require_root: None
) -> None:
    host.with_legacy_layout()
    register_for(host, live_server, NOBODY)
    locked = host.path("/var/lib/aggregator/history")
    os.chown(locked, 0, 0)
    os.chmod(locked, 0o700)

    result = run_agent(host.root, "migrate", user=NOBODY)

    assert result.returncode == ExitCode.MIGRATION_FAILED
    [stored] = stored_events(live_server.engine)
    assert stored["event_type"] == "migration_detection_failed"
    assert stored["error_message"] == (
        f"cannot read directory {locked}: [Errno 13] Permission denied"
    )
    assert loaded(stored["details"])["errno_name"] == "EACCES"


def test_partial_success_as_an_unprivileged_user_is_reported_with_warnings(
    host: Host, live_server: LiveServer, require_root: None
) -> None:
    host.with_legacy_layout()
    register_for(host, live_server, NOBODY)
    # The user owns /var/lib/aggregator but not /var/lib: it can empty it, not remove it.
    os.chown(host.path("/var/lib"), 0, 0)

    result = run_agent(host.root, "migrate", user=NOBODY)

    assert result.returncode == ExitCode.MIGRATION_PARTIAL, result.stderr
    partial = by_type(stored_events(live_server.engine))["migration_execution_partial"]
    assert partial["status"] == "warning"
    assert loaded(partial["details"])["warnings"] == [
        "could not remove legacy /var/lib/aggregator: [Errno 13] Permission denied"
    ]
    assert host.read_json("/etc/redflag/agent/config.json")["version"] == 5


def test_unwritable_state_directory_still_gets_the_report_out(
    host: Host, live_server: LiveServer, require_root: None
) -> None:
    host.with_legacy_layout()
    register_for(host, live_server, NOBODY)
    for directory in ("/var/lib/redflag/agent", "/var/lib/redflag/agent/reporting"):
        os.chown(host.path(directory), 0, 0)
        os.chmod(host.path(directory), 0o755)

    result = run_agent(host.root, "migrate", user=NOBODY)

    assert result.returncode == ExitCode.MIGRATION_FAILED
    fallback = host.path(f"/var/tmp/redflag-agent-{NOBODY}/spool.sqlite3")
    assert f"reports are spooled in {fallback}" in result.stderr
    assert "delivered 2 reports" in result.stdout
    failed = by_type(stored_events(live_server.engine))["migration_execution_failed"]
    details = loaded(failed["details"])
    assert details["failed_step"] == "backup"
    assert details["errno_name"] == "EACCES"
    assert details["report_spool"]["kind"] == "fallback"
    assert details["report_spool"]["location"] == str(fallback)


def test_fallback_spool_is_drained_by_the_next_normal_run(
    host: Host, live_server: LiveServer, require_root: None
) -> None:
    host.with_legacy_layout()
    register_for(host, live_server, NOBODY)
    for directory in ("/var/lib/redflag/agent", "/var/lib/redflag/agent/reporting"):
        os.chown(host.path(directory), 0, 0)
        os.chmod(host.path(directory), 0o755)
    live_server.gate.mode = "unavailable"

    result = run_agent(host.root, "migrate", "--max-wait", "0", user=NOBODY)

    assert result.returncode == ExitCode.MIGRATION_FAILED
    assert "HTTP 503" in result.stderr
    status = json.loads(cli(host, "status", "--json")[1])
    assert status["queued"] == 2
    assert status["spools"][0]["kind"] == "fallback"

    # The next normal run, as root, after the admin fixed nothing at all.
    live_server.gate.mode = "open"
    code, drained, err = cli(host, "run", "--once")
    again = cli(host, "run", "--once")[1]

    assert code == ExitCode.OK, err
    assert "delivered 2 reports (accepted 2" in drained
    assert "delivered 0 reports" in again
    stored = stored_events(live_server.engine)
    assert sorted(e["event_type"] for e in stored) == [
        "migration_detection_success",
        "migration_execution_failed",
    ]
    status = json.loads(cli(host, "status", "--json")[1])
    assert status["queued"] == 0
    assert status["last_migration"]["event_type"] == "migration_execution_failed"


@pytest.mark.parametrize("hold", ["hold_before_store", "hold_after_store"])
def test_agent_killed_between_spooling_and_ack_delivers_each_event_exactly_once(
    host: Host, live_server: LiveServer, hold: str
) -> None:
    host.with_legacy_layout()
    register(host, live_server.url, live_server.tokens())
    live_server.gate.mode = hold
    process = subprocess.Popen(
        agent_command(host.root, "migrate", "--max-wait", "0"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert live_server.gate.held.wait(timeout=30), "the agent never checked in"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    spool = Spool(Layout.at(host.root).reporting_dir / "spool.sqlite3", kind=SpoolKind.PRIMARY)
    spooled = [e.event_id for e in spool.pending(limit=100, max_bytes=10**7)]
    spool.close()
    assert len(spooled) == 2
    stored_before = len(stored_events(live_server.engine))
    assert stored_before == (2 if hold == "hold_after_store" else 0)

    live_server.gate.mode = "open"
    code, out, err = cli(host, "run", "--once")

    assert code == ExitCode.OK, err
    expected = (
        "accepted 0, duplicates 2" if hold == "hold_after_store" else "accepted 2, duplicates 0"
    )
    assert expected in out
    stored = stored_events(live_server.engine)
    assert sorted(uuid.UUID(str(e["event_id"])) for e in stored) == sorted(map(uuid.UUID, spooled))
