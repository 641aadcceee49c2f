"""Drives the demo fleet: runs the real agent for every host, a few processes at a time.

Thousands of hosts must not mean thousands of processes: each host's agent runs as a
short-lived `redflag-agent` command (`register`, `migrate`, `run --once`, `report-update`)
when its turn comes, and at most `concurrency` of them run at once. One thread polls them;
every agent gets its own process group, so stopping the fleet stops everything it started.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from demo.confinement import AgentUser, TinyDisk
from demo.fleet import HostKind, HostSpec
from demo.services import PROJECT_ROOT, signal_group
from demo.updates import PackageManager, Update

# How long one agent command may take before it is killed; delivery retries are bounded
# by --max-wait well below this.
TASK_TIMEOUT_SECONDS = 90.0
DELIVERY_MAX_WAIT = "10"
STOP_GRACE_SECONDS = 5.0
_REGISTERED = re.compile(r"registered as agent ([0-9a-f-]{36})")

# Agent exit codes (docs/AGENT.md) that end a `migrate` with a reported outcome.
MIGRATE_REPORTED = frozenset({0, 1, 3})
NOT_AUTHORISED = 5


class Action(StrEnum):
    REGISTER = "register"
    MIGRATE = "migrate"
    CHECK_IN = "run --once"
    REPORT_UPDATE = "report-update"


@dataclass
class FleetHost:
    """A planned host, where it lives, and how far the demo has driven it."""

    spec: HostSpec
    root: Path
    agent_id: str | None = None
    migrate_exit: int | None = None
    contacted: bool = False  # the agent reached the server at least once since start
    failures: int = 0
    package_manager: PackageManager | None = None

    @property
    def hostname(self) -> str:
        return self.spec.hostname

    @property
    def migrates(self) -> bool:
        return self.spec.kind not in (HostKind.NEVER_MIGRATES, HostKind.SILENT)

    @property
    def seeded(self) -> bool:
        """Enrolled and, for a host that migrates, migrated (whatever the outcome)."""
        return self.agent_id is not None and (self.migrate_exit is not None or not self.migrates)

    @property
    def settled(self) -> bool:
        """Seeded, and its reports reached the server (silent hosts never send any)."""
        return self.seeded and (self.contacted or self.spec.kind is HostKind.SILENT)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.spec.index,
            "hostname": self.hostname,
            "kind": self.spec.kind.value,
            "agent_id": self.agent_id,
            "migrate_exit": self.migrate_exit,
        }


@dataclass(frozen=True, slots=True)
class AgentRunner:
    """The command lines that run the real agent for a host, confined where it must be."""

    server_url: str
    user: AgentUser
    tiny_disk: TinyDisk | None
    python: str = sys.executable

    def command(self, host: FleetHost, action: Action, update: Update | None = None) -> list[str]:
        command = [self.python, "-m", "agent", "--root", str(host.root)]
        if action is Action.REGISTER:
            command += ["register", "--server", self.server_url]
        elif action is Action.MIGRATE:
            command += ["migrate", "--max-wait", DELIVERY_MAX_WAIT]
        elif action is Action.CHECK_IN:
            command += ["run", "--once", "--max-wait", DELIVERY_MAX_WAIT]
        else:
            assert update is not None
            command += ["report-update", *update.arguments(), "--max-wait", DELIVERY_MAX_WAIT]
        if host.spec.confined:
            command = [*self.user.prefix, *command]
        if action is Action.MIGRATE and host.spec.kind is HostKind.DISK_FULL:
            if self.tiny_disk is None:
                raise ValueError("a disk-full host needs a tiny disk")
            command = self.tiny_disk.wrap(host.root / "etc" / "redflag", command)
        return command


@dataclass
class DriverSettings:
    concurrency: int = 4
    interval: float = 60.0  # seconds between two check-ins of one host
    join_window: float = 90.0  # new hosts enrol spread over this many seconds
    update_share: float = 0.15  # check-ins that report a package update instead
    task_timeout: float = TASK_TIMEOUT_SECONDS


@dataclass(order=True)
class _Task:
    due: float
    seq: int
    host: FleetHost = field(compare=False)
    action: Action = field(compare=False)


@dataclass
class _Running:
    task: _Task
    process: subprocess.Popen[bytes]
    started: float
    log: Path
    offset: int


@dataclass
class FleetCounters:
    """What the driver did, for the summary line at the end."""

    by_action: dict[Action, int] = field(default_factory=dict)
    timed_out: int = 0
    not_authorised: int = 0

    def describe(self) -> str:
        total = sum(self.by_action.values())
        parts = ", ".join(f"{count} {action.value}" for action, count in self.by_action.items())
        timed_out = f"; {self.timed_out} timed out" if self.timed_out else ""
        return f"{total} agent commands ({parts}){timed_out}" if total else "no agent command"


class FleetDriver:
    """Schedules and runs the agents of a fleet until told to stop."""

    def __init__(
        self,
        hosts: Sequence[FleetHost],
        runner: AgentRunner,
        *,
        enrollment_token: str | None,
        log_dir: Path,
        settings: DriverSettings | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_seeded: Callable[[FleetHost], None] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.hosts = list(hosts)
        self.runner = runner
        self.enrollment_token = enrollment_token
        self.log_dir = log_dir
        self.settings = settings or DriverSettings()
        self.rng = rng or random.Random()
        self.clock = clock
        self.on_seeded = on_seeded
        self.environment = dict(os.environ if environment is None else environment)
        self.counters = FleetCounters()
        self._queue: list[_Task] = []
        self._running: list[_Running] = []
        self._seq = 0
        self._changed = False
        for host in self.hosts:
            if host.package_manager is None:
                host.package_manager = PackageManager(
                    host.spec.os.package_manager, random.Random(host.spec.seed)
                )

    # --- scheduling -------------------------------------------------------------------------

    def start(self) -> None:
        """Queue each host's first step: new hosts join spread over the join window."""
        now = self.clock()
        joining = [host for host in self.hosts if not host.seeded]
        self.rng.shuffle(joining)
        spacing = self.settings.join_window / max(1, len(joining))
        for position, host in enumerate(joining):
            self._schedule(host, self._seeding_action(host), now + position * spacing)
        for host in self.hosts:
            if host.seeded and host.spec.kind is not HostKind.SILENT:
                first = self.rng.uniform(0, min(self.settings.interval, 30.0))
                self._schedule(host, Action.CHECK_IN, now + first)

    def _seeding_action(self, host: FleetHost) -> Action:
        return Action.REGISTER if host.agent_id is None else Action.MIGRATE

    def _schedule(self, host: FleetHost, action: Action, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Task(due, self._seq, host, action))

    def _schedule_check_in(self, host: FleetHost, *, first: bool = False) -> None:
        interval = self.settings.interval
        delay = (
            self.rng.uniform(0.3, 1.0) * interval
            if first
            else interval + self.rng.uniform(0, min(30.0, interval / 4))
        )
        self._schedule(host, Action.CHECK_IN, self.clock() + delay)

    def _retry(self, task: _Task) -> None:
        task.host.failures += 1
        delay = min(300.0, 5.0 * 2 ** min(task.host.failures, 6))
        self._schedule(task.host, task.action, self.clock() + delay)

    # --- running ----------------------------------------------------------------------------

    def step(self) -> float:
        """Collect finished agents and start due ones; the seconds until the next is due."""
        self._collect()
        now = self.clock()
        while self._queue and self._queue[0].due <= now:
            if len(self._running) >= self.settings.concurrency:
                return 0.05
            self._launch(heapq.heappop(self._queue))
        if self._running:
            return 0.05
        return max(0.05, self._queue[0].due - now) if self._queue else 1.0

    def run(self, stop: threading.Event, *, until: Callable[[], bool] | None = None) -> bool:
        """Drive the fleet until `stop` is set, or until `until()` holds (then True)."""
        while not stop.is_set():
            wait = self.step()
            if until is not None and until():
                return True
            stop.wait(min(wait, 0.25))
        return False

    @property
    def settled(self) -> bool:
        """Every host enrolled, migrated where it migrates, and heard by the server."""
        return all(host.settled for host in self.hosts)

    @property
    def idle(self) -> bool:
        """No agent running and none due now."""
        return not self._running and not (self._queue and self._queue[0].due <= self.clock())

    def report_update(self, host: FleetHost) -> None:
        """Have the host's package manager report its next update at once."""
        self._schedule(host, Action.REPORT_UPDATE, self.clock())

    def _launch(self, task: _Task) -> None:
        host, action = task.host, task.action
        if action is Action.CHECK_IN and self.rng.random() < self.settings.update_share:
            action = task.action = Action.REPORT_UPDATE
        update = None
        if action is Action.REPORT_UPDATE:
            assert host.package_manager is not None
            update = host.package_manager.next_update()
        environment = dict(self.environment)
        if action is Action.REGISTER:
            if not self.enrollment_token:
                raise RuntimeError(f"{host.hostname} needs an enrolment token to register")
            environment["REDFLAG_ENROLLMENT_TOKEN"] = self.enrollment_token
        command = self.runner.command(host, action, update)
        log = self.log_dir / f"{host.hostname}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as output:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            output.write(f"{stamp} $ redflag-agent {action.value}\n".encode())
            output.flush()
            offset = output.tell()
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append(_Running(task, process, self.clock(), log, offset))
        self.counters.by_action[action] = self.counters.by_action.get(action, 0) + 1

    def _collect(self) -> None:
        still: list[_Running] = []
        for running in self._running:
            code = running.process.poll()
            if code is None and self.clock() - running.started > self.settings.task_timeout:
                signal_group(running.process.pid, signal.SIGKILL)
                code = running.process.wait()
                self.counters.timed_out += 1
                _append(running.log, f"killed after {self.settings.task_timeout:.0f} s\n")
                self._retry(running.task)
                continue
            if code is None:
                still.append(running)
                continue
            _append(running.log, f"exit {code}\n")
            self._finished(running.task, code, _read_from(running.log, running.offset))
        self._running = still

    def _finished(self, task: _Task, code: int, output: str) -> None:
        host, action = task.host, task.action
        was_seeded = host.seeded
        if action is Action.REGISTER:
            match = _REGISTERED.search(output)
            if match is None:
                self._retry(task)
                return
            host.agent_id = match.group(1)
            host.failures = 0
            if host.spec.kind is HostKind.NEVER_MIGRATES:
                self._schedule(host, Action.CHECK_IN, self.clock())
            elif host.migrates:
                self._schedule(host, Action.MIGRATE, self.clock())
        elif action is Action.MIGRATE:
            if code not in MIGRATE_REPORTED:
                self._retry(task)
                return
            host.migrate_exit = code
            host.failures = 0
            host.contacted = host.contacted or "stay queued" not in output
            self._schedule_check_in(host, first=True)
        else:
            if code == 0:
                host.contacted = True
            elif code == NOT_AUTHORISED:
                self.counters.not_authorised += 1
            self._schedule_check_in(host)
            return
        self._changed = True
        if host.seeded and not was_seeded and self.on_seeded is not None:
            self.on_seeded(host)

    def take_changed(self) -> bool:
        """Whether any host enrolled or migrated since the last call."""
        changed, self._changed = self._changed, False
        return changed

    # --- stopping ---------------------------------------------------------------------------

    def stop(self) -> int:
        """Interrupt every running agent (a migration rolls back on SIGINT), then kill.

        Returns how many were still running.
        """
        running = list(self._running)
        for item in running:
            signal_group(item.process.pid, signal.SIGINT)
        deadline = self.clock() + STOP_GRACE_SECONDS
        for item in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                item.process.wait(timeout=max(0.0, deadline - self.clock()))
        for item in running:
            signal_group(item.process.pid, signal.SIGKILL)
            code = item.process.wait()
            _append(item.log, f"stopped with the demo (exit {code})\n")
        self._running = []
        self._queue = []
        return len(running)

    def state(self) -> list[dict[str, Any]]:
        return [host.to_json() for host in self.hosts]


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as log:
        log.write(text)


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read(64 * 1024).decode("utf-8", "replace")
