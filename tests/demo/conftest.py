"""The demo fleet for real: the ingest API as a server process, agents as subprocesses.

`demo_fleet_db` is the URL of a database that a real fleet has reported into: one host of
every kind, each driven through the real `redflag-agent` on its own sandbox root. It is
built once per test session (about 30 s) and only read by the tests that use it.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from demo.confinement import AgentUser, choose_agent_user, find_tiny_disk
from demo.driver import AgentRunner, DriverSettings, FleetDriver, FleetHost
from demo.fleet import HostKind, build_host, plan_fleet, substitute_kinds
from demo.layouts import remove_tree
from demo.services import (
    RUN_MARKER,
    Service,
    marked_processes,
    python_module,
    signal_group,
    start_service,
)
from ingest_api.service import create_enrollment_token
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database

SETTLE_TIMEOUT_SECONDS = 120.0


@dataclass
class DemoFleet:
    database_url: str
    server_url: str
    hosts: list[FleetHost]
    agent_user: AgentUser
    # Kinds this machine could not produce, and what stood in for them.
    substitutes: dict[HostKind, HostKind]
    # The host that reported package updates after its migration.
    updated_host: str

    def host(self, kind: HostKind) -> FleetHost:
        return next(host for host in self.hosts if host.spec.kind is kind)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sandbox_directory(prefix: str) -> Path:
    """A directory uid 65534 can reach (pytest's tmp_path sits under a root-only one)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path.resolve()


@pytest.fixture(scope="session")
def demo_fleet() -> Iterator[DemoFleet]:
    base = sandbox_directory("redflag-demo-fleet-")
    url = f"sqlite:///{base}/redflag.db"
    marker = uuid.uuid4().hex
    environment = {**os.environ, RUN_MARKER: marker, "REDFLAG_DATABASE_URL": url}
    api: Service | None = None
    driver: FleetDriver | None = None
    try:
        engine = create_db_engine(url)
        upgrade_database(engine)
        with write_transaction(engine) as connection:
            token = create_enrollment_token(
                connection, uses=len(HostKind), ttl=timedelta(hours=1)
            ).token
        engine.dispose()
        port = free_port()
        server_url = f"http://127.0.0.1:{port}"
        api = start_service(
            "ingest API",
            python_module("ingest_api.cli", "serve", "--port", str(port), "--log-level", "warning"),
            environment=environment,
            log=base / "api.log",
            health_url=f"{server_url}/healthz",
        )
        api.wait_healthy(timeout=60, stopping=lambda: False)

        hosts_dir = base / "hosts"
        hosts_dir.mkdir(mode=0o755)
        user = choose_agent_user(hosts_dir)
        tiny_disk = find_tiny_disk(base / "probe")
        substitutes = substitute_kinds(user, tiny_disk)
        hosts = [
            FleetHost(spec, hosts_dir / spec.hostname)
            for spec in plan_fleet(len(HostKind), substitutes=substitutes)
        ]
        for host in hosts:
            build_host(host.spec, host.root, user)

        driver = FleetDriver(
            hosts,
            AgentRunner(server_url, user, tiny_disk),
            enrollment_token=token,
            log_dir=base / "logs",
            # Everyone at once, no periodic check-ins and no random updates: the test
            # asks for the updates it wants.
            settings=DriverSettings(concurrency=4, interval=3600, join_window=0, update_share=0),
            environment=environment,
        )
        driver.start()
        _drive(driver, lambda: driver.settled and driver.idle, base)
        updated = next(host for host in hosts if host.spec.kind is HostKind.LEGACY)
        driver.report_update(updated)
        _drive(driver, lambda: driver.idle, base)

        yield DemoFleet(url, server_url, hosts, user, substitutes, updated.hostname)
    finally:
        if driver is not None:
            driver.stop()
        if api is not None:
            api.stop()
        for pid in marked_processes(marker):
            signal_group(pid, signal.SIGKILL)
        remove_tree(base)


def _drive(driver: FleetDriver, until: Callable[[], bool], base: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(SETTLE_TIMEOUT_SECONDS, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        done = driver.run(stop, until=until)
    finally:
        timer.cancel()
    if not done:
        stuck = [host.hostname for host in driver.hosts if not host.settled]
        logs = "\n".join(
            (base / "logs" / f"{name}.log").read_text(errors="replace")
            for name in stuck
            if (base / "logs" / f"{name}.log").exists()
        )
        pytest.fail(
            f"the fleet did not settle in {time.monotonic() - started:.0f} s; "
            f"unsettled: {stuck}\n{logs}"
        )


@pytest.fixture(scope="session")
def demo_fleet_db(demo_fleet: DemoFleet) -> str:
    """The URL of a database a real demo fleet reported into (one host of every kind)."""
    return demo_fleet.database_url
