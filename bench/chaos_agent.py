"""One agent of the chaos run: the real `redflag-agent` commands in a loop, with a ledger.

Run by `bench.chaos` as `python -m bench.chaos_agent --root DIR --ledger FILE ...`, one or
two processes per sandboxed host; the harness kills them with SIGKILL at random and starts
them again.
Each loop runs one command of the agent's own command line in this process (mostly
`report-update`, sometimes `migrate` or `run --once`), so every event goes through the
agent's real spool and delivery code.

Three small hooks record what the harness needs, and change nothing the agent does:
- the ledger: `P <event id>` (fsynced) before the spool commits an event and `S <event id>`
  (fsynced) once the commit returned. A kill between the two leaves a `P` alone; the harness
  settles it from the spool and the database before this process runs again
  (`bench.chaos.settle_ledger`).
- the phase byte: `-` starting, `I` idle, `S` spooling, `D` delivering, `R` a check-in in
  flight, so that the harness can kill the agent in the middle of a delivery.
- the stats file: one line per check-in answer (`ok ACCEPTED DUPLICATES`, `err STATUS`).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from agent.cli import Runtime
from agent.cli import main as agent_main
from agent.client import DeliveryError, IngestClient
from agent.delivery import Deliverer, DeliveryResult
from agent.layout import Layout
from agent.spool import Spool
from models.wire import CheckinResponse, Event

OUTCOMES = ("discovered", "installed", "installed", "installed", "failed", "ignored")
PACKAGES = ("openssl", "curl", "nginx", "postgresql-15", "python3", "tzdata", "libc6", "bash")


class AppendFile:
    """An append-only file of short lines, each line fsynced when asked."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.durable = durable

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())
        if self.durable:
            os.fsync(self.fd)


class PhaseByte:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def set(self, phase: bytes) -> None:
        os.pwrite(self.fd, phase, 0)


def install_hooks(ledger: AppendFile, phase: PhaseByte, stats: AppendFile) -> None:
    """Wrap the agent's spool, delivery and client at their seams; behaviour is unchanged."""
    spool_add = Spool.add
    deliver = Deliverer.deliver
    checkin = IngestClient.checkin

    def ledgered_add(self: Spool, event: Event) -> None:
        event_id = str(event.event_id)
        ledger.line(f"P {event_id}")
        phase.set(b"S")
        spool_add(self, event)
        ledger.line(f"S {event_id}")
        phase.set(b"I")

    def phased_deliver(self: Deliverer, spool: Spool, **options: Any) -> DeliveryResult:
        phase.set(b"D")
        try:
            return deliver(self, spool, **options)
        finally:
            phase.set(b"I")

    def counted_checkin(
        self: IngestClient, agent_id: UUID, agent_token: str, body: bytes
    ) -> CheckinResponse:
        phase.set(b"R")
        try:
            response = checkin(self, agent_id, agent_token, body)
        except DeliveryError as exc:
            stats.line(f"err {exc.status if exc.status is not None else 'net'}")
            raise
        finally:
            phase.set(b"D")
        stats.line(f"ok {response.accepted} {response.duplicates}")
        return response

    Spool.add = ledgered_add  # type: ignore[method-assign]
    Deliverer.deliver = phased_deliver  # type: ignore[method-assign]
    IngestClient.checkin = counted_checkin  # type: ignore[method-assign]


def next_command(rng: random.Random, max_wait: float) -> list[str]:
    """One agent command line: mostly update reports, some migrations and plain deliveries."""
    wait = f"{rng.uniform(0, max_wait):.2f}"
    roll = rng.random()
    if roll < 0.15:
        return ["migrate", "--max-wait", wait]
    if roll < 0.25:
        return ["run", "--once", "--max-wait", wait]
    outcome = rng.choice(OUTCOMES)
    package = rng.choice(PACKAGES)
    minor = rng.randrange(100)
    command = [
        "report-update",
        outcome,
        "--package",
        package,
        "--from-version",
        f"1.{minor}",
        "--to-version",
        f"1.{minor + 1}",
        "--package-manager",
        "apt",
        "--max-wait",
        wait,
    ]
    if outcome == "failed":
        command += ["--error", f"E: Sub-process /usr/bin/dpkg returned an error code ({minor})"]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_agent", description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--phase", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--stop", type=Path, required=True, help="exit once this file exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pace", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    parser.add_argument("--max-wait", type=float, default=3.0)
    args = parser.parse_args(argv)

    phase = PhaseByte(args.phase)
    install_hooks(
        AppendFile(args.ledger, durable=True), phase, AppendFile(args.stats, durable=False)
    )
    rng = random.Random(args.seed)
    # The harness starts the agents while it registers them: wait for the identity.
    identity = Layout.at(args.root).identity_file
    while not identity.exists() and not args.stop.exists():
        time.sleep(0.05)
    with open(os.devnull, "w") as quiet:
        phase.set(b"I")  # ready
        while not args.stop.exists():
            command = next_command(rng, args.max_wait)
            agent_main(["--root", str(args.root), *command], Runtime(stdout=quiet))
            time.sleep(rng.uniform(*args.pace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
