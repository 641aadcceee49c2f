"""`redflag-demo` as a user runs it: it starts everything, and stopping leaves nothing behind."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.layouts import remove_tree
from demo.services import ensure_port_free, marked_processes, signal_group
from demo.supervisor import CONSOLE_APP
from tests.demo.conftest import free_port, sandbox_directory

pytestmark = pytest.mark.slow

TEST_MARKER = "REDFLAG_DEMO_TEST_RUN"
REPO = Path(__file__).resolve().parents[2]


class Demo:
    """Command lines for one sandboxed demo directory, and a check for leftovers."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.marker = uuid.uuid4().hex
        self.api_port = free_port()
        self.console_port = free_port()
        self.environment = {
            key: value for key, value in os.environ.items() if not key.startswith("REDFLAG_")
        }
        self.environment[TEST_MARKER] = self.marker

    def command(self, *arguments: str) -> list[str]:
        return [
            sys.executable, "-m", "demo.cli",
            "--api-port", str(self.api_port), "--console-port", str(self.console_port),
            "--state-dir", str(self.base / "state"),
            "--database-url", f"sqlite:///{self.base}/redflag.db",
            *arguments,
        ]  # fmt: skip

    def leftovers(self) -> list[int]:
        return marked_processes(self.marker, variable=TEST_MARKER)

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            signal_group(pid, signal.SIGKILL)


@pytest.fixture
def demo() -> Iterator[Demo]:
    sandbox = Demo(sandbox_directory("redflag-demo-run-"))
    try:
        yield sandbox
    finally:
        sandbox.kill_leftovers()
        remove_tree(sandbox.base)


@dataclass
class FirstRun:
    demo: Demo
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def ran_once() -> Iterator[FirstRun]:
    """A demo directory after one short run of three hosts, shared by this module's tests."""
    demo = Demo(sandbox_directory("redflag-demo-run-"))
    try:
        result = subprocess.run(
            demo.command("--hosts", "3", "--duration", "8"),
            cwd=demo.base,
            env=demo.environment,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        yield FirstRun(demo, result)
    finally:
        demo.kill_leftovers()
        remove_tree(demo.base)


def enrolled_hosts(demo: Demo) -> dict[str, str]:
    manifest = json.loads((demo.base / "state" / "fleet.json").read_text())
    return {host["hostname"]: host["agent_id"] for host in manifest["hosts"] if host["agent_id"]}


def read_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """The process's stdout up to and including the line that contains `text`."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if not ready:
            continue
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never printed {text!r}; printed:\n{''.join(seen)}")


def test_demo_runs_for_its_duration_then_stops_everything_it_started(
    ran_once: FirstRun,
) -> None:
    demo, first = ran_once.demo, ran_once.result

    assert first.returncode == 0, first.stderr
    assert "RedFlag demo is running" in first.stdout
    assert f"ingest API  http://127.0.0.1:{demo.api_port}" in first.stdout
    if CONSOLE_APP.is_file():
        assert f"console     http://127.0.0.1:{demo.console_port}" in first.stdout
    else:
        assert "console/app.py does not exist yet" in first.stdout
    assert "no process is left" in first.stdout
    assert demo.leftovers() == []
    ensure_port_free("127.0.0.1", demo.api_port, "--api-port")
    ensure_port_free("127.0.0.1", demo.console_port, "--console-port")
    password = demo.base / "state" / "console-password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert f"password {password.read_text().strip()}" in first.stdout
    assert "the fleet ran" in first.stdout
    manifest = json.loads((demo.base / "state" / "fleet.json").read_text())
    assert [host["index"] for host in manifest["hosts"]] == [0, 1, 2]


def test_a_second_run_reuses_the_fleet_and_sigterm_stops_everything(ran_once: FirstRun) -> None:
    demo = ran_once.demo
    enrolled = enrolled_hosts(demo)
    password = (demo.base / "state" / "console-password").read_text().strip()
    second = subprocess.Popen(
        demo.command("--hosts", "3"),
        cwd=demo.base,
        env=demo.environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = read_until(second, "Press Ctrl-C", timeout=120)
        second.send_signal(signal.SIGTERM)
        rest, errors = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            signal_group(second.pid, signal.SIGKILL)
            second.kill()
            second.wait()

    assert second.returncode == 0, errors
    assert "laying out" not in printed
    assert f"password {password}" in printed
    assert "no process is left" in rest
    assert demo.leftovers() == []
    assert enrolled_hosts(demo).items() >= enrolled.items()


def test_reset_removes_the_fleet_and_its_agents_from_the_database(ran_once: FirstRun) -> None:
    demo = ran_once.demo
    enrolled = enrolled_hosts(demo)

    reset = subprocess.run(
        demo.command("--hosts", "3", "--duration", "0", "--no-console", "--reset"),
        cwd=demo.base,
        env=demo.environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert reset.returncode == 0, reset.stderr
    assert f"reset: removed {len(enrolled)} demo agents and their events" in reset.stdout
    assert "laying out 3 sandbox hosts" in reset.stdout
    assert enrolled_hosts(demo) == {}
    assert demo.leftovers() == []


def test_a_port_in_use_is_one_clear_line_and_starts_nothing(demo: Demo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", demo.api_port))
        taken.listen()

        result = subprocess.run(
            demo.command("--hosts", "1"),
            cwd=demo.base,
            env=demo.environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 1
    assert result.stderr == (
        f"redflag-demo: error: port {demo.api_port} on 127.0.0.1 is already in use "
        "(Address already in use); stop what uses it or choose another port with --api-port\n"
    )
    assert demo.leftovers() == []
    assert not (demo.base / "state" / "hosts").exists()


def test_a_reader_that_goes_away_does_not_keep_the_demo_from_cleaning_up(demo: Demo) -> None:
    process = subprocess.Popen(
        demo.command("--hosts", "1", "--duration", "3", "--no-console"),
        cwd=demo.base,
        env=demo.environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        process.stdout.close()  # like `redflag-demo | head -1`

        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert demo.leftovers() == []
    ensure_port_free("127.0.0.1", demo.api_port, "--api-port")
