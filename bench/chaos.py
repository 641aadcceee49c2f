"""`python -m bench.chaos`: kill the API and the agents over and over, then prove that every
event an agent spooled was stored exactly once (DESIGN section 8, docs/RELIABILITY.md).

A real `redflag-server serve` process on a free port of 127.0.0.1 and a fresh database
(SQLite or PostgreSQL); N real agents (`bench.chaos_agent`), each on its own sandboxed host,
reporting update events and migrations through the agent's own spool and delivery code.
While they run, the harness kills the server with SIGKILL and restarts it at random
moments, kills agents with SIGKILL in the middle of a delivery and starts them again, stops
the server for whole outages and, on PostgreSQL, restarts PostgreSQL itself. Then, with the
server up, the agents drain their spools (bounded in time), and each agent's ledger of the
event ids it spooled is compared with the `update_events` table: every id there exactly
once, and nothing else. The exit status is non-zero if anything is missing, duplicated or
unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import sqlalchemy as sa

from agent.cli import Runtime, collect_status
from agent.cli import main as agent_main
from agent.identity import load_identity
from agent.layout import Layout
from agent.spool import spool_files
from bench.report import REPO, environment
from bench.server import (
    BENCH_SERVER_ENV,
    DEFAULT_PG_ADMIN_URL,
    HOST,
    free_port,
    postgres_unreachable,
    postgres_version,
    server_command,
)
from demo.layouts import Host
from models.database import create_db_engine
from models.tables import EVENT_TABLE

SERVER_START_TIMEOUT = 60.0
# What the server and the agents import, copied for the run (snapshot_code).
CODE_PACKAGES = ("agent", "bench", "ingest_api", "models")
READY_TIMEOUT = 180.0
PG_RESTART_TIMEOUT = 120.0
PROGRESS_SECONDS = 30.0
# What agents may meet in a run: stored (200), rate-limited (429), the database gone (503),
# the server gone (no connection).
EXPLAINED_ANSWERS = frozenset({"200", "429", "503", "net"})


class ChaosError(RuntimeError):
    """The run could not be carried out (not a verdict on the system under test)."""


@dataclass
class ChaosOptions:
    agents: int = 10
    # Hosts where a second agent process shares the spool, as a `run` service and a package
    # manager's `report-update` hook do.
    shared_hosts: int = 2
    server_kills: int = 50
    agent_kills: int = 50
    spool_kills: int = 10
    outages: int = 2
    outage_seconds: float = 60.0
    pg_restarts: int = 0
    backend: str = "sqlite"
    # Length of the chaos phase; None: long enough for the kills and outages asked for.
    duration: float | None = None
    drain_timeout: float = 180.0
    seed: int | None = None
    # Seconds an agent waits between two commands, and at most per delivery attempt.
    pace: tuple[float, float] = (0.5, 2.0)
    agent_max_wait: float = 3.0
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    workdir: Path | None = None
    keep: bool = False

    def counts(self) -> tuple[int, ...]:
        return (
            self.server_kills,
            self.agent_kills,
            self.spool_kills,
            self.outages,
            self.pg_restarts,
            self.shared_hosts,
        )

    def chaos_seconds(self) -> float:
        if self.duration is not None:
            return self.duration
        return self.outages * self.outage_seconds + 4.0 * max(self.server_kills, 1) + 10.0


@dataclass
class ChaosResult:
    backend: str
    agents: int
    seed: int
    processes: int = 0
    spooled: int = 0
    stored: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    cut_short: int = 0
    server_kills: int = 0
    server_kills_in_flight: int = 0
    server_restart_seconds: list[float] = field(default_factory=list)
    agent_kills: int = 0
    agent_kill_phases: Counter[str] = field(default_factory=Counter)
    outages: list[float] = field(default_factory=list)
    pg_restarts: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    duplicates_absorbed: int = 0
    server_tracebacks: int = 0
    left_queued: int = 0
    left_rejected: int = 0
    left_dropped: int = 0
    chaos_seconds: float = 0.0
    drain_seconds: float = 0.0
    wall_seconds: float = 0.0
    workdir: str = ""

    @property
    def wrong_answers(self) -> int:
        """Answers no fault explains: a 500, or a refusal other than 429 (each one a bug)."""
        return sum(n for status, n in self.answers.items() if status not in EXPLAINED_ANSWERS)

    @property
    def ok(self) -> bool:
        return (
            self.spooled > 0
            and not self.missing
            and not self.duplicated
            and not self.unexpected
            and self.wrong_answers == 0
            and self.left_queued == self.left_rejected == self.left_dropped == 0
        )

    def rows(self) -> list[tuple[str, str]]:
        phases = self.agent_kill_phases
        restart = (
            f", restart median {statistics.median(self.server_restart_seconds):.2f} s"
            if self.server_restart_seconds
            else ""
        )
        return [
            ("events spooled (agents' ledgers)", f"{self.spooled:,}"),
            ("events stored (update_events)", f"{self.stored:,}"),
            ("missing", f"{len(self.missing):,}"),
            ("duplicated", f"{len(self.duplicated):,}"),
            ("stored but never spooled", f"{len(self.unexpected):,}"),
            ("spool writes cut short by a kill (not spooled, not stored)", f"{self.cut_short:,}"),
            (
                "server kills (SIGKILL, then restart)",
                f"{self.server_kills} ({self.server_kills_in_flight} with a check-in in flight"
                f"{restart})",
            ),
            (
                "agent kills (SIGKILL, then restart)",
                f"{self.agent_kills} ({phases['R']} mid-request, {phases['D']} mid-delivery "
                f"between requests, {phases['S']} mid-spooling, {phases['I'] + phases['-']} "
                "idle or starting)",
            ),
            (
                "server outages",
                f"{len(self.outages)}, {sum(self.outages):.0f} s in all"
                + (f" (longest {max(self.outages):.0f} s)" if self.outages else ""),
            ),
            (
                "PostgreSQL restarts",
                f"{len(self.pg_restarts)}"
                + (f" (each {max(self.pg_restarts):.1f} s or less)" if self.pg_restarts else ""),
            ),
            (
                "check-ins answered 200",
                f"{self.answers['200']:,} (accepted {self.accepted:,}, resent duplicates "
                f"absorbed {self.duplicates_absorbed:,})",
            ),
            ("503 seen by agents", f"{self.answers['503']:,}"),
            ("429 seen by agents", f"{self.answers['429']:,}"),
            ("connection failures seen by agents", f"{self.answers['net']:,}"),
            ("other answers seen by agents (500s, other 4xx)", f"{self.wrong_answers:,}"),
            ("tracebacks in server logs", f"{self.server_tracebacks:,}"),
            (
                "left in spools after the drain (queued/rejected/dropped)",
                f"{self.left_queued}/{self.left_rejected}/{self.left_dropped}",
            ),
            (
                "wall time",
                f"{self.wall_seconds:.0f} s (chaos {self.chaos_seconds:.0f} s, "
                f"drain {self.drain_seconds:.1f} s)",
            ),
        ]

    def render(self) -> str:
        lines = [
            f"## Chaos run: {self.backend}, {self.agents} hosts, {self.processes} agent "
            f"processes, seed {self.seed}",
            "",
        ]
        lines += [f"- {name}: {value}" for name, value in environment().items()]
        lines.append("")
        rows = [("figure", "value"), *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for number, (name, value) in enumerate(rows):
            lines.append(f"| {name.ljust(widths[0])} | {value.ljust(widths[1])} |")
            if number == 0:
                lines.append(f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|")
        lines.append("")
        for label, ids in (
            ("missing", self.missing),
            ("duplicated", self.duplicated),
            ("unexpected", self.unexpected),
        ):
            if ids:
                lines.append(f"- {label} (first 10): {', '.join(ids[:10])}")
        if self.ok:
            lines.append("PASS: every spooled event is stored exactly once, and nothing else")
        else:
            lines.append(f"FAIL: see the figures above; the run's files are in {self.workdir}")
        return "\n".join(lines)


# --- processes -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it when the harness dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def snapshot_code(workdir: Path) -> Path:
    """A copy of the code under test: every server and agent start of the run runs the same
    code, even while the working tree is edited (a new migration mid-run would otherwise
    stop the next server start at its schema check)."""
    code = workdir / "code"
    for package in CODE_PACKAGES:
        shutil.copytree(
            REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return code


def _environment(code: Path, **overrides: str) -> dict[str, str]:
    """The harness's environment without REDFLAG_ settings, importing from `code` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return {**env, **overrides}


def _kill(process: subprocess.Popen[Any] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


class ServerProcess:
    """`redflag-server serve` on one fixed port, started afresh after every kill or stop."""

    def __init__(self, url: str, *, port: int, workdir: Path, code: Path) -> None:
        self.url = url
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.workdir = workdir
        self.code = code
        self.env = _environment(code, **BENCH_SERVER_ENV)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        """Start the console script and wait for /healthz; returns the seconds it took."""
        started = time.monotonic()
        for _attempt in range(3):
            self.starts += 1
            command = [*server_command(), "--database-url", self.url, "serve"]
            command += ["--host", HOST, "--port", str(self.port), "--log-level", "warning"]
            with (self.workdir / f"server-{self.starts:03d}.log").open("wb") as log:
                self.process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.code,
                    env=self.env,
                    preexec_fn=_die_with_parent,
                )
            if self._wait_healthy():
                return time.monotonic() - started
            self.kill()
        raise ChaosError(f"the server did not come up on {self.base}; see {self.workdir}")

    def command(self, *args: str) -> str:
        """Another `redflag-server` command on the run's database; returns its output."""
        done = subprocess.run(
            [*server_command(), "--database-url", self.url, *args],
            capture_output=True,
            text=True,
            cwd=self.code,
            env=self.env,
            timeout=SERVER_START_TIMEOUT,
        )
        if done.returncode != 0:
            raise ChaosError(f"redflag-server {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base}/healthz").status_code == 200:
                        return True
                time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, open transactions cut off."""
        _kill(self.process)
        self.process = None

    def stop(self) -> None:
        """A graceful stop (SIGTERM), as an operator's restart or a deploy would do."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill(self.process)
        self.process = None

    def tracebacks(self) -> int:
        count = 0
        for log in self.workdir.glob("server-*.log"):
            with contextlib.suppress(OSError):
                count += log.read_text(errors="replace").count("Traceback (most recent call last)")
        return count


@dataclass
class ChaosHost:
    """One sandboxed host: its root and the agent identity registered there."""

    name: str
    root: Path
    agent_id: uuid.UUID | None = None


@dataclass(eq=False)
class ChaosAgent:
    """One agent process on a host, with its ledger, phase byte and stats."""

    name: str
    host: ChaosHost
    files: Path
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    _phase_fd: int | None = None

    @property
    def root(self) -> Path:
        return self.host.root

    @property
    def ledger(self) -> Path:
        return self.files / "ledger.txt"

    @property
    def phase_file(self) -> Path:
        return self.files / "phase"

    @property
    def stats(self) -> Path:
        return self.files / "stats.txt"

    def phase(self) -> str:
        # Read many times a second while aiming a kill: one pread on a file kept open.
        if self._phase_fd is None:
            return "-"
        return os.pread(self._phase_fd, 1, 0).decode() or "-"

    def start(self, *, stop: Path, seed: int, options: ChaosOptions, code: Path) -> None:
        self.phase_file.write_bytes(b"-")
        if self._phase_fd is None:
            self._phase_fd = os.open(self.phase_file, os.O_RDONLY | os.O_CLOEXEC)
        self.incarnation += 1
        command = [sys.executable, "-m", "bench.chaos_agent", "--root", str(self.root)]
        command += ["--ledger", str(self.ledger), "--phase", str(self.phase_file)]
        command += ["--stats", str(self.stats), "--stop", str(stop), "--seed", str(seed)]
        command += ["--pace", *(str(p) for p in options.pace)]
        command += ["--max-wait", str(options.agent_max_wait)]
        with (self.files / "agent.log").open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=code,
                env=_environment(code),
                preexec_fn=_die_with_parent,
            )

    def kill(self) -> None:
        _kill(self.process)
        self.process = None

    def close(self) -> None:
        self.kill()
        if self._phase_fd is not None:
            os.close(self._phase_fd)
            self._phase_fd = None


# --- ledgers -------------------------------------------------------------------------------


def read_ledger(path: Path) -> dict[str, str]:
    """Event id -> its latest state: P (spooling began), S (spooled) or A (never spooled)."""
    states: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError), path.open() as ledger:
        for line in ledger:
            parts = line.split()
            # A torn last line is a P that was never completed: the event was never spooled.
            if len(parts) == 2 and parts[0] in ("P", "S", "A") and len(parts[1]) == 36:
                tag, event_id = parts
                if tag == "P" and states.get(event_id) in ("S", "A"):
                    continue
                states[event_id] = tag
    return states


def settle_ledger(agent: ChaosAgent, stored: Callable[[list[str]], set[str]]) -> int:
    """Decide every `P` left by a kill, while that agent process is not running.

    A committed event stays in the spool until a delivery was acknowledged, and the server
    commits before it acknowledges: an event with a `P` alone that is in a spool or in the
    database (`stored` says which ids are; another process of the host may have delivered
    it) was committed (S); one in neither never was (A). Checking the spool first, then
    the database, leaves no gap for a delivery to slip through.
    Returns how many were never committed.
    """
    pending = [event_id for event_id, tag in read_ledger(agent.ledger).items() if tag == "P"]
    if not pending:
        return 0
    present: set[str] = set()
    for path, _kind in spool_files(Layout.at(agent.root)):
        connection = sqlite3.connect(path, timeout=30)
        try:
            for table in ("queued_event", "rejected_event"):
                for (event_id,) in connection.execute(f"SELECT event_id FROM {table}"):
                    present.add(event_id)
        finally:
            connection.close()
    present |= stored([event_id for event_id in pending if event_id not in present])
    aborted = 0
    fd = os.open(agent.ledger, os.O_WRONLY | os.O_APPEND)
    try:
        for event_id in pending:
            tag = "S" if event_id in present else "A"
            aborted += tag == "A"
            os.write(fd, f"{tag} {event_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return aborted


# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_cluster(admin_url: str) -> list[str]:
    """The local cluster serving admin_url's port, as `pg_ctlcluster` names it."""
    port = str(sa.make_url(admin_url).port or 5432)
    try:
        listing = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ChaosError(f"cannot list the PostgreSQL clusters (pg_lsclusters): {exc}") from exc
    for line in listing.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return [version, name]
    raise ChaosError(f"no local PostgreSQL cluster on port {port} (pg_lsclusters)")


def _pg_ctlcluster(admin_url: str, action: str) -> None:
    # A session of its own: a Ctrl-C meant for the harness must not cut a restart short.
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", *_pg_cluster(admin_url), action]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=PG_RESTART_TIMEOUT, start_new_session=True
    )
    if done.returncode != 0:
        raise ChaosError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def _wait_for_postgres(admin_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (reason := postgres_unreachable(admin_url)) is not None:
        if time.monotonic() > deadline:
            raise ChaosError(f"PostgreSQL did not come back: {reason}")
        time.sleep(0.5)


def restart_postgres(admin_url: str) -> float:
    """Restart the local cluster (fast shutdown: open transactions are aborted)."""
    started = time.monotonic()
    _pg_ctlcluster(admin_url, "restart")
    _wait_for_postgres(admin_url, 60)
    return time.monotonic() - started


def ensure_postgres_up(admin_url: str) -> None:
    """Start the cluster if a restart left it down (a failed restart, an interruption)."""
    if postgres_unreachable(admin_url) is None:
        return
    with contextlib.suppress(ChaosError):
        _pg_ctlcluster(admin_url, "start")
    _wait_for_postgres(admin_url, 60)


# --- the run -------------------------------------------------------------------------------


def plan(options: ChaosOptions, rng: random.Random) -> list[tuple[float, str]]:
    """The chaos timeline: (seconds from the start, action), in order.

    Server kills and PostgreSQL restarts fall outside the outages (the server is down
    then); agent kills fall anywhere. Outages sit in the middle 80% of the run.
    """
    total = options.chaos_seconds()
    down = options.outages * options.outage_seconds
    up = total - down
    if up <= 0:
        raise ChaosError(f"--duration {total:.0f} s leaves no time outside the outages")
    outage_starts = sorted(rng.uniform(0.1 * up, 0.9 * up) for _ in range(options.outages))

    def real(up_time: float) -> float:
        passed = sum(1 for start in outage_starts if start <= up_time)
        return up_time + passed * options.outage_seconds

    events: list[tuple[float, str]] = []
    for number, start in enumerate(outage_starts):
        at = start + number * options.outage_seconds
        events += [(at, "outage_start"), (at + options.outage_seconds, "outage_end")]
    events += [(real(rng.uniform(0, up)), "server_kill") for _ in range(options.server_kills)]
    events += [
        (real(rng.uniform(0.2 * up, 0.8 * up)), "pg_restart") for _ in range(options.pg_restarts)
    ]
    events += [(rng.uniform(0, total), "agent_kill") for _ in range(options.agent_kills)]
    events += [(rng.uniform(0, total), "spool_kill") for _ in range(options.spool_kills)]
    order = {"outage_end": 0, "outage_start": 1, "server_kill": 2, "pg_restart": 3}
    return sorted(events, key=lambda event: (event[0], order.get(event[1], 4)))


class Chaos:
    def __init__(
        self,
        options: ChaosOptions,
        workdir: Path,
        url: str,
        seed: int,
        progress: Callable[[str], None],
    ) -> None:
        self.options = options
        self.progress = progress
        self.workdir = workdir
        self.url = url
        self.rng = random.Random(seed)
        self.result = ChaosResult(options.backend, options.agents, seed, workdir=str(workdir))
        self.code = snapshot_code(workdir)
        self.server = ServerProcess(url, port=free_port(), workdir=workdir, code=self.code)
        self.stop_file = workdir / "stop"
        self.hosts: list[ChaosHost] = []
        self.agents: list[ChaosAgent] = []
        self._engine: sa.Engine | None = None

    # setup

    def prepare(self) -> None:
        # The server's and the agents' interpreters start while the database is made; each
        # agent waits for its host's identity before its first command.
        for index in range(self.options.agents):
            name = f"chaos-{index:02d}"
            root = self.workdir / "hosts" / name
            root.mkdir(parents=True)
            sandbox = Host(root).with_machine_id(uuid.uuid4().hex, hostname=name)
            sandbox.with_temp_dirs().with_legacy_layout()
            host = ChaosHost(name, root)
            self.hosts.append(host)
            shared = index < self.options.shared_hosts
            for suffix in ("a", "b") if shared else ("a",):
                files = self.workdir / "agents" / f"{name}{suffix}"
                files.mkdir(parents=True)
                agent = ChaosAgent(f"{name}{suffix}", host, files)
                agent.start(
                    stop=self.stop_file,
                    seed=self.rng.randrange(2**32),
                    options=self.options,
                    code=self.code,
                )
                self.agents.append(agent)
        self.result.processes = len(self.agents)
        self.server.command("db", "upgrade")
        token = self.server.command("enroll", "create", "--uses", str(self.options.agents))
        token = token.strip().splitlines()[-1]
        self.server.start()
        for host in self.hosts:
            self._register(host, token)
        deadline = time.monotonic() + READY_TIMEOUT
        while any(agent.phase() == "-" for agent in self.agents):
            if time.monotonic() > deadline:
                raise ChaosError("the agents did not start; see agents/*/agent.log")
            if any(a.process is not None and a.process.poll() is not None for a in self.agents):
                raise ChaosError("an agent exited at start; see agents/*/agent.log")
            time.sleep(0.1)

    def _register(self, host: ChaosHost, token: str) -> None:
        output = io.StringIO()
        command = ["--root", str(host.root), "register", "--server", self.server.base]
        code = agent_main(
            [*command, "--enrollment-token", token], Runtime(stdout=output, stderr=output)
        )
        if code != 0:
            raise ChaosError(f"{host.name} did not register: {output.getvalue().strip()}")
        identity = load_identity(Layout.at(host.root))
        assert identity is not None
        host.agent_id = identity.agent_id

    def _stored(self, event_ids: list[str]) -> set[str]:
        """Which of these event ids the database holds (read directly, not through the API)."""
        if not event_ids:
            return set()
        if self._engine is None:
            self._engine = create_db_engine(self.url)
        wanted = [uuid.UUID(event_id) for event_id in event_ids]
        with self._engine.connect() as connection:
            rows = connection.scalars(
                sa.select(EVENT_TABLE.c.event_id).where(EVENT_TABLE.c.event_id.in_(wanted))
            )
            return {str(event_id) for event_id in rows}

    # chaos

    def run_chaos(self) -> None:
        started = time.monotonic()
        origin = started
        outage_began = 0.0
        reported = started
        for at, action in plan(self.options, self.rng):
            if time.monotonic() - reported >= PROGRESS_SECONDS:
                reported = time.monotonic()
                self._report_progress(reported - started)
            now = time.monotonic()
            # Late (a slow restart)? Shift what is left, so outages keep their length.
            origin = max(origin, now - at)
            while (wait := origin + at - time.monotonic()) > 0:
                time.sleep(min(wait, 0.2))
            if action == "server_kill":
                self._kill_server()
            elif action == "agent_kill":
                self._kill_agent(aim=("R", "D"), patience=5.0)
            elif action == "spool_kill":
                self._kill_agent(aim=("S",), patience=2.0)
            elif action == "outage_start":
                outage_began = time.monotonic()
                self.server.stop()
            elif action == "outage_end":
                self.server.start()
                self.result.outages.append(time.monotonic() - outage_began)
            elif action == "pg_restart":
                self.result.pg_restarts.append(restart_postgres(self.options.pg_admin_url))
        self.result.chaos_seconds = time.monotonic() - started

    def _report_progress(self, seconds: float) -> None:
        result, options = self.result, self.options
        line = (
            f"  {seconds:4.0f} s: server kills {result.server_kills}/{options.server_kills}, "
            f"agent kills {result.agent_kills}/{options.agent_kills + options.spool_kills}, "
            f"outages {len(result.outages)}/{options.outages}"
        )
        if options.pg_restarts:
            line += f", PostgreSQL restarts {len(result.pg_restarts)}/{options.pg_restarts}"
        self.progress(line + (" (server down)" if not self.server.running else ""))

    def _in_flight(self) -> bool:
        return any(agent.phase() == "R" for agent in self.agents)

    def _kill_server(self) -> None:
        if self.rng.random() < 0.5:
            # Aim at the window the guarantees are about: a check-in the server may have
            # committed without answering.
            deadline = time.monotonic() + 1.0
            while not self._in_flight() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(self.rng.uniform(0, 0.01))
        self.result.server_kills_in_flight += self._in_flight()
        self.server.kill()
        self.result.server_kills += 1
        time.sleep(self.rng.uniform(0, 1.0))
        self.result.server_restart_seconds.append(self.server.start())

    def _pick(self, aim: tuple[str, ...], prefer_until: float, give_up: float) -> ChaosAgent | None:
        """The first agent seen in the first phase aimed at; else, after `prefer_until` or a
        second after one was seen, one in a later phase aimed at; None after `give_up`."""
        settle = prefer_until
        while True:
            phases = [(agent, agent.phase()) for agent in self.agents]
            ranks = [aim.index(phase) for _, phase in phases if phase in aim]
            if ranks:
                settle = min(settle, time.monotonic() + 1.0)
                if min(ranks) == 0 or time.monotonic() > settle:
                    best = aim[min(ranks)]
                    return self.rng.choice([agent for agent, phase in phases if phase == best])
            if time.monotonic() > give_up:
                return None
            time.sleep(0.005)

    def _kill_agent(self, *, aim: tuple[str, ...], patience: float) -> None:
        """SIGKILL an agent in one of the phases aimed at (a check-in in flight, else a
        delivery; or a spool write), preferring the first for `patience` seconds and
        waiting up to 30 s for any, then start it again."""
        prefer_until = time.monotonic() + patience
        give_up = time.monotonic() + 30.0
        while True:
            agent = self._pick(aim, prefer_until, give_up)
            if agent is None:
                agent = self.rng.choice(self.agents)
                break
            if agent.phase() == "R":
                # Anywhere in the request: sent, being stored, committed, answered.
                time.sleep(self.rng.uniform(0, 0.01))
            if agent.phase() in aim or time.monotonic() > give_up:
                break
        self.result.agent_kill_phases[agent.phase()] += 1
        agent.kill()
        self.result.agent_kills += 1
        self.result.cut_short += settle_ledger(agent, self._stored)
        agent.start(
            stop=self.stop_file,
            seed=self.rng.randrange(2**32),
            options=self.options,
            code=self.code,
        )

    # drain and verdict

    def drain(self) -> None:
        started = time.monotonic()
        if not self.server.running:
            self.server.start()
        self.stop_file.touch()
        deadline = time.monotonic() + 30 + self.options.agent_max_wait * 4
        for agent in self.agents:
            if agent.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            agent.kill()  # a straggler: its ledger is settled like any other kill's
            self.result.cut_short += settle_ledger(agent, self._stored)
        deadline = started + self.options.drain_timeout
        while time.monotonic() < deadline:
            queued = [h for h in self.hosts if collect_status(Layout.at(h.root))["queued"]]
            if not queued:
                break
            for host in queued:
                wait = max(1.0, min(30.0, deadline - time.monotonic()))
                output = io.StringIO()
                command = ["--root", str(host.root), "run", "--once", "--max-wait", f"{wait:.0f}"]
                agent_main(command, Runtime(stdout=output, stderr=output))
        for host in self.hosts:
            status = collect_status(Layout.at(host.root))
            self.result.left_queued += status["queued"]
            self.result.left_rejected += status["rejected"]
            self.result.left_dropped += status["dropped"]
        self.result.drain_seconds = time.monotonic() - started

    def verify(self) -> None:
        result = self.result
        expected: dict[tuple[uuid.UUID, uuid.UUID], str] = {}
        for agent in self.agents:
            assert agent.host.agent_id is not None
            for event_id, tag in read_ledger(agent.ledger).items():
                if tag == "S":
                    expected[(agent.host.agent_id, uuid.UUID(event_id))] = event_id
            for line in agent.stats.read_text().splitlines() if agent.stats.exists() else []:
                parts = line.split()
                if parts[0] == "ok" and len(parts) == 3:
                    result.answers["200"] += 1
                    result.accepted += int(parts[1])
                    result.duplicates_absorbed += int(parts[2])
                elif parts[0] == "err" and len(parts) == 2:
                    result.answers[parts[1]] += 1
        engine = create_db_engine(self.url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.select(EVENT_TABLE.c.agent_id, EVENT_TABLE.c.event_id)
                ).all()
        finally:
            engine.dispose()
        stored = Counter((row.agent_id, row.event_id) for row in rows)
        by_event = Counter(row.event_id for row in rows)
        result.spooled = len(expected)
        result.stored = len(rows)
        result.missing = sorted(expected[key] for key in expected.keys() - stored.keys())
        result.duplicated = sorted(str(event) for event, n in by_event.items() if n > 1)
        result.unexpected = sorted(str(key[1]) for key in stored.keys() - expected.keys())
        result.server_tracebacks = self.server.tracebacks()

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        self.server.kill()
        if self._engine is not None:
            self._engine.dispose()


def check_options(options: ChaosOptions) -> None:
    """Refuse, before anything starts, a run that could not be carried out."""
    if options.agents < 1 or min(options.counts()) < 0:
        raise ChaosError("--agents must be at least 1 and the counts not negative")
    if options.workdir is not None and not options.workdir.is_dir():
        raise ChaosError(f"--workdir {options.workdir} is not a directory")
    if options.chaos_seconds() <= options.outages * options.outage_seconds:
        raise ChaosError(
            f"--duration {options.chaos_seconds():.0f} s leaves no time outside the outages"
        )
    if options.backend == "postgresql":
        reason = postgres_unreachable(options.pg_admin_url)
        if reason is not None:
            raise ChaosError(f"PostgreSQL is not reachable at {options.pg_admin_url}: {reason}")
        if options.pg_restarts:
            _pg_cluster(options.pg_admin_url)  # found now, not in the middle of the run
    elif options.pg_restarts:
        raise ChaosError("PostgreSQL restarts need --backend postgresql")


def run_chaos(
    options: ChaosOptions, progress: Callable[[str], None] = lambda _line: None
) -> ChaosResult:
    """One whole run: set up, chaos, drain, verdict; every process is gone on return."""
    wall = time.monotonic()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    check_options(options)
    workdir = Path(tempfile.mkdtemp(prefix="redflag-chaos-", dir=options.workdir))
    result: ChaosResult | None = None
    try:
        with _database(options, workdir) as url:
            chaos = Chaos(options, workdir, url, seed, progress)
            try:
                progress(f"setting up in {workdir} (seed {seed})")
                chaos.prepare()
                progress(f"chaos: {chaos.result.processes} agent processes running")
                chaos.run_chaos()
                progress("draining the spools")
                chaos.drain()
            finally:
                chaos.close()
            progress("comparing the agents' ledgers with update_events")
            chaos.verify()
            result = chaos.result
    finally:
        if result is not None and result.ok and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    assert result is not None
    result.wall_seconds = time.monotonic() - wall
    return result


@contextlib.contextmanager
def _database(options: ChaosOptions, workdir: Path) -> Iterator[str]:
    """A new database for the run: a SQLite file in the workdir, or a PostgreSQL database
    dropped afterwards (with PostgreSQL made sure to be up, and a new admin connection,
    since a restart in the run cut off any old one)."""
    if options.backend == "sqlite":
        yield f"sqlite:///{workdir}/redflag.db"
        return
    name = f"redflag_chaos_{os.getpid()}_{uuid.uuid4().hex[:10]}"

    def admin(statement: str) -> None:
        engine = sa.create_engine(options.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(sa.text(statement))
        finally:
            engine.dispose()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield (
            sa.make_url(options.pg_admin_url)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        ensure_postgres_up(options.pg_admin_url)
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--agents", type=int, default=10, help="sandboxed agent hosts (default 10)")
    parser.add_argument(
        "--shared-hosts",
        type=int,
        default=2,
        help="hosts with a second agent process on the same spool (default 2)",
    )
    parser.add_argument(
        "--server-kills", type=int, default=50, help="SIGKILLs of the server (default 50)"
    )
    parser.add_argument(
        "--agent-kills",
        type=int,
        default=50,
        help="SIGKILLs of agents, aimed at deliveries (default 50)",
    )
    parser.add_argument(
        "--spool-kills",
        type=int,
        default=10,
        help="more SIGKILLs of agents, aimed at spool writes (default 10)",
    )
    parser.add_argument("--outages", type=int, default=2, help="server outages (default 2)")
    parser.add_argument(
        "--outage-seconds", type=float, default=60.0, help="length of each outage (default 60)"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--pg-restarts",
        type=int,
        default=None,
        help="PostgreSQL restarts (default 1 with --backend postgresql); restarting the "
        "cluster cuts off everyone else using it",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds of chaos (default: the outages plus 4 s per server kill plus 10 s)",
    )
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--seed", type=int, help="random seed, to replay a run's schedule")
    parser.add_argument(
        "--pace",
        type=float,
        nargs=2,
        default=(0.5, 2.0),
        metavar=("MIN", "MAX"),
        help="seconds an agent rests between commands (default 0.5 2.0)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("REDFLAG_BENCH_POSTGRES_URL", DEFAULT_PG_ADMIN_URL),
        help="PostgreSQL maintenance database, for CREATE/DROP DATABASE",
    )
    parser.add_argument("--workdir", type=Path, help="where the run's files go (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the run's files")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    return parser


def options_from(args: argparse.Namespace) -> ChaosOptions:
    pg_restarts = args.pg_restarts
    if pg_restarts is None:
        pg_restarts = 1 if args.backend == "postgresql" else 0
    return ChaosOptions(
        agents=args.agents,
        shared_hosts=args.shared_hosts,
        server_kills=args.server_kills,
        agent_kills=args.agent_kills,
        spool_kills=args.spool_kills,
        outages=args.outages,
        outage_seconds=args.outage_seconds,
        pg_restarts=pg_restarts,
        backend=args.backend,
        duration=args.duration,
        drain_timeout=args.drain_timeout,
        seed=args.seed,
        pace=(args.pace[0], args.pace[1]),
        pg_admin_url=args.pg_admin_url,
        workdir=args.workdir,
        keep=args.keep,
    )


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    options = options_from(args)
    try:
        check_options(options)
    except ChaosError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so every process is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if options.backend == "postgresql":
        version = postgres_version(options.pg_admin_url)
        print(f"PostgreSQL {version}; {options.pg_restarts} restart(s) planned", file=out)
    print(
        f"chaos: {options.agents} hosts ({options.shared_hosts} with two agent processes), "
        f"{options.server_kills} server kills, "
        f"{options.agent_kills} + {options.spool_kills} agent kills, {options.outages} "
        f"outage(s) of {options.outage_seconds:.0f} s, about "
        f"{options.chaos_seconds():.0f} s of chaos on {options.backend}",
        file=out,
        flush=True,
    )
    try:
        result = run_chaos(options, lambda line: print(line, file=out, flush=True))
    except ChaosError as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    print(result.render(), file=out)
    if args.json:
        args.json.write_text(json.dumps(_as_json(result), indent=2))
    return 0 if result.ok else 1


def _as_json(result: ChaosResult) -> dict[str, Any]:
    return {
        "environment": environment(),
        "backend": result.backend,
        "seed": result.seed,
        "ok": result.ok,
        "figures": dict(result.rows()),
        "missing": result.missing,
        "duplicated": result.duplicated,
        "unexpected": result.unexpected,
    }


if __name__ == "__main__":
    sys.exit(main())
