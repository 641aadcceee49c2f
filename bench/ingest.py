"""Ingest benchmarks: a real API process against the database's own insert ceiling.

For each backend (SQLite, PostgreSQL), on fresh databases:
1. the raw insert ceiling: SQLAlchemy Core executemany of the very rows the API would store,
   100 per transaction, straight into `update_events` (and one row per transaction, the
   ceiling for single-event check-ins);
2. a real `redflag-server serve` process (uvicorn) on 127.0.0.1, 50 agents registered with
   a real enrolment token, sending batches of 100 events from a separate load generator;
3. the same batches replayed (all duplicates) against the first insert;
4. single-event check-ins: the closed-loop maximum, then latency at half that rate from an
   open-loop generator, against the unloaded latency (one request at a time);
5. an integrity check: the rows stored equal the events accepted, none lost or doubled.

Run alone: `python -m bench.ingest [--backends sqlite,postgresql] [--quick]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import server as srv
from bench.report import FAIL, INFO, Report, Row, judge, progress, rate, run_alone, verdict
from bench.workload import Workload, hostname_for
from ingest_api.routes import validate_events
from ingest_api.service import create_enrollment_token, register_agent
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database
from models.store import event_row
from models.tables import EVENT_TABLE
from models.wire import RegistrationRequest

TARGET_EVENTS_PER_SECOND = 20_000
TARGET_SHARE_OF_CEILING = 0.5
TARGET_SINGLE_RPS = 500
TARGET_P99_MS = 100.0


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    agents: int
    batch_size: int
    batches: int
    single_seconds: float
    open_seconds: float
    warmup_seconds: float
    concurrency: int
    workers: int
    pg_admin_url: str
    profile_dir: Path | None
    single_on_postgres: bool
    quick: bool = False

    @property
    def events(self) -> int:
        return self.agents * self.batches * self.batch_size


QUICK = {
    "agents": 4,
    "batch_size": 20,
    "batches": 3,
    "single_seconds": 0.5,
    "open_seconds": 0.5,
    "warmup_seconds": 0.2,
    "concurrency": 4,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ingest")
    group.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    group.add_argument("--agents", type=int, default=50, help="concurrent simulated agents")
    group.add_argument("--batch-size", type=int, default=100, help="events per check-in")
    group.add_argument("--batches", type=int, default=20, help="check-ins per agent")
    group.add_argument("--single-seconds", type=float, default=5.0, help="closed-loop window")
    group.add_argument("--open-seconds", type=float, default=8.0, help="open-loop window")
    group.add_argument("--warmup-seconds", type=float, default=1.0)
    group.add_argument("--concurrency", type=int, default=50, help="closed-loop connections")
    group.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    group.add_argument(
        "--pg-admin-url",
        default=srv.DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL maintenance database; a uniquely named database is made and dropped",
    )
    group.add_argument(
        "--no-single-on-postgres",
        dest="single_on_postgres",
        action="store_false",
        help="skip the single-event benchmark on PostgreSQL (it has no target there)",
    )
    group.add_argument(
        "--profile-dir",
        type=Path,
        help="run the server under py-spy (pip install -e '.[bench]') and save speedscope "
        "profiles here; CPU figures then include the profiler",
    )
    group.add_argument("--quick", action="store_true", help="a tiny run that only proves it works")


def options_from(args: argparse.Namespace) -> Options:
    values = {
        "agents": args.agents,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "single_seconds": args.single_seconds,
        "open_seconds": args.open_seconds,
        "warmup_seconds": args.warmup_seconds,
        "concurrency": args.concurrency,
    }
    if args.quick:
        values.update(QUICK)
    return Options(
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        workers=args.workers,
        pg_admin_url=args.pg_admin_url,
        profile_dir=args.profile_dir,
        single_on_postgres=args.single_on_postgres,
        quick=args.quick,
        **values,
    )


def run(options: Options) -> Report:
    report = Report()
    if options.quick:
        report.notes.append("quick run: too small to judge speed; only correctness is judged")
    report.notes.append(
        f"ingest: {options.agents} agents x {options.batches} check-ins x {options.batch_size} "
        f"events = {options.events:,} events per backend; the API server is started with "
        "REDFLAG_RATE_LIMIT_PER_MINUTE and REDFLAG_RATE_LIMIT_BURST raised to 100,000,000 so "
        "the per-agent rate limit (default 60/min, burst 20) does not answer 429, and "
        "REDFLAG_DATABASE_TIMEOUT_SECONDS to 30 so that queueing for SQLite's writer is "
        "measured instead of shed as 503 after 5 s; log level "
        f"warning (no access log); {options.workers} uvicorn worker(s); the load generator "
        "is a separate process (raw HTTP/1.1 keep-alive on uvloop, bodies serialised before "
        "the clock starts)"
    )
    with tempfile.TemporaryDirectory(prefix="redflag-bench-") as tmp:
        workdir = Path(tmp)
        for backend in options.backends:
            if backend == "postgresql":
                reason = srv.postgres_unreachable(options.pg_admin_url)
                if reason is not None:
                    report.add(
                        Row(
                            "ingest",
                            backend,
                            "not run",
                            f"PostgreSQL unreachable: {reason}",
                            target=f">= {TARGET_EVENTS_PER_SECOND:,} events/s",
                            verdict=FAIL,
                        )
                    )
                    continue
                report.facts["postgresql"] = srv.postgres_version(options.pg_admin_url)
            elif backend != "sqlite":
                raise SystemExit(f"unknown backend {backend!r}: use sqlite or postgresql")
            load = srv.background_load()
            report.facts[f"before {backend}"] = (
                f"{load:.2f} cores busy with other processes"
                + (" (figures below are depressed by it)" if load > 0.2 else "")
                + f"; Python speed check {srv.python_speed_check():.2f} s CPU"
            )
            report.extend(_run_backend(backend, options, workdir))
    return report


def _run_backend(backend: str, options: Options, workdir: Path) -> Report:
    report = Report()
    workload = Workload(seed=uuid.uuid4().hex, base_time=datetime.now(UTC))
    single = backend == "sqlite" or options.single_on_postgres
    progress(f"{backend}: raw insert ceiling")
    with srv.fresh_database(backend, workdir=workdir, pg_admin_url=options.pg_admin_url) as url:
        ceiling = _raw_ceiling(url, workload, options, single_rows=single)
    progress(f"{backend}: API")
    with srv.fresh_database(backend, workdir=workdir, pg_admin_url=options.pg_admin_url) as url:
        api = _through_api(url, backend, workload, options, workdir, single=single)
    _report_batches(report, backend, options, ceiling, api)
    if single:
        _report_single(report, backend, options, ceiling, api)
    return report


# --- the raw ceiling ----------------------------------------------------------------------


@dataclass
class Ceiling:
    events_per_second: float
    cpu_us_per_event: float
    single_rows_per_second: float | None


def _raw_ceiling(url: str, workload: Workload, options: Options, *, single_rows: bool) -> Ceiling:
    engine = create_db_engine(url)
    try:
        upgrade_database(engine)
        agent_ids = _direct_agents(engine, options.agents)
        received_at = datetime.now(UTC)
        batches = []
        for batch in range(options.batches):
            for agent, agent_id in enumerate(agent_ids):
                raw = workload.events(
                    agent=agent, batch=batch, size=options.batch_size, hostname=hostname_for(agent)
                )
                valid, _ = validate_events(raw)
                batches.append(
                    [
                        event_row(
                            e,
                            agent_id=agent_id,
                            hostname=hostname_for(agent),
                            received_at=received_at,
                        )
                        for e in valid
                    ]
                )
        insert = sa.insert(EVENT_TABLE)
        total = sum(map(len, batches))
        cpu, started = time.process_time(), time.perf_counter()
        for rows in batches:
            with write_transaction(engine) as connection:
                connection.execute(insert, rows)
        events_per_second = total / (time.perf_counter() - started)
        cpu_us = (time.process_time() - cpu) / total * 1e6
        single = _single_row_ceiling(engine, workload, agent_ids, options) if single_rows else None
        _expect_rows(engine, total + (single[1] if single else 0), "ceiling")
        return Ceiling(events_per_second, cpu_us, single[0] if single else None)
    finally:
        engine.dispose()


def _single_row_ceiling(
    engine: sa.Engine, workload: Workload, agent_ids: list[uuid.UUID], options: Options
) -> tuple[float, int]:
    """One-row transactions for `single_seconds`: what one-event check-ins could reach."""
    received_at = datetime.now(UTC)
    insert = sa.insert(EVENT_TABLE)
    rows = []
    for n in range(max(500, int(options.single_seconds * 4000))):
        agent = n % len(agent_ids)
        raw = workload.events(agent=agent, batch=-1 - n, size=1, hostname=hostname_for(agent))
        valid, _ = validate_events(raw)
        rows.append(
            event_row(
                valid[0],
                agent_id=agent_ids[agent],
                hostname=hostname_for(agent),
                received_at=received_at,
            )
        )
    done = 0
    started = time.perf_counter()
    stop_at = started + options.single_seconds
    for row in rows:
        with write_transaction(engine) as connection:
            connection.execute(insert, [row])
        done += 1
        if time.perf_counter() > stop_at:
            break
    return done / (time.perf_counter() - started), done


def _direct_agents(engine: sa.Engine, count: int) -> list[uuid.UUID]:
    with write_transaction(engine) as connection:
        token = create_enrollment_token(connection, uses=count, ttl=timedelta(hours=1)).token
        return [
            register_agent(
                connection,
                enrollment_token=token,
                request=RegistrationRequest(
                    hostname=hostname_for(i),
                    os_type="linux",
                    os_version="Debian 12",
                    os_architecture="x86_64",
                    agent_version="0.2.0",
                ),
            ).agent_id
            for i in range(count)
        ]


def _expect_rows(engine: sa.Engine, expected: int, what: str) -> int:
    with engine.connect() as connection:
        stored = connection.execute(sa.select(sa.func.count()).select_from(EVENT_TABLE)).scalar()
    if stored != expected:
        raise RuntimeError(f"{what}: {stored} rows stored, expected {expected}")
    return int(stored)


# --- through the API ----------------------------------------------------------------------


def _through_api(
    url: str, backend: str, workload: Workload, options: Options, workdir: Path, *, single: bool
) -> dict[str, Any]:
    srv.cli(url, "db", "upgrade")
    created = srv.cli(url, "enroll", "create", "--uses", str(options.agents), "--expires-in", "1h")
    enrollment_token = created.strip().splitlines()[-1]
    profile = (
        options.profile_dir / f"server-{backend}.speedscope.json" if options.profile_dir else None
    )
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
    server = srv.Server(url, workdir=workdir, workers=options.workers, profile_to=profile)
    server.start()
    results: dict[str, Any] = {}
    try:
        agents = [
            a.spec()
            for a in server.register_agents(options.agents, enrollment_token=enrollment_token)
        ]
        common = {
            "host": srv.HOST,
            "port": server.port,
            "agents": agents,
            "seed": workload.seed,
            "base_time": workload.base_time.isoformat(),
        }
        batch_spec = {
            **common,
            "mode": "batch",
            "batch_size": options.batch_size,
            "batches_per_agent": options.batches,
            "first_batch": 0,
            "deadline": 120,
        }
        timeout = 240
        progress(f"{backend}: API, batches of {options.batch_size}, first insert")
        results["first"] = srv.run_load(batch_spec, server, timeout=timeout)
        progress(f"{backend}: API, duplicate replay")
        results["replay"] = srv.run_load(batch_spec, server, timeout=timeout)
        if single:
            closed = {**common, "mode": "closed", "warmup": options.warmup_seconds}
            progress(f"{backend}: API, single events, unloaded latency")
            results["unloaded"] = srv.run_load(
                {**closed, "concurrency": 1, "duration": min(2.0, options.single_seconds)},
                server,
                timeout=timeout,
            )
            progress(f"{backend}: API, single events, closed-loop maximum")
            results["closed"] = srv.run_load(
                {**closed, "concurrency": options.concurrency, "duration": options.single_seconds},
                server,
                timeout=timeout,
            )
            half = max(1.0, results["closed"]["requests"] / results["closed"]["elapsed"] / 2)
            progress(f"{backend}: API, single events, open loop at {half:,.0f} req/s")
            results["open"] = srv.run_load(
                {
                    **common,
                    "mode": "open",
                    "rate": half,
                    "warmup": options.warmup_seconds,
                    "duration": options.open_seconds,
                    "drain_timeout": 30,
                },
                server,
                timeout=timeout,
            )
    finally:
        server.stop()
    engine = create_db_engine(url)
    try:
        accepted = sum(r["accepted"] + r.get("warmup_accepted", 0) for r in results.values())
        with engine.connect() as connection:
            results["stored"] = connection.execute(
                sa.select(sa.func.count()).select_from(EVENT_TABLE)
            ).scalar()
        results["accepted_total"] = accepted
    finally:
        engine.dispose()
    return results


# --- rows of the table --------------------------------------------------------------------


def _report_batches(
    report: Report, backend: str, options: Options, ceiling: Ceiling, api: dict[str, Any]
) -> None:
    first, replay = api["first"], api["replay"]
    for name, result in api.items():
        if isinstance(result, dict) and (result["errors"] or result.get("warmup_errors")):
            report.notes.append(
                f"{backend} {name}: {result['errors']} failed requests, statuses "
                f"{result['statuses']}, first: {result['first_error']}"
            )
        if isinstance(result, dict) and result.get("deadline_hit"):
            report.notes.append(f"{backend} {name}: stopped at its time limit, not all sent")
    sent = options.events
    api_rate = first["accepted"] / first["elapsed"]
    share = api_rate / ceiling.events_per_second
    ceiling_text = f"raw executemany {rate(ceiling.events_per_second, 'events/s')}"
    clean = first["errors"] == 0 and first["accepted"] == sent and not first["deadline_hit"]
    dedup = " (dedup on)" if backend == "postgresql" else ""
    report.add(
        Row(
            "ingest",
            backend,
            f"API events/s, {options.agents} agents, batches of {options.batch_size}{dedup}",
            rate(api_rate, "events/s"),
            ceiling_text,
            f"{share:.0%}",
            f">= {TARGET_EVENTS_PER_SECOND:,} events/s, no errors",
            judge(
                quick=options.quick, fast_enough=api_rate >= TARGET_EVENTS_PER_SECOND, correct=clean
            ),
        )
    )
    if backend == "sqlite":
        report.add(
            Row(
                "ingest",
                backend,
                "API share of the raw insert ceiling",
                f"{share:.0%}",
                ceiling_text,
                f"{share:.2f}",
                f">= {TARGET_SHARE_OF_CEILING:.0%}",
                judge(quick=options.quick, fast_enough=share >= TARGET_SHARE_OF_CEILING),
            )
        )
    cpu = first["cpu"]
    report.add(
        Row(
            "ingest",
            backend,
            f"check-in latency p50 / p99, batches of {options.batch_size}",
            f"{first['p50_ms']:.0f} / {first['p99_ms']:.0f} ms",
        )
    )
    api_cpu_us = cpu["server"] * first["elapsed"] / max(first["accepted"], 1) * 1e6
    report.add(
        Row(
            "ingest",
            backend,
            "API process CPU per event stored (all threads)",
            f"{api_cpu_us:.0f} us",
            f"raw executemany {ceiling.cpu_us_per_event:.0f} us",
            f"x{api_cpu_us / ceiling.cpu_us_per_event:.1f}",
        )
    )
    report.add(
        Row(
            "ingest",
            backend,
            "CPU busy during the batch run, in cores (of 2)",
            f"API {cpu['server']:.2f} ({cpu['server_system']:.2f} in the kernel), "
            f"client {cpu['client']:.2f}"
            + (f", postgres {cpu['postgres']:.2f}" if backend == "postgresql" else ""),
            f"whole machine {cpu['machine']:.2f}",
        )
    )
    replay_rate = replay["duplicates"] / replay["elapsed"]
    report.add(
        Row(
            "ingest",
            backend,
            "duplicate replay of every batch, events/s",
            rate(replay_rate, "events/s"),
            f"first insert {rate(api_rate, 'events/s')}",
            f"cost x{api_rate / replay_rate:.2f}" if replay_rate else "-",
            "every stored event counted duplicate",
            # Every event the first run stored comes back as a duplicate, and nothing new
            # is stored for it (the rows check below catches any double).
            verdict(replay["duplicates"] == first["accepted"] and replay["errors"] == 0),
        )
    )
    report.add(
        Row(
            "ingest",
            backend,
            "rows stored after all runs",
            f"{api['stored']:,}",
            f"accepted {api['accepted_total']:,}",
            "-",
            "equal: none lost, none doubled",
            verdict(api["stored"] == api["accepted_total"]),
        )
    )


def _report_single(
    report: Report, backend: str, options: Options, ceiling: Ceiling, api: dict[str, Any]
) -> None:
    closed, unloaded, open_ = api["closed"], api["unloaded"], api["open"]
    rps = closed["requests"] / closed["elapsed"]
    assert ceiling.single_rows_per_second is not None
    targets = backend == "sqlite"
    report.add(
        Row(
            "single event",
            backend,
            f"closed-loop check-ins/s, {len(closed['statuses'])} status kind(s), "
            f"{closed['errors']} errors",
            rate(rps, "req/s"),
            f"raw 1-row commit {rate(ceiling.single_rows_per_second, 'tx/s')}",
            f"{rps / ceiling.single_rows_per_second:.0%}",
            f">= {TARGET_SINGLE_RPS} req/s" if targets else "-",
            judge(
                quick=options.quick,
                fast_enough=rps >= TARGET_SINGLE_RPS,
                correct=closed["errors"] == 0,
            )
            if targets
            else INFO,
        )
    )
    achieved = open_["requests"] / open_["elapsed"]
    report.add(
        Row(
            "single event",
            backend,
            f"p50 latency, open loop at {open_['target_rate']:,.0f} req/s (half max)",
            f"{open_['p50_ms']:.1f} ms",
            f"unloaded p50 {unloaded['p50_ms']:.1f} ms",
            f"x{open_['p50_ms'] / max(unloaded['p50_ms'], 1e-9):.1f}",
        )
    )
    report.add(
        Row(
            "single event",
            backend,
            f"p99 latency, open loop (achieved {achieved:,.0f} req/s, "
            f"{open_['connections_opened']} connections)",
            f"{open_['p99_ms']:.1f} ms",
            f"unloaded p99 {unloaded['p99_ms']:.1f} ms",
            f"x{open_['p99_ms'] / max(unloaded['p99_ms'], 1e-9):.1f}",
            f"< {TARGET_P99_MS:.0f} ms, no errors" if targets else "-",
            judge(
                quick=options.quick,
                fast_enough=open_["p99_ms"] < TARGET_P99_MS,
                correct=open_["errors"] == 0,
            )
            if targets
            else INFO,
        )
    )


def main(argv: list[str] | None = None) -> int:
    return run_alone(sys.modules[__name__], "python -m bench.ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
