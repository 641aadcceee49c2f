"""Fixtures for agent tests: sandboxed hosts, a fake clock and the real ingest API."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token
from models.database import write_transaction
from models.settings import Settings
from tests.agent.sandbox import FakeClock, Host


@pytest.fixture
def backend() -> str:
    """The agent does not care which database the server uses; SQLite keeps tests fast."""
    return "sqlite"


@pytest.fixture
def host() -> Iterator[Host]:
    """An empty host root that an unprivileged user (uid 65534) can traverse.

    pytest's tmp_path lives under a root-only directory, so the sandbox is made directly
    in /tmp instead.
    """
    root = Path(tempfile.mkdtemp(prefix="redflag-host-"))
    os.chmod(root, 0o755)
    sandbox = Host(root.resolve())
    sandbox.path("/var/tmp").mkdir(parents=True)
    os.chmod(sandbox.path("/var/tmp"), 0o1777)
    yield sandbox
    # Anything mounted by a test (a tiny tmpfs) must go before the tree can.
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", target], check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tiny_tmpfs() -> Callable[[Path], None]:
    """Mount a 64 KiB tmpfs on a directory, or skip when mounting is not allowed here."""

    def mount(target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")

    return mount


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the agent as an unprivileged user")


# --- the real ingest API -------------------------------------------------------------------


@pytest.fixture
def server_settings() -> Settings:
    return Settings(rate_limit_per_minute=6000, rate_limit_burst=1000)


@pytest.fixture
def api(engine: Engine, server_settings: Settings) -> Iterator[TestClient]:
    """The ingest API in process, on a fresh database."""
    with TestClient(create_app(settings=server_settings, engine=engine)) as client:
        yield client


@pytest.fixture
def enrollment_token(engine: Engine) -> Callable[[], str]:
    def make() -> str:
        with write_transaction(engine) as connection:
            return create_enrollment_token(connection, uses=1, ttl=timedelta(hours=1)).token

    return make


def stored_events(engine: Engine) -> list[dict[str, Any]]:
    """Every event the server stored, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT event_id, event_type, status, error_message, migration_from, "
                "migration_to, details, system_info FROM update_events ORDER BY id"
            )
        ).mappings()
        return [dict(row) for row in rows]


class Gate:
    """Wraps the ASGI app to hold check-ins (before or after they are stored) or refuse them.

    Lets a test kill the agent while the server holds its request, or play a server outage.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.mode = "open"  # open | hold_before_store | hold_after_store | unavailable
        self.held = threading.Event()
        # A request held before it was stored is dropped on release, as if it had died with
        # the agent's connection; otherwise it would race the agent's own resend.
        self.drop_held = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        checkin = scope["type"] == "http" and scope["path"].endswith("/checkin")
        if not checkin or self.mode == "open":
            await self.app(scope, receive, send)
            return
        if self.mode == "unavailable":
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"detail":"down"}'})
            return
        if self.mode == "hold_before_store":
            await self._hold()
            if not self.drop_held:
                await self.app(scope, receive, send)
            return

        async def send_later(message: Any) -> None:
            if message["type"] == "http.response.start":
                await self._hold()
            await send(message)

        await self.app(scope, receive, send_later)

    async def _hold(self) -> None:
        self.held.set()
        while self.mode.startswith("hold"):
            await asyncio.sleep(0.02)


@dataclass
class LiveServer:
    url: str
    engine: Engine
    gate: Gate
    tokens: Callable[[], str]
    threads: list[threading.Thread] = field(default_factory=list)


@pytest.fixture
def live_server(
    engine: Engine, server_settings: Settings, enrollment_token: Callable[[], str]
) -> Iterator[LiveServer]:
    """The ingest API served by uvicorn on a free local port, for agent subprocesses."""
    gate = Gate(create_app(settings=server_settings, engine=engine))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(gate, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    yield LiveServer(f"http://127.0.0.1:{port}", engine, gate, enrollment_token, [thread])
    gate.mode = "open"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
