"""`redflag-server export`: the analyst's export of filtered events, from the command line.

Kept apart from `ingest_api.cli` so the export's options live next to the code they
drive; the CLI wires it in with `add_export_parser(commands, _Parser)`. The filters are
those of the console's events explorer (`models.analytics.EventFilters`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.database import create_db_engine
from models.export_options import DEFAULT_CHUNK_SIZE, FORMATS, PARQUET_COMPRESSIONS, READERS
from models.vocabulary import Category, EventType, Severity, Status

# The export's machinery (pandas, pyarrow) is imported when it runs (see ingest_api.cli).
if TYPE_CHECKING:
    from models.analytics import EventFilters


def add_export_parser(
    subparsers: argparse._SubParsersAction[Any], parser_class: type[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """Add the `export` subcommand to the CLI's subparsers and return its parser.

    `parser_class` is the CLI's parser class (the one that prints errors on one line); the
    subparsers must create parsers of that class, which is checked here so that wiring
    the command elsewhere cannot quietly bring back argparse's multi-line errors.
    """
    export = subparsers.add_parser(
        "export",
        help="export filtered events to CSV or Parquet, with a manifest",
        description=(
            "Export the events that match the filters (newest first) to CSV or Parquet. "
            "A manifest with the filters, row count and SHA-256 is written beside the file."
        ),
    )
    if not isinstance(export, parser_class):
        raise TypeError(f"export parser is a {type(export).__name__}, not {parser_class.__name__}")
    export.add_argument("--format", dest="export_format", choices=FORMATS, required=True)
    export.add_argument("--out", required=True, metavar="PATH", help="file to write")
    when = "ISO 8601 time (UTC unless it has an offset) or an age such as 24h or 7d"
    export.add_argument("--since", metavar="TIME", help=f"events at or after: {when}")
    export.add_argument("--until", metavar="TIME", help=f"events before: {when}")
    export.add_argument("--category", choices=[c.value for c in Category])
    export.add_argument(
        "--event-type",
        action="append",
        choices=[t.value for t in EventType],
        metavar="TYPE",
        help="event type (repeatable): " + ", ".join(t.value for t in EventType),
    )
    export.add_argument(
        "--status", action="append", choices=[s.value for s in Status], help="repeatable"
    )
    export.add_argument(
        "--severity", action="append", choices=[s.value for s in Severity], help="repeatable"
    )
    export.add_argument("--host", metavar="TEXT", help="hostname contains TEXT (any case)")
    export.add_argument("--agent-id", action="append", metavar="UUID", help="repeatable")
    pattern = "exact, or a pattern with * (any case)"
    export.add_argument("--agent-version", metavar="VERSION", help=pattern)
    export.add_argument("--migration-from", metavar="LABEL", help=pattern)
    export.add_argument("--migration-to", metavar="LABEL", help=pattern)
    export.add_argument("--fingerprint", metavar="ID", help="error group id")
    export.add_argument("--error-text", metavar="TEXT", help="error message contains TEXT")
    export.add_argument("--limit", type=int, metavar="N", help="only the newest N events")
    export.add_argument(
        "--compression",
        choices=PARQUET_COMPRESSIONS,
        default="snappy",
        help="Parquet codec (default snappy, the fastest; zstd writes files about 40%% smaller)",
    )
    export.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N", help=argparse.SUPPRESS
    )
    # The reference reader, for comparing files when in doubt; both write the same rows.
    export.add_argument("--reader", choices=READERS, default="auto", help=argparse.SUPPRESS)
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(handler=run_export)
    return export


def filters_from_args(args: argparse.Namespace) -> EventFilters:
    """The EventFilters the export options ask for; a bad value raises ValueError."""
    from models.analytics import EventFilters, parse_time

    times = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        if text is not None:
            try:
                times[name] = parse_time(text)
            except ValueError as exc:
                raise ValueError(f"--{name}: {exc}") from None
    return EventFilters(
        since=times.get("since"),
        until=times.get("until"),
        agent_ids=tuple(args.agent_id or ()),
        host=args.host,
        category=args.category,
        event_types=tuple(args.event_type or ()),
        statuses=tuple(args.status or ()),
        severities=tuple(args.severity or ()),
        agent_version=args.agent_version,
        migration_from=args.migration_from,
        migration_to=args.migration_to,
        fingerprint=args.fingerprint,
        error_text=args.error_text,
    )


def run_export(args: argparse.Namespace) -> int:
    """Handler of `export`: write the file and its manifest, print one summary line."""
    # Imported here: ingest_api.cli imports this module to wire the command in.
    from ingest_api.cli import CommandError
    from ingest_api.launch import collector_paused

    with collector_paused():
        from models.export import ExportError, export_events, manifest_path

    try:
        filters = filters_from_args(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be zero or more")
    if args.chunk_size < 1:
        raise CommandError("--chunk-size must be at least 1")
    engine = create_db_engine(args.database_url)
    started = time.perf_counter()
    try:
        manifest = export_events(
            engine,
            fmt=args.export_format,
            out=args.out,
            filters=filters,
            limit=args.limit,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
            reader=args.reader,
            compression=args.compression,
        )
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    finally:
        engine.dispose()
    elapsed = time.perf_counter() - started
    out = Path(args.out).expanduser()
    sys.stdout.write(
        f"exported {manifest['rows']} events to {out} ({manifest['bytes']} bytes) "
        f"in {elapsed:.1f} s; manifest {manifest_path(out)}\n"
    )
    return 0
