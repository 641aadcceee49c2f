"""Console benchmark: every page's first render on a fleet of 10,000 agents and 1,000,000 events.

For each backend (SQLite, PostgreSQL), on one database filled by the bulk seeder
(`bench.seed`, shared with the other benchmarks of the run):
1. each console page in a fresh process driven by Streamlit's AppTest, after the imports
   and a warm-up run on an empty database, with every query result still uncached: the
   first render, then what an admin does next (a period or filter changed, an error-text
   search, an event's details opened, a host's history, an error group drilled into);
   the time of each script run;
2. the rows and bytes of every table the page sends to the browser (the Arrow payload of
   each `st.dataframe` in AppTest's element tree) and of the whole page;
3. the peak memory (RSS high-water mark) of each page's process;
4. the baseline, in a fresh process too: every event loaded into pandas with
   `pandas.read_sql` of the whole table, its time and its peak memory.

Targets (DESIGN section 8): every page renders in under 1 s, no table ships more than
10,000 rows, the console process stays under 500 MB.

Run alone: `python -m bench.console [--console-backends sqlite,postgresql] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import sqlalchemy as sa

from bench import seed
from bench.report import FAIL, REPO, Report, Row, judge, progress, run_alone, verdict
from bench.server import postgres_unreachable, postgres_version
from console import links
from models import analytics
from models.analytics import MAX_PAGE_ROWS
from models.database import create_db_engine
from models.tables import EVENT_TABLE

TARGET_SECONDS = 1.0
TARGET_ROWS = MAX_PAGE_ROWS
TARGET_RSS_MB = 500.0
SEARCH_TEXT = "No space left"
HOST_SEARCH = "host-0001"
CHILD_TIMEOUT = 900


Options = seed.SeededOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("console")
    group.add_argument("--console-backends", default="sqlite,postgresql", help="comma-separated")
    seed.add_seed_arguments(parser)


def options_from(args: argparse.Namespace) -> Options:
    agents, events = seed.seed_size(args)
    return Options(
        backends=tuple(b.strip() for b in args.console_backends.split(",") if b.strip()),
        agents=agents,
        events=events,
        pg_admin_url=args.pg_admin_url,
        quick=args.quick,
    )


def run(options: Options) -> Report:
    report = Report()
    if options.quick:
        report.notes.append("console quick run: too small to judge speed; correctness judged")
    report.notes.append(
        f"console: {options.agents:,} agents and {options.events:,} events per backend "
        "(bench.seed); each page in a fresh process (AppTest), modules imported and a "
        "warm-up run on an empty database before timing, query caches cold; each step's "
        "time is one script run; rows/KB are what its st.dataframe tables send (Arrow); "
        "peak RSS is the page process's VmHWM; the baseline is pandas.read_sql of the "
        "whole update_events table in a fresh process"
    )
    for backend in options.backends:
        if backend == "postgresql":
            reason = postgres_unreachable(options.pg_admin_url)
            if reason is not None:
                report.add(
                    Row(
                        "console",
                        backend,
                        "not run",
                        f"PostgreSQL unreachable: {reason}",
                        target=f"< {TARGET_SECONDS:.0f} s per page",
                        verdict=FAIL,
                    )
                )
                continue
            report.facts["postgresql"] = postgres_version(options.pg_admin_url)
        elif backend != "sqlite":
            raise SystemExit(f"unknown backend {backend!r}: use sqlite or postgresql")
        report.extend(_run_backend(backend, options))
    return report


def _run_backend(backend: str, options: Options) -> Report:
    report = Report()
    progress(f"console {backend}: seeding {options.agents:,} agents, {options.events:,} events")
    with seed.seeded_database(
        backend, agents=options.agents, events=options.events, pg_admin_url=options.pg_admin_url
    ) as url:
        summary = seed.seed_summary(url)
        report.add(
            Row(
                "console",
                backend,
                f"bulk seeding, {summary.agents:,} agents and {summary.events:,} events "
                f"({summary.error_groups} error groups)",
                f"{summary.seconds:.0f} s",
                ", ".join(f"{name} {s:.0f} s" for name, s in summary.phases.items()),
            )
        )
        targets = _targets(url)
        progress(f"console {backend}: baseline, pandas.read_sql of every event")
        baseline = _child(["--baseline", url])
        results = {}
        for page, steps in _scenarios(targets).items():
            progress(f"console {backend}: {page}")
            results[page] = _child([json.dumps({"url": url, "steps": steps})])
    _report(report, backend, options, results, baseline)
    return report


def _targets(url: str) -> dict[str, Any]:
    """What the interactions open: the busiest host, the biggest group, a recent failure."""
    engine = create_db_engine(url)
    try:
        c = EVENT_TABLE.c
        with engine.connect() as connection:
            busiest = connection.execute(
                sa.select(c.agent_id, sa.func.count().label("events"))
                .group_by(c.agent_id)
                .order_by(sa.desc("events"))
                .limit(1)
            ).one()
            failure = connection.execute(
                sa.select(sa.func.max(c.id)).where(c.status == "failed")
            ).scalar_one()
        groups = analytics.error_groups_frame(engine, limit=1)
    finally:
        engine.dispose()
    top = groups.iloc[0]
    return {
        "agent": str(busiest.agent_id),
        "agent_events": int(busiest.events),
        "group": str(top["fingerprint"]),
        "group_hosts": int(top["agents"]),
        "event": int(failure),
    }


def _scenarios(t: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per page: the first render, then what an admin does next on it."""
    return {
        "fleet overview": [
            {"label": "first render (last 7 days)", "open": links.OVERVIEW_PAGE},
            {
                "label": "period: all time",
                "widget": "segmented_control",
                "key": "overview_range",
                "value": links.ALL_TIME,
            },
            {
                "label": "hosts in state: migrated",
                "widget": "segmented_control",
                "key": "overview_hosts_state",
                "value": "migrated",
            },
        ],
        "events explorer": [
            {"label": "first render (all time, newest 100)", "open": links.EVENTS_PAGE},
            {
                "label": f"error-text search '{SEARCH_TEXT}'",
                "widget": "text_input",
                "key": "ex_error_text",
                "value": SEARCH_TEXT,
            },
            {
                "label": "filter added: status failed",
                "widget": "pills",
                "key": "ex_statuses",
                "value": ["failed"],
            },
            {"label": "event details opened", "url": {"event": str(t["event"])}},
            {
                "label": "link: 10,000 rows per page",
                "open": links.EVENTS_PAGE,
                "query": {"size": str(MAX_PAGE_ROWS)},
            },
            {
                "label": "link: page 5,000 of all events",
                "open": links.EVENTS_PAGE,
                "query": {"page": "5000"},
            },
        ],
        "agent history": [
            {"label": "first render (host list)", "open": links.HISTORY_PAGE},
            {
                "label": f"host search '{HOST_SEARCH}'",
                "widget": "text_input",
                "key": "history_search",
                "value": HOST_SEARCH,
            },
            {
                "label": f"link: busiest host ({t['agent_events']:,} events)",
                "open": links.HISTORY_PAGE,
                "query": {"agent": t["agent"]},
            },
            {
                "label": "migration events only",
                "widget": "toggle",
                "key": "history_migration_only",
                "value": True,
            },
        ],
        "error groups": [
            {"label": "first render (last 7 days)", "open": links.GROUPS_PAGE},
            {
                "label": f"top group opened ({t['group_hosts']:,} hosts)",
                "url": {"group": t["group"]},
            },
            {
                "label": "period: all time",
                "widget": "segmented_control",
                "key": "groups_range",
                "value": links.ALL_TIME,
            },
        ],
    }


def _child(args: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.console_page", *args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.console_page failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- rows of the table --------------------------------------------------------------------


def _report(
    report: Report,
    backend: str,
    options: Options,
    results: dict[str, dict[str, Any]],
    baseline: dict[str, Any],
) -> None:
    base_s = baseline["seconds"]
    base_text = f"read_sql {base_s:.1f} s"
    largest: tuple[int, int, str] = (0, 0, "-")
    for page, result in results.items():
        for step in result["steps"]:
            tables = step["tables"]
            rows = sum(t["rows"] for t in tables)
            size = sum(t["bytes"] for t in tables)
            plural = "s" if len(tables) != 1 else ""
            sent = (
                f"{len(tables)} table{plural}, {rows:,} rows, {_size(size)}"
                if tables
                else "no table"
            )
            for table in tables:
                if table["rows"] > largest[0]:
                    largest = (table["rows"], table["bytes"], f"{page} · {step['label']}")
            bounded = all(t["rows"] <= TARGET_ROWS for t in tables)
            if step["exception"]:
                report.notes.append(f"{backend} {page} · {step['label']}: {step['exception']}")
            seconds = step["seconds"]
            report.add(
                Row(
                    "console",
                    backend,
                    f"{page} · {step['label']} ({sent}; page {_size(step['payload_bytes'])})",
                    f"{seconds:.2f} s",
                    base_text,
                    f"1/{base_s / seconds:,.0f}" if seconds > 0 else "-",
                    f"< {TARGET_SECONDS:.0f} s, <= {TARGET_ROWS:,} rows/table",
                    judge(
                        quick=options.quick,
                        fast_enough=seconds < TARGET_SECONDS,
                        correct=bounded and not step["exception"],
                    ),
                )
            )
    rows, size, where = largest
    report.add(
        Row(
            "console",
            backend,
            f"largest table sent ({where})",
            f"{rows:,} rows, {_size(size)}",
            f"read_sql {baseline['rows']:,} rows",
            "-",
            f"<= {TARGET_ROWS:,} rows",
            verdict(rows <= TARGET_ROWS),
        )
    )
    worst_page, worst = max(
        ((page, result["peak_rss_mb"]) for page, result in results.items()), key=lambda p: p[1]
    )
    idle = min(result["rss_after_warmup_mb"] for result in results.values())
    report.add(
        Row(
            "console",
            backend,
            f"console process peak RSS (worst page: {worst_page}; {idle:.0f} MB after warm-up)",
            f"{worst:.0f} MB",
            f"read_sql peak {baseline['peak_rss_mb']:,.0f} MB",
            f"1/{baseline['peak_rss_mb'] / worst:.1f}",
            f"< {TARGET_RSS_MB:.0f} MB",
            judge(quick=options.quick, fast_enough=worst < TARGET_RSS_MB),
        )
    )


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB"):
        if count < 1024 or unit == "MB":
            return f"{count:,.0f} {unit}" if unit != "MB" else f"{count:,.1f} MB"
        count /= 1024
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    return run_alone(sys.modules[__name__], "python -m bench.console", argv)


if __name__ == "__main__":
    sys.exit(main())
