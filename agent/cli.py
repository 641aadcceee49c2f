"""`redflag-agent`: register, migrate and report, report updates, deliver reports, show status.

Every expected failure (a user mistake, an unreachable server, a missing registration)
is one line on stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from types import FrameType
from typing import IO, Any, NoReturn

import httpx

from agent import AGENT_VERSION
from agent.client import AuthenticationError as ClientAuthenticationError
from agent.client import DeliveryError, IngestClient, normalize_server_url
from agent.delivery import (
    Backoff,
    CheckinLoop,
    Deliverer,
    DeliveryResult,
    clamp_interval,
)
from agent.detection import DetectionOutcome, detect
from agent.events import detection_event, execution_event, update_event
from agent.execution import ExecutionOutcome, execute
from agent.identity import (
    Identity,
    IdentityError,
    load_identity,
    prepare_identity_dir,
    save_identity,
)
from agent.layout import Layout, RootError
from agent.spool import Spool, SpoolKind, gather_spools, open_spool, read_only_spools
from agent.sysinfo import collect_system_info, hostname, machine_id, os_description
from models.vocabulary import EventType
from models.wire import Event, RegistrationRequest

PROG = "redflag-agent"
log = logging.getLogger("agent")
UPDATE_OUTCOMES = {
    "discovered": EventType.UPDATE_DISCOVERED,
    "installed": EventType.UPDATE_INSTALLED,
    "failed": EventType.UPDATE_FAILED,
    "ignored": EventType.UPDATE_IGNORED,
}


class ExitCode(IntEnum):
    OK = 0
    MIGRATION_FAILED = 1
    USAGE = 2
    MIGRATION_PARTIAL = 3
    DELIVERY_INCOMPLETE = 4
    NOT_AUTHORISED = 5
    LOCAL_STATE = 6
    INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure: printed as one line, exit with its code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Runtime:
    """What the commands take from the outside world; tests replace any part of it."""

    http: httpx.Client | None = None
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    stop: threading.Event = field(default_factory=threading.Event)
    stdout: IO[str] | None = None
    stderr: IO[str] | None = None

    def say(self, line: str) -> None:
        (self.stdout or sys.stdout).write(line + "\n")

    def warn(self, line: str) -> None:
        (self.stderr or sys.stderr).write(f"{PROG}: {line}\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --root and -v work before or after the command; SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = _Parser(add_help=False)
    common.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="filesystem prefix under which every agent path is resolved (default: /)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    parser = _Parser(
        prog=PROG,
        description="RedFlag agent: migrate this host's agent layout and report every outcome.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {AGENT_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register = commands.add_parser(
        "register", parents=[common], help="enrol this host with the ingest API"
    )
    register.add_argument("--server", required=True, metavar="URL", help="ingest API base URL")
    register.add_argument(
        "--enrollment-token",
        default=os.environ.get("REDFLAG_ENROLLMENT_TOKEN"),
        metavar="TOKEN",
        help="enrolment token (default: $REDFLAG_ENROLLMENT_TOKEN)",
    )
    register.add_argument("--force", action="store_true", help="replace an existing identity")

    migrate = commands.add_parser(
        "migrate", parents=[common], help="detect and run the migration, then report it"
    )
    migrate.add_argument(
        "--max-wait",
        type=_non_negative,
        default=15.0,
        metavar="SECONDS",
        help="how long to keep retrying delivery before leaving reports queued (default: 15)",
    )

    run = commands.add_parser("run", parents=[common], help="deliver queued reports")
    run.add_argument("--once", action="store_true", help="one check-in, then exit")
    run.add_argument(
        "--max-wait",
        type=_non_negative,
        default=60.0,
        metavar="SECONDS",
        help="with --once: how long to keep retrying (default: 60)",
    )

    update = commands.add_parser(
        "report-update",
        parents=[common],
        help="report a package update outcome (for package manager hooks)",
    )
    update.add_argument("outcome", choices=UPDATE_OUTCOMES, help="what happened to the update")
    update.add_argument("--package", required=True, metavar="NAME", help="the package's name")
    update.add_argument("--from-version", metavar="VERSION", help="the version installed before")
    update.add_argument("--to-version", metavar="VERSION", help="the version offered or installed")
    update.add_argument("--package-manager", metavar="NAME", help="e.g. apt, dnf, zypper")
    update.add_argument(
        "--error", metavar="MESSAGE", help="why the update failed (required with `failed`)"
    )
    update.add_argument(
        "--max-wait",
        type=_non_negative,
        default=15.0,
        metavar="SECONDS",
        help="how long to keep retrying delivery before leaving reports queued (default: 15)",
    )

    status = commands.add_parser("status", parents=[common], help="show identity and queue")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


# --- commands ------------------------------------------------------------------------------


def _layout(args: argparse.Namespace) -> Layout:
    try:
        return Layout.at(getattr(args, "root", "/"))
    except RootError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None


def _identity(layout: Layout) -> Identity | None:
    try:
        return load_identity(layout)
    except IdentityError as exc:
        raise CommandError(str(exc), ExitCode.LOCAL_STATE) from None


def _client(identity_or_url: str, rt: Runtime) -> IngestClient:
    return IngestClient(identity_or_url, http=rt.http, now=rt.now)


def cmd_register(args: argparse.Namespace, rt: Runtime) -> ExitCode:
    layout = _layout(args)
    if not args.enrollment_token:
        raise CommandError(
            "an enrolment token is required: --enrollment-token TOKEN or $REDFLAG_ENROLLMENT_TOKEN",
            ExitCode.USAGE,
        )
    try:
        server = normalize_server_url(args.server)
    except ValueError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    existing = _identity(layout)
    if existing is not None and not args.force:
        raise CommandError(
            f"already registered as agent {existing.agent_id} with {existing.server_url}; "
            "use --force to register again",
            ExitCode.USAGE,
        )
    try:
        prepare_identity_dir(layout)
    except OSError as exc:
        raise CommandError(
            f"cannot write the agent's state directory {layout.reporting_dir}: "
            f"{exc.strerror or exc}; run as the agent's user or fix the permissions",
            ExitCode.LOCAL_STATE,
        ) from None
    os_type, os_name, os_version = os_description(layout)
    info = collect_system_info(layout)
    request = RegistrationRequest(
        hostname=hostname(layout),
        os_type=os_type,
        os_version=f"{os_name} {os_version}".strip(),
        os_architecture=str(info["architecture"]),
        agent_version=AGENT_VERSION,
        machine_id=machine_id(layout),
    )
    with _client(server, rt) as client:
        try:
            response = client.register(args.enrollment_token, request)
        except ClientAuthenticationError as exc:
            raise CommandError(
                f"{exc} (the enrolment token is unknown, spent or expired)",
                ExitCode.NOT_AUTHORISED,
            ) from None
        except DeliveryError as exc:
            raise CommandError(str(exc), ExitCode.DELIVERY_INCOMPLETE) from None
    identity = Identity(
        server_url=server,
        agent_id=response.agent_id,
        agent_token=response.agent_token,
        check_in_interval_seconds=response.check_in_interval_seconds,
        registered_at=rt.now(),
    )
    try:
        save_identity(layout, identity)
    except OSError as exc:
        raise CommandError(
            f"registered as agent {identity.agent_id}, but cannot store the identity in "
            f"{layout.identity_file}: {exc.strerror}; fix the permissions and register "
            "again with a new enrolment token",
            ExitCode.LOCAL_STATE,
        ) from None
    rt.say(f"registered as agent {identity.agent_id} with {server}")
    rt.say(f"identity stored in {layout.identity_file} (mode 0600)")
    if server.startswith("http://") and not _is_loopback(server):
        rt.warn("warning: the server URL is plain http; the agent token travels unencrypted")
    return ExitCode.OK


def _is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


class _Reporter:
    """Spools events, moving to the next spool location if the current one fails."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.spool, self.problems = open_spool(layout)
        self.others = gather_spools(layout, self.spool)

    def note(self) -> dict[str, Any]:
        """Event details that say where the report waited when not in the usual place."""
        if self.spool.kind is SpoolKind.PRIMARY:
            return {}
        return {
            "report_spool": {
                "kind": self.spool.kind.value,
                "location": self.spool.location,
                "why": self.problems[-3:],
            }
        }

    def add(self, event: Event) -> None:
        try:
            self.spool.add(event)
            return
        except sqlite3.Error as exc:
            # A disk can fill between opening and writing: try the next location.
            self.problems.append(f"{self.spool.location}: {exc}")
            log.warning("cannot write spool %s: %s", self.spool.location, exc)
        failed = self.spool
        self.spool, more = open_spool(self.layout, skip={failed.path} if failed.path else set())
        self.problems.extend(more)
        self.others.append(failed)
        self.spool.add(event)

    def spools(self) -> list[Spool]:
        return [self.spool, *self.others]

    def close(self) -> None:
        for spool in self.spools():
            spool.close()


def _outcome_record(event: Event) -> dict[str, Any]:
    return {
        "at": event.timestamp.isoformat(),
        "event_id": str(event.event_id),
        "event_type": event.event_type.value,
        "status": event.status.value,
        "message": event.error_message,
        "migration_from": event.migration_from,
        "migration_to": event.migration_to,
    }


@contextlib.contextmanager
def _migration_lock(spool: Spool) -> Iterator[None]:
    """One migration at a time: a boot-time unit and an admin must not interleave."""
    if spool.path is None:
        yield
        return
    path = spool.path.parent / "migrate.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(
                f"another `{PROG} migrate` is running (lock {path})", ExitCode.LOCAL_STATE
            ) from None
        yield
    finally:
        os.close(fd)


def cmd_migrate(args: argparse.Namespace, rt: Runtime) -> ExitCode:
    layout = _layout(args)
    reporter = _Reporter(layout)
    try:
        with _migration_lock(reporter.spool):
            return _migrate(layout, reporter, args.max_wait, rt)
    finally:
        reporter.close()


def _migrate(layout: Layout, reporter: _Reporter, max_wait: float, rt: Runtime) -> ExitCode:
    if reporter.spool.kind is not SpoolKind.PRIMARY:
        why = reporter.problems[0] if reporter.problems else "unknown reason"
        rt.warn(f"warning: reports are spooled in {reporter.spool.location} ({why})")
    detection = detect(layout, clock=rt.now)
    event = detection_event(
        layout,
        detection,
        system_info=collect_system_info(layout),
        extra=reporter.note(),
        clock=rt.now,
    )
    reporter.add(event)
    last = event
    code = ExitCode.OK
    if detection.outcome is DetectionOutcome.FAILED:
        reason = detection.failure.message if detection.failure else "unknown reason"
        rt.warn(f"migration detection failed: {reason}")
        code = ExitCode.MIGRATION_FAILED
    elif detection.outcome is DetectionOutcome.NOT_NEEDED:
        rt.say(f"no migration needed ({detection.migration_from})")
    else:
        steps = ", ".join(step.value for step in detection.steps)
        rt.say(f"migrating {detection.migration_from} -> {detection.migration_to}: {steps}")
        execution = execute(layout, detection, clock=rt.now)
        last = execution_event(
            execution,
            system_info=collect_system_info(layout),
            extra=reporter.note(),
            clock=rt.now,
        )
        reporter.add(last)
        if execution.outcome is ExecutionOutcome.FAILED:
            rt.warn(f"migration failed: {execution.message}")
            code = ExitCode.MIGRATION_FAILED
        elif execution.outcome is ExecutionOutcome.PARTIAL:
            rt.warn(f"migration partial: {execution.message}")
            code = ExitCode.MIGRATION_PARTIAL
        else:
            rt.say(f"migration succeeded; backup in {execution.backup_path}")
    with contextlib.suppress(sqlite3.Error):
        reporter.spool.put("last_migration", _outcome_record(last))
    _deliver_now(layout, reporter, max_wait, rt)
    return code


def cmd_report_update(args: argparse.Namespace, rt: Runtime) -> ExitCode:
    layout = _layout(args)
    event_type = UPDATE_OUTCOMES[args.outcome]
    error = (args.error or "").strip() or None
    if event_type is EventType.UPDATE_FAILED and error is None:
        raise CommandError("a failed update needs --error MESSAGE saying why", ExitCode.USAGE)
    if event_type is not EventType.UPDATE_FAILED and error is not None:
        raise CommandError("--error is only for a failed update", ExitCode.USAGE)
    reporter = _Reporter(layout)
    try:
        event = update_event(
            event_type,
            package=args.package,
            from_version=args.from_version,
            to_version=args.to_version,
            package_manager=args.package_manager,
            error_message=error,
            system_info=collect_system_info(layout),
            extra=reporter.note(),
            clock=rt.now,
        )
        reporter.add(event)
        rt.say(f"recorded {event_type.value} for {args.package}")
        _deliver_now(layout, reporter, args.max_wait, rt)
    finally:
        reporter.close()
    return ExitCode.OK


def _deliver_now(layout: Layout, reporter: _Reporter, max_wait: float, rt: Runtime) -> None:
    """Try to deliver at once; a failure here leaves the reports queued, never lost."""
    try:
        identity = load_identity(layout)
    except IdentityError as exc:
        rt.warn(f"reports stay queued: {exc}")
        return
    queued = _queued(reporter.spools())
    if identity is None:
        rt.warn(
            f"not registered: {queued} reports stay queued in {reporter.spool.location}; "
            f"run `{PROG} register` and then `{PROG} run`"
        )
        return
    result = _deliver_all(layout, identity, reporter.spools(), max_wait, rt, heartbeat=False)
    _print_delivery(result, rt)


def _deliver_all(
    layout: Layout,
    identity: Identity,
    spools: Sequence[Spool],
    max_wait: float,
    rt: Runtime,
    *,
    heartbeat: bool,
    backoff: Backoff | None = None,
) -> DeliveryResult:
    """Deliver from each spool in turn, adding up the results."""
    total = DeliveryResult()
    with _client(identity.server_url, rt) as client:
        deliverer = Deliverer(
            client,
            identity,
            system_info=lambda: collect_system_info(layout),
            sleep=rt.sleep,
            monotonic=rt.monotonic,
            backoff=backoff or Backoff(rng=rt.rng),
        )
        for index, spool in enumerate(spools):
            try:
                result = deliverer.deliver(
                    spool, max_wait=max_wait, heartbeat=heartbeat and index == 0
                )
            except sqlite3.Error as exc:
                # One broken spool (a full disk under it) must not hold up the others.
                log.warning("cannot deliver from %s: %s", spool.location, exc)
                total.error = total.error or f"spool {spool.location}: {exc}"
                continue
            _add_up(total, result)
            if result.error:
                break
        total.remaining = _queued(spools)
    return total


def _queued(spools: Sequence[Spool]) -> int:
    total = 0
    for spool in spools:
        with contextlib.suppress(sqlite3.Error):
            total += spool.counts().queued
    return total


def _add_up(total: DeliveryResult, result: DeliveryResult) -> None:
    total.requests += result.requests
    total.accepted += result.accepted
    total.duplicates += result.duplicates
    total.rejected += result.rejected
    total.error = total.error or result.error
    total.auth_failed = total.auth_failed or result.auth_failed
    total.retry_delay = result.retry_delay if result.retry_delay is not None else total.retry_delay
    total.interval_seconds = result.interval_seconds or total.interval_seconds


def _print_delivery(result: DeliveryResult, rt: Runtime) -> None:
    delivered = result.accepted + result.duplicates
    line = (
        f"delivered {delivered} reports (accepted {result.accepted}, duplicates "
        f"{result.duplicates}, rejected {result.rejected}); {result.remaining} queued"
    )
    rt.say(line)
    if result.rejected:
        rt.warn(f"the server rejected {result.rejected} reports; see `{PROG} status`")
    if result.error:
        rt.warn(f"reports stay queued: {result.error}")


def cmd_run(args: argparse.Namespace, rt: Runtime) -> ExitCode:
    layout = _layout(args)
    identity = _identity(layout)
    if identity is None:
        raise CommandError(
            f"not registered; run `{PROG} register --server URL --enrollment-token TOKEN` first",
            ExitCode.NOT_AUTHORISED,
        )
    if args.once:
        reporter = _Reporter(layout)
        try:
            result = _deliver_all(
                layout, identity, reporter.spools(), args.max_wait, rt, heartbeat=True
            )
        finally:
            reporter.close()
        _print_delivery(result, rt)
        if result.auth_failed:
            return ExitCode.NOT_AUTHORISED
        return ExitCode.OK if result.complete else ExitCode.DELIVERY_INCOMPLETE
    return _run_forever(layout, identity, rt)


def _run_forever(layout: Layout, identity: Identity, rt: Runtime) -> ExitCode:
    state = {"identity": identity}
    backoff = Backoff(rng=rt.rng)

    def deliver_once() -> DeliveryResult:
        with contextlib.suppress(IdentityError):
            state["identity"] = load_identity(layout) or state["identity"]
        reporter = _Reporter(layout)
        try:
            return _deliver_all(
                layout,
                state["identity"],
                reporter.spools(),
                0.0,
                rt,
                heartbeat=True,
                backoff=backoff,
            )
        finally:
            reporter.close()

    def report(result: DeliveryResult) -> None:
        if result.error:
            log.warning("check-in failed: %s", result.error)
        else:
            log.info(
                "checked in: %d accepted, %d duplicates, %d rejected",
                result.accepted,
                result.duplicates,
                result.rejected,
            )

    loop = CheckinLoop(
        deliver_once=deliver_once,
        stop=rt.stop,
        rng=rt.rng,
        default_interval=clamp_interval(identity.check_in_interval_seconds, 300),
        on_result=report,
    )
    with _stop_on_signals(rt.stop):
        log.info(
            "check-in loop started: %s as agent %s, every %d s",
            identity.server_url,
            identity.agent_id,
            loop.default_interval,
        )
        loop.run()
    return ExitCode.OK


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT end the loop between check-ins, not in the middle of one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_status(args: argparse.Namespace, rt: Runtime) -> ExitCode:
    layout = _layout(args)
    status = collect_status(layout)
    if args.json:
        rt.say(json.dumps(status, indent=2))
    else:
        for line in format_status(status):
            rt.say(line)
    return ExitCode.OK


def collect_status(layout: Layout) -> dict[str, Any]:
    """Identity, queues and last outcomes, read without changing anything."""
    status: dict[str, Any] = {"root": str(layout.root), "agent_version": AGENT_VERSION}
    try:
        identity = load_identity(layout)
    except IdentityError as exc:
        status["identity"] = {"error": str(exc)}
    else:
        status["identity"] = (
            None
            if identity is None
            else {
                "agent_id": str(identity.agent_id),
                "server_url": identity.server_url,
                "registered_at": identity.registered_at.isoformat(),
                "file": str(layout.identity_file),
            }
        )
    spools: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    for path, spool, error in read_only_spools(layout):
        if spool is None:
            spools.append({"location": str(path), "error": error})
            continue
        with spool:
            counts = spool.counts()
            spools.append(
                {
                    "location": str(path),
                    "kind": spool.kind.value,
                    "queued": counts.queued,
                    "queued_bytes": counts.queued_bytes,
                    "rejected": counts.rejected,
                    "dropped": counts.dropped,
                    "rejected_events": [
                        {
                            "event_id": r.event_id,
                            "event_type": r.event_type,
                            "reason": r.reason,
                            "rejected_at": r.rejected_at,
                        }
                        for r in spool.rejected(limit=5)
                    ],
                }
            )
            for key in ("last_checkin", "last_error", "last_migration"):
                value = spool.get(key)
                if value and str(value.get("at", "")) > str((last.get(key) or {}).get("at", "")):
                    last[key] = value
    status["spools"] = spools
    status["queued"] = sum(s.get("queued", 0) for s in spools)
    status["rejected"] = sum(s.get("rejected", 0) for s in spools)
    status["dropped"] = sum(s.get("dropped", 0) for s in spools)
    status["last_checkin"] = last.get("last_checkin")
    status["last_error"] = last.get("last_error")
    status["last_migration"] = last.get("last_migration")
    return status


def format_status(status: dict[str, Any]) -> list[str]:
    lines = [f"root:            {status['root']}"]
    identity = status["identity"]
    if identity is None:
        lines.append("identity:        not registered")
    elif "error" in identity:
        lines.append(f"identity:        unusable: {identity['error']}")
    else:
        lines.append(f"agent id:        {identity['agent_id']}")
        lines.append(f"server:          {identity['server_url']}")
        lines.append(f"registered at:   {identity['registered_at']}")
    lines.append(
        f"reports:         {status['queued']} queued, {status['rejected']} rejected, "
        f"{status['dropped']} dropped when the spool was full"
    )
    for spool in status["spools"]:
        if "error" in spool:
            lines.append(f"  spool {spool['location']}: unreadable: {spool['error']}")
        else:
            lines.append(
                f"  spool {spool['location']} ({spool['kind']}): {spool['queued']} queued, "
                f"{spool['rejected']} rejected, {spool['dropped']} dropped"
            )
            for rejected in spool["rejected_events"]:
                lines.append(
                    f"    rejected {rejected['event_type']} {rejected['event_id']}: "
                    f"{rejected['reason']}"
                )
    checkin = status["last_checkin"]
    lines.append(
        "last check-in:   "
        + (
            f"{checkin['at']} ({checkin['accepted']} accepted, {checkin['duplicates']} "
            f"duplicates, {checkin['rejected']} rejected)"
            if checkin
            else "never"
        )
    )
    if status["last_error"]:
        lines.append(
            f"last error:      {status['last_error']['at']}: {status['last_error']['error']}"
        )
    migration = status["last_migration"]
    if migration:
        message = f": {migration['message']}" if migration.get("message") else ""
        lines.append(f"last migration:  {migration['at']} {migration['event_type']}{message}")
    else:
        lines.append("last migration:  never run")
    return lines


# --- entry point ---------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[argparse.Namespace, Runtime], ExitCode]] = {
    "register": cmd_register,
    "migrate": cmd_migrate,
    "run": cmd_run,
    "report-update": cmd_report_update,
    "status": cmd_status,
}


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger("agent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None, runtime: Runtime | None = None) -> int:
    """Run one command; returns the exit code (see docs/AGENT.md)."""
    rt = runtime or Runtime()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: already printed
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    verbosity = getattr(args, "verbose", 0)
    _configure_logging(verbosity)
    try:
        return int(_COMMANDS[args.command](args, rt))
    except CommandError as exc:
        rt.warn(f"error: {exc}")
        return int(exc.code)
    except KeyboardInterrupt:
        rt.warn("interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: still one line, the traceback only when asked for
        log.debug("unexpected error", exc_info=True)
        hint = "" if verbosity >= 2 else " (run with -vv for the traceback)"
        rt.warn(f"internal error: {type(exc).__name__}: {exc}{hint}")
        return int(ExitCode.MIGRATION_FAILED)


__all__ = ["ExitCode", "Runtime", "main"]
