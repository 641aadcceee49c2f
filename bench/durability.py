"""`python -m bench.durability`: what SQLite's `synchronous=FULL` would cost the server.

The engine factory runs SQLite in WAL mode with `synchronous=NORMAL`: a commit survives a
crash of the process but not necessarily a power loss (docs/RELIABILITY.md). FULL syncs the
WAL at every commit. This measures check-in transactions (the server's own `store_events`
in `write_transaction`, one transaction per check-in) on one file of this machine's disk
with each setting, for single-event check-ins and batches of 100, one writer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.report import environment
from ingest_api.service import create_enrollment_token, register_agent
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database
from models.store import store_events
from models.vocabulary import EventType, Status
from models.wire import Event, RegistrationRequest


def _events(count: int) -> list[Event]:
    now = datetime.now(UTC)
    return [
        Event(
            event_id=uuid.uuid4(),
            event_type=EventType.UPDATE_INSTALLED,
            status=Status.SUCCESS,
            error_message=None,
            timestamp=now,
            system_info={"hostname": "bench-01", "os_type": "linux", "free_bytes": 123456789},
            details={"package": "openssl", "from_version": "3.0.1", "to_version": "3.0.2"},
        )
        for _ in range(count)
    ]


def measure(directory: Path, synchronous: str, batch: int, seconds: float) -> dict[str, Any]:
    engine = create_db_engine(f"sqlite:///{directory}/{synchronous.lower()}-{batch}.db")

    @sa.event.listens_for(engine, "connect")
    def _synchronous(dbapi_connection: Any, _record: Any) -> None:
        # Runs after the factory's own tuning, so this setting wins.
        dbapi_connection.execute(f"PRAGMA synchronous={synchronous}")

    upgrade_database(engine)
    with write_transaction(engine) as connection:
        token = create_enrollment_token(connection, uses=1, ttl=timedelta(hours=1)).token
        agent = register_agent(
            connection,
            enrollment_token=token,
            request=RegistrationRequest(
                hostname="bench-01",
                os_type="linux",
                os_version="Debian 12",
                os_architecture="x86_64",
                agent_version="0.2.0",
            ),
        )
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        events = _events(batch)
        started = time.perf_counter()
        with write_transaction(engine) as connection:
            store_events(
                connection, agent_id=agent.agent_id, events=events, received_at=datetime.now(UTC)
            )
        latencies.append(time.perf_counter() - started)
    engine.dispose()
    elapsed = sum(latencies)
    latencies.sort()
    return {
        "synchronous": synchronous,
        "batch": batch,
        "transactions/s": len(latencies) / elapsed,
        "events/s": len(latencies) * batch / elapsed,
        "p50 ms": statistics.median(latencies) * 1000,
        "p99 ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the databases go (default: /tmp)"
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="redflag-durability-", dir=args.dir) as directory:
        for batch in (1, 100):
            for synchronous in ("NORMAL", "FULL"):
                rows.append(measure(Path(directory), synchronous, batch, args.seconds))
    for name, value in environment().items():
        print(f"- {name}: {value}")
    print(f"- databases in: {args.dir or tempfile.gettempdir()}")
    print()
    print("| synchronous | events per check-in | check-ins/s | events/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['synchronous']} | {row['batch']} | {row['transactions/s']:,.0f} | "
            f"{row['events/s']:,.0f} | {row['p50 ms']:.2f} | {row['p99 ms']:.2f} |"
        )
    for batch in (1, 100):
        normal, full = (r for r in rows if r["batch"] == batch)
        cost = 1 - full["events/s"] / normal["events/s"]
        print(f"- batch {batch}: FULL gives {cost:.0%} less throughput than NORMAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
