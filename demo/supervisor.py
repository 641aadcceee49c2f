"""`redflag-demo`'s supervisor: database, ingest API, console and a living fleet, then cleanup.

State lives under one directory (`./var/demo` by default): the host sandboxes, the fleet
manifest that lets a second run reuse them, the console password (mode 0600) and the logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tqdm import tqdm

from console.passwords import hash_password
from demo.confinement import (
    AgentUser,
    AgentUserMode,
    TinyDisk,
    choose_agent_user,
    find_tiny_disk,
)
from demo.driver import AgentRunner, DriverSettings, FleetDriver, FleetHost
from demo.fleet import (
    HostKind,
    HostSpec,
    build_host,
    describe_plan,
    plan_host,
    substitute_kinds,
)
from demo.layouts import remove_tree
from demo.services import (
    PROJECT_ROOT,
    RUN_MARKER,
    Service,
    ServiceError,
    ensure_port_free,
    marked_processes,
    python_module,
    run_command,
    start_service,
)
from models.database import create_db_engine, describe_url, normalise_url, write_transaction
from models.settings import DEFAULT_DATABASE_URL
from models.tables import AGENT_TABLE, ENROLLMENT_TOKEN_TABLE

LOCALHOST = "127.0.0.1"
DEMO_NOTE = "redflag-demo"
MANIFEST_FORMAT = 1
FLEET_SEED = 7
CONSOLE_APP = PROJECT_ROOT / "console" / "app.py"


class DemoError(Exception):
    """The demo cannot run as asked; the message is one line for the user."""


@dataclass
class DemoOptions:
    hosts: int = 50
    database_url: str | None = None
    api_port: int = 8000
    console_port: int = 8501
    console: bool = True
    reset: bool = False
    duration: float | None = None
    concurrency: int = 4
    state_dir: Path = Path("var/demo")


def check_in_interval(hosts: int) -> int:
    """About one check-in per second across the fleet, within the server's 60-3600 s."""
    return min(3600, max(60, hosts))


def join_window(hosts: int) -> float:
    """New hosts join over a minute and a half, longer for fleets too big to seed that fast."""
    return float(max(90, hosts))


def absolute_database_url(url: str, base: Path) -> str:
    """The URL with a relative SQLite path made absolute, so every process agrees on it."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        raise DemoError(f"malformed database URL: {url!r}") from None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return url
    if database.startswith("file:") or os.path.isabs(database):
        return url
    absolute = (base / database).resolve()
    return parsed.set(database=str(absolute)).render_as_string(hide_password=False)


@dataclass
class Supervisor:
    options: DemoOptions
    out: TextIO = sys.stdout
    stop: threading.Event = field(default_factory=threading.Event)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    services: list[Service] = field(default_factory=list)
    driver: FleetDriver | None = None
    muted: bool = False

    def say(self, line: str = "") -> None:
        if self.muted:
            return
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except OSError:
            # Whoever read the output has gone (a closed pipe): carry on quietly, and
            # above all still clean up at the end.
            self.muted = True

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        state_dir = options.state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(state_dir / "supervisor.lock"), self._signals():
            try:
                self._run(state_dir)
            finally:
                self._shutdown()
        return 0

    def _run(self, state_dir: Path) -> None:
        options = self.options
        url = absolute_database_url(
            options.database_url or os.environ.get("REDFLAG_DATABASE_URL") or DEFAULT_DATABASE_URL,
            Path.cwd(),
        )
        console = options.console and CONSOLE_APP.is_file()
        if options.console and not console:
            self.say(f"note: {CONSOLE_APP} does not exist yet, so the console is not started")
        ensure_port_free(LOCALHOST, options.api_port, "--api-port")
        if console:
            ensure_port_free(LOCALHOST, options.console_port, "--console-port")
        interval = check_in_interval(options.hosts)
        environment = {
            **os.environ,
            RUN_MARKER: self.run_id,
            "REDFLAG_DATABASE_URL": url,
            "REDFLAG_CHECK_IN_INTERVAL_SECONDS": str(interval),
        }
        where = _describe(url)
        self.say(f"database {where}")
        run_command(
            python_module("ingest_api.cli", "db", "upgrade"),
            what="upgrading the database",
            environment=environment,
        )
        server_url = f"http://{LOCALHOST}:{options.api_port}"
        if options.reset:
            removed = forget_demo_agents(url)
            _wipe(state_dir)
            self.say(f"reset: removed {removed} demo agents and their events, and {state_dir}")
        manifest = Manifest.load(state_dir / "fleet.json")
        manifest.check(server_url=server_url, database=where)
        missing = unknown_agents(url, manifest.agent_ids())
        if missing:
            raise DemoError(
                f"the database {where} no longer knows {missing} of the demo's enrolled hosts "
                f"in {state_dir}; start over with --reset (make demo-reset)"
            )

        # The services take seconds to boot: lay the fleet out and enrol meanwhile.
        self._start_api(environment, state_dir, server_url)
        password = console_password(state_dir / "console-password")
        user = os.environ.get("REDFLAG_CONSOLE_ADMIN_USER") or "admin"
        if console:
            self._start_console(environment, state_dir, user, password)
        hosts_dir = state_dir / "hosts"
        hosts_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(hosts_dir, 0o755)
        agent_user = choose_agent_user(hosts_dir)
        tiny_disk = find_tiny_disk(state_dir / "probe" / "disk")
        manifest.check_agent_user(agent_user.mode)
        hosts = self._lay_out(
            manifest, hosts_dir, agent_user, self._substitutes(agent_user, tiny_disk)
        )
        token = self._enrolment_token(hosts, environment)
        for service in self.services:
            service.wait_healthy(stopping=self.stop.is_set)

        self._banner(server_url, console, user, password, state_dir, hosts, interval)
        joining = sum(1 for host in hosts if not host.seeded)
        settings = DriverSettings(
            concurrency=options.concurrency,
            interval=interval,
            join_window=join_window(len(hosts)) * joining / max(1, len(hosts)),
        )
        progress = _Progress(joining, self.say)
        self.driver = FleetDriver(
            hosts,
            AgentRunner(server_url, agent_user, tiny_disk),
            enrollment_token=token,
            log_dir=state_dir / "logs" / "hosts",
            settings=settings,
            on_seeded=lambda host: progress.advance(),
            environment=environment,
        )
        manifest.update(
            server_url=server_url,
            database=where,
            agent_user=agent_user.mode,
            hosts=[host.to_json() for host in hosts],
        )
        self._drive(self.driver, manifest, progress, url)

    def _start_api(self, environment: dict[str, str], state_dir: Path, server_url: str) -> None:
        command = python_module(
            "ingest_api.cli", "serve", "--host", LOCALHOST, "--port", str(self.options.api_port),
            "--log-level", "warning",
        )  # fmt: skip
        self._start(
            "ingest API", command, environment, state_dir / "logs" / "api.log",
            f"{server_url}/healthz",
        )  # fmt: skip

    def _start_console(
        self, environment: dict[str, str], state_dir: Path, user: str, password: str
    ) -> None:
        port = str(self.options.console_port)
        self._start(
            "console",
            python_module("console.cli", "--host", LOCALHOST, "--port", port),
            {
                **environment,
                "REDFLAG_CONSOLE_AUTH": "password",
                "REDFLAG_CONSOLE_ADMIN_USER": user,
                "REDFLAG_CONSOLE_ADMIN_PASSWORD_HASH": hash_password(password),
            },
            state_dir / "logs" / "console.log",
            f"http://{LOCALHOST}:{port}/_stcore/health",
        )

    def _enrolment_token(self, hosts: list[FleetHost], environment: dict[str, str]) -> str | None:
        """One token for every host still to enrol (and a few spare), from the real CLI."""
        unregistered = sum(1 for host in hosts if host.agent_id is None)
        if not unregistered:
            return None
        command = python_module(
            "ingest_api.cli", "enroll", "create", "--uses", str(unregistered + 5),
            "--expires-in", "24h", "--note", DEMO_NOTE,
        )  # fmt: skip
        output = run_command(command, what="creating an enrolment token", environment=environment)
        return output.strip().splitlines()[-1]

    def _start(
        self, name: str, command: list[str], environment: dict[str, str], log: Path, health: str
    ) -> None:
        self.services.append(
            start_service(name, command, environment=environment, log=log, health_url=health)
        )

    def _substitutes(self, user: AgentUser, tiny_disk: TinyDisk | None) -> dict[HostKind, HostKind]:
        substitutes = substitute_kinds(user, tiny_disk)
        if HostKind.DISK_FULL in substitutes:
            self.say(
                "note: this machine cannot mount a tiny filesystem (no unshare, or no mount "
                "namespaces), so the demo has no disk-full hosts"
            )
        if HostKind.LOOSE_SECRET in substitutes:
            self.say(
                "note: not running as root, so no host has a key the agent cannot tighten; "
                "those partial migrations leave a legacy directory behind instead"
            )
        return substitutes

    def _lay_out(
        self,
        manifest: Manifest,
        hosts_dir: Path,
        user: AgentUser,
        substitutes: dict[HostKind, HostKind],
    ) -> list[FleetHost]:
        hosts: list[FleetHost] = []
        for index in range(self.options.hosts):
            spec = plan_host(index, seed=FLEET_SEED, substitutes=substitutes)
            recorded = manifest.host(index)
            if recorded is not None:
                spec = HostSpec(
                    index, recorded["hostname"], HostKind(recorded["kind"]), spec.os, spec.seed
                )
            host = FleetHost(spec, hosts_dir / spec.hostname)
            if recorded is not None:
                host.agent_id = recorded.get("agent_id")
                host.migrate_exit = recorded.get("migrate_exit")
            hosts.append(host)
        missing = [host for host in hosts if not host.root.exists()]
        if missing:
            self.say(f"laying out {len(missing)} sandbox hosts in {hosts_dir}")
            for host in tqdm(missing, unit="host", disable=not sys.stderr.isatty()):
                if self.stop.is_set():
                    raise DemoError("interrupted while laying out hosts")
                _build_atomically(host, user)
        kinds = describe_plan([host.spec for host in hosts])
        self.say("fleet: " + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))
        return hosts

    def _banner(
        self,
        server_url: str,
        console: bool,
        user: str,
        password: str,
        state_dir: Path,
        hosts: list[FleetHost],
        interval: int,
    ) -> None:
        joining = sum(1 for host in hosts if not host.seeded)
        self.say()
        self.say("RedFlag demo is running")
        if console:
            self.say(f"  console     http://{LOCALHOST}:{self.options.console_port}")
            self.say(f"  login       user {user}, password {password}")
            self.say(f"              (kept in {state_dir / 'console-password'}, mode 0600)")
        self.say(f"  ingest API  {server_url}  (API docs at {server_url}/docs)")
        self.say(
            f"  fleet       {len(hosts)} sandbox hosts in {state_dir / 'hosts'}; "
            f"{joining} joining now, each checks in every {interval} s"
        )
        self.say(f"  logs        {state_dir / 'logs'}")
        if self.options.duration is not None:
            self.say(f"Stops by itself after {self.options.duration:g} s, or at Ctrl-C.")
        self.say("Press Ctrl-C to stop: that stops every process the demo started.")
        self.say()

    def _drive(
        self, driver: FleetDriver, manifest: Manifest, progress: _Progress, url: str
    ) -> None:
        deadline = (
            time.monotonic() + self.options.duration if self.options.duration is not None else None
        )
        driver.start()
        summarised = warned = unsaved = False
        saved_at = 0.0
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for service in self.services:
                if service.process.poll() is not None:
                    raise ServiceError(
                        f"the {service.name} stopped unexpectedly (log: {service.log})"
                    )
            wait = driver.step()
            now = time.monotonic()
            unsaved = driver.take_changed() or unsaved
            if unsaved and now - saved_at > 2:
                manifest.update(hosts=driver.state())
                unsaved, saved_at = False, now
            if driver.counters.not_authorised and not warned:
                self.say(
                    "warning: the server refused some demo hosts' check-ins (401): the "
                    "database no longer knows them; start over with --reset"
                )
                warned = True
            if not summarised and all(host.seeded for host in driver.hosts):
                progress.close()
                self.say(fleet_line(url))
                self.say("every host has joined; the fleet keeps checking in")
                summarised = True
            self.stop.wait(min(wait, 0.25))
        progress.close()
        manifest.update(hosts=driver.state())

    # --- stopping ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if not self.services:
            return
        self.say("stopping the fleet and the services")
        interrupted = 0
        try:
            if self.driver is not None:
                interrupted = self.driver.stop()
        finally:
            for service in reversed(self.services):
                service.stop()
            leftovers = marked_processes(self.run_id)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.driver is not None:
            self.say(f"the fleet ran {self.driver.counters.describe()}")
        names = " and the ".join(service.name for service in self.services)
        agents = "agent that was" if interrupted == 1 else "agents that were"
        running = f" (and {interrupted} {agents} running)" if interrupted else ""
        if leftovers:
            self.say(f"stopped the {names}{running}; killed {len(leftovers)} stray processes")
        else:
            self.say(f"stopped the {names}{running}; no process is left")

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        chosen = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, handler) for sig in chosen}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# --- the fleet manifest -----------------------------------------------------------------------


@dataclass
class Manifest:
    """What a previous run built and enrolled, so that the next one can reuse it."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise DemoError(f"cannot read {path} ({exc}); start over with --reset") from None
        if data.get("format") != MANIFEST_FORMAT:
            raise DemoError(f"{path} is from another version of the demo; use --reset")
        return cls(path, data)

    def check(self, *, server_url: str, database: str) -> None:
        if not self.data:
            return
        if self.data.get("database") != database:
            raise DemoError(
                f"the demo hosts in {self.path.parent} are enrolled in {self.data.get('database')}"
                f", not {database}; use the same --database-url, or --reset"
            )
        if self.data.get("server_url") != server_url:
            raise DemoError(
                f"the demo hosts in {self.path.parent} report to {self.data.get('server_url')}; "
                f"use the same --api-port, or --reset"
            )

    def check_agent_user(self, mode: AgentUserMode) -> None:
        recorded = self.data.get("agent_user")
        if recorded and recorded != mode.value:
            raise DemoError(
                f"the demo hosts in {self.path.parent} were laid out for agents running as "
                f"{recorded}, but this run would use {mode.value}; use --reset"
            )

    def host(self, index: int) -> dict[str, Any] | None:
        for host in self.data.get("hosts", []):
            if host.get("index") == index:
                return dict(host)
        return None

    def agent_ids(self) -> list[str]:
        return [h["agent_id"] for h in self.data.get("hosts", []) if h.get("agent_id")]

    def update(self, **changes: Any) -> None:
        hosts = changes.pop("hosts", None)
        self.data.update({k: (v.value if hasattr(v, "value") else v) for k, v in changes.items()})
        self.data["format"] = MANIFEST_FORMAT
        if hosts is not None:
            merged = {h["index"]: h for h in self.data.get("hosts", [])}
            merged.update({h["index"]: h for h in hosts})
            self.data["hosts"] = [merged[i] for i in sorted(merged)]
        _write_json(self.path, self.data)


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


# --- database helpers --------------------------------------------------------------------------


def forget_demo_agents(url: str) -> int:
    """Delete the agents enrolled with demo tokens (their events go with them) and the tokens."""
    engine = create_db_engine(url)
    try:
        demo_tokens = sa.select(ENROLLMENT_TOKEN_TABLE.c.id).where(
            ENROLLMENT_TOKEN_TABLE.c.note == DEMO_NOTE
        )
        with write_transaction(engine) as connection:
            removed = connection.execute(
                sa.delete(AGENT_TABLE).where(AGENT_TABLE.c.enrollment_token_id.in_(demo_tokens))
            ).rowcount
            connection.execute(
                sa.delete(ENROLLMENT_TOKEN_TABLE).where(ENROLLMENT_TOKEN_TABLE.c.note == DEMO_NOTE)
            )
    finally:
        engine.dispose()
    return int(removed or 0)


def unknown_agents(url: str, agent_ids: list[str]) -> int:
    """How many of these agent ids the database does not hold."""
    if not agent_ids:
        return 0
    wanted = {uuid.UUID(agent_id) for agent_id in agent_ids}
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            known = set(
                connection.scalars(sa.select(AGENT_TABLE.c.id).where(AGENT_TABLE.c.id.in_(wanted)))
            )
    finally:
        engine.dispose()
    return len(wanted - known)


def _describe(url: str) -> str:
    engine = create_db_engine(url)
    engine.dispose()
    return describe_url(engine)


def fleet_line(url: str) -> str:
    """Agents per migration state, as the console's fleet overview counts them."""
    # pandas and pyarrow take a second to import; the summary is printed once, late.
    from models.analytics import fleet_summary

    summary = fleet_summary(url)
    states = ", ".join(
        f"{count} {state.value.replace('_', ' ')}"
        for state, count in summary.by_state.items()
        if count
    )
    return f"fleet: {summary.agents} agents: {states}"


# --- files ---------------------------------------------------------------------------------------


def console_password(path: Path) -> str:
    """The demo console's password: made once, kept owner-only, reused by later runs."""
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if password:
        os.chmod(path, 0o600)
        return password
    password = secrets.token_urlsafe(12)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w") as out:
        out.write(password + "\n")
    return password


def _build_atomically(host: FleetHost, user: AgentUser) -> None:
    """Lay a host out beside its place, then rename it in: a crash never leaves half a host."""
    staging = Path(tempfile.mkdtemp(prefix=f".{host.hostname}-", dir=host.root.parent))
    try:
        build_host(host.spec, staging, user)
        staging.rename(host.root)
    except BaseException:
        remove_tree(staging)
        raise


def _wipe(state_dir: Path) -> None:
    """Everything under the state directory except the lock this run holds."""
    for entry in state_dir.iterdir():
        if entry.name == "supervisor.lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another redflag-demo is running with {path.parent}; stop it first"
            ) from None
        yield
    finally:
        os.close(descriptor)


# --- progress -------------------------------------------------------------------------------------


class _Progress:
    """Hosts that joined so far: a bar on a terminal, a line per tenth otherwise."""

    def __init__(self, total: int, say: Callable[[str], None]) -> None:
        self.total = total
        self.done = 0
        self.say = say
        self.bar: tqdm[Any] | None = None
        if total and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc="hosts joining", unit="host", file=sys.stderr)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        step = max(1, math.ceil(self.total / 10))
        if self.done % step == 0 or self.done == self.total:
            self.say(f"hosts joined: {self.done}/{self.total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
