"""The server-side processes of the demo: the ingest API and the console, started and stopped.

Each runs in its own process group so that stopping it stops everything it spawned, and
every process the demo starts carries a marker in its environment so that the supervisor
can prove, at the end, that none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_MARKER = "REDFLAG_DEMO_RUN"
HEALTH_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 10.0


class ServiceError(Exception):
    """A service could not be started or used; the message is one line for the user."""


def ensure_port_free(host: str, port: int, option: str) -> None:
    """Fail with one clear line when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same as the servers: a port in TIME_WAIT is free, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServiceError(
                f"port {port} on {host} is already in use ({exc.strerror}); stop what uses it "
                f"or choose another port with {option}"
            ) from None


def python_module(module: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", module, *arguments]


def run_command(command: Sequence[str], *, what: str, environment: dict[str, str]) -> str:
    """Run a short command line to completion; its stdout, or one line saying why it failed."""
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise ServiceError(f"{what} failed: {reason}")
    return result.stdout


@dataclass
class Service:
    """A long-running process in its own process group, with a health URL."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    health_url: str

    def wait_healthy(
        self, *, timeout: float = HEALTH_TIMEOUT_SECONDS, stopping: Callable[[], bool]
    ) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if stopping():
                    raise ServiceError(f"interrupted while waiting for the {self.name}")
                code = self.process.poll()
                if code is not None:
                    raise ServiceError(
                        f"the {self.name} exited with code {code}: {last_line(self.log)} "
                        f"(log: {self.log})"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.health_url).status_code == 200:
                        return
                time.sleep(0.2)
        raise ServiceError(
            f"the {self.name} did not answer {self.health_url} within {timeout:.0f} s "
            f"(log: {self.log})"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the process group, then SIGKILL whatever did not stop in time."""
        signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_service(
    name: str,
    command: Sequence[str],
    *,
    environment: dict[str, str],
    log: Path,
    health_url: str,
) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, process, log, health_url)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group, if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def last_line(path: Path) -> str:
    try:
        lines = path.read_bytes()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def marked_processes(marker: str, *, variable: str = RUN_MARKER) -> list[int]:
    """Live processes (other than this one) whose environment has `variable=marker`."""
    needle = f"{variable}={marker}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in environment.split(b"\0"):
            found.append(int(entry.name))
    return found
