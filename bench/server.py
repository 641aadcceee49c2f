"""Fresh databases, a real `redflag-server serve` process and CPU accounting for benchmarks.

Everything listens on and talks to 127.0.0.1 only. Each database is new for the run and is
removed afterwards (a temporary SQLite file, or a uniquely named PostgreSQL database).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.report import REPO
from bench.workload import hostname_for
from ingest_api.cli import main as cli_main

HOST = "127.0.0.1"
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# The per-agent rate limit protects a real server from one runaway agent; a benchmark
# that drives 50 agents as fast as they go must not measure 429s instead of ingest.
BENCH_SERVER_ENV = {
    "REDFLAG_RATE_LIMIT_PER_MINUTE": "100000000",
    "REDFLAG_RATE_LIMIT_BURST": "100000000",
    # 50 agents sending as fast as they can queue for SQLite's one writer; past the default
    # 5 s wait the API sheds load with 503 + Retry-After, which a throughput run should not
    # measure. Real agents would come back after Retry-After.
    "REDFLAG_DATABASE_TIMEOUT_SECONDS": "30",
}


def postgres_unreachable(admin_url: str) -> str | None:
    """None when PostgreSQL answers at admin_url, else why not."""
    try:
        engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        return str(getattr(exc, "orig", exc)).splitlines()[0]
    return None


def postgres_version(admin_url: str) -> str:
    engine = sa.create_engine(admin_url)
    with engine.connect() as connection:
        version = str(connection.execute(sa.text("SHOW server_version")).scalar_one())
    engine.dispose()
    return version


@contextmanager
def fresh_database(backend: str, *, workdir: Path, pg_admin_url: str) -> Iterator[str]:
    """The URL of a new, empty database, dropped (or deleted) on exit."""
    name = f"redflag_bench_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        directory = workdir / name
        directory.mkdir(parents=True)
        try:
            yield f"sqlite:///{directory}/redflag.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_command() -> list[str]:
    """`redflag-server` as installed in this interpreter's environment."""
    script = Path(sys.executable).with_name("redflag-server")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ingest_api.cli"]


def cli(url: str, *args: str) -> str:
    """Run `redflag-server --database-url URL ARGS...` in this process; returns its stdout.

    The same code as the command line, without paying for another interpreter start.
    """
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = cli_main(["--database-url", url, *args])
    if status != 0:
        raise RuntimeError(f"redflag-server {' '.join(args)} failed: {output.getvalue().strip()}")
    return output.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RegisteredAgent:
    index: int
    id: str
    token: str
    hostname: str

    def spec(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "token": self.token, "hostname": self.hostname}


class Server:
    """A `redflag-server serve` process on a free port of 127.0.0.1."""

    def __init__(
        self, url: str, *, workdir: Path, workers: int = 1, profile_to: Path | None = None
    ) -> None:
        self.url = url
        self.workers = workers
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log_path = workdir / f"server-{self.port}.log"
        self.profile_to = profile_to
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        command = [
            *server_command(),
            "--database-url",
            self.url,
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
        ]
        if self.profile_to is not None:
            command = [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                # Only the thread holding the GIL: in one Python process that is where
                # the CPU goes; the threads waiting for a lock or the GIL are noise.
                "--gil",
                "--rate",
                "200",
                "--format",
                "speedscope",
                "--output",
                str(self.profile_to),
                "--subprocesses",
                "--",
                *command,
            ]
        env = {**os.environ, **BENCH_SERVER_ENV}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz in {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def register_agents(self, count: int, *, enrollment_token: str) -> list[RegisteredAgent]:
        agents = []
        with httpx.Client(base_url=self.base, timeout=30) as client:
            for index in range(count):
                response = client.post(
                    "/api/v1/agents/register",
                    headers={"Authorization": f"Bearer {enrollment_token}"},
                    json={
                        "hostname": hostname_for(index),
                        "os_type": "linux",
                        "os_version": "Debian 12",
                        "os_architecture": "x86_64",
                        "agent_version": "0.2.0",
                        "machine_id": uuid.uuid4().hex,
                    },
                )
                if response.status_code != 201:
                    raise RuntimeError(
                        f"registration failed: {response.status_code} {response.text}"
                    )
                body = response.json()
                agents.append(
                    RegisteredAgent(
                        index, body["agent_id"], body["agent_token"], hostname_for(index)
                    )
                )
        return agents

    def pids(self) -> list[int]:
        """The server's process and its descendants (uvicorn workers, under py-spy too)."""
        if self.process is None:
            return []
        return _descendants(self.process.pid)

    def cpu_seconds(self) -> float:
        return sum(_process_cpu(pid) for pid in self.pids())

    def system_cpu_seconds(self) -> float:
        return sum(_process_cpu(pid, user=False) for pid in self.pids())


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int, *, user: bool = True) -> float:
    """User + system CPU seconds of one process, or system only (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return ((int(fields[11]) if user else 0) + int(fields[12])) / _TICKS


def _postgres_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _process_cpu(int(entry.name))
            except OSError:
                continue
    return total


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        # user nice system idle iowait irq softirq steal; guest time is already in user.
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / _TICKS, sum(values) / _TICKS


def python_speed_check(steps: int = 5_000_000) -> float:
    """CPU seconds for a fixed pure-Python loop: the same on every run of an idle machine,
    larger when the cores are shared with other work (or the machine is slower)."""
    started = time.process_time()
    total = 0
    for step in range(steps):
        total += step
    return time.process_time() - started


def background_load(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes while the benchmark itself is idle."""
    busy0, wall0 = _machine_busy()[0], time.perf_counter()
    time.sleep(seconds)
    return (_machine_busy()[0] - busy0) / (time.perf_counter() - wall0)


@dataclass
class CpuSample:
    wall: float
    server: float
    server_system: float
    postgres: float
    machine_busy: float


def sample_cpu(server: Server) -> CpuSample:
    return CpuSample(
        time.perf_counter(),
        server.cpu_seconds(),
        server.system_cpu_seconds(),
        _postgres_cpu(),
        _machine_busy()[0],
    )


def cpu_share(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU used between two samples, in cores (1.0 = one core busy all the time)."""
    wall = max(after.wall - before.wall, 1e-9)
    return {
        "server": (after.server - before.server) / wall,
        "server_system": (after.server_system - before.server_system) / wall,
        "postgres": (after.postgres - before.postgres) / wall,
        "machine": (after.machine_busy - before.machine_busy) / wall,
    }


def run_load(spec: dict[str, Any], server: Server, *, timeout: float) -> dict[str, Any]:
    """Run the load generator in its own process; returns its results and CPU shares."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        process.stdin.write(json.dumps(spec) + "\n")
        process.stdin.flush()
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator failed to prepare (see its stderr above)")
        before = sample_cpu(server)
        process.stdin.write("go\n")
        process.stdin.flush()
        line = process.stdout.readline()
        after = sample_cpu(server)
        process.wait(timeout=10)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    if not line:
        raise RuntimeError(f"the load generator gave no result (exit {process.returncode})")
    result: dict[str, Any] = json.loads(line)
    result["cpu"] = cpu_share(before, after)
    result["cpu"]["client"] = result["client_cpu_seconds"] / max(result["elapsed"], 1e-9)
    return result
