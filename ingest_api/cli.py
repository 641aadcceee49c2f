"""`redflag-server`: the operator's command line for the database and the ingest API."""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, NoReturn
from uuid import UUID

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ingest_api.cli_export import add_export_parser
from ingest_api.service import create_enrollment_token, list_agents, revoke_agent
from models.database import DatabaseURLError, create_db_engine, describe_url, write_transaction
from models.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

PROG = "redflag-server"


class CommandError(Exception):
    """A failure the user can fix; printed as one line, never as a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _engine(args: argparse.Namespace) -> Engine:
    return create_db_engine(args.database_url)


# Alembic, uvicorn and the export's pandas and pyarrow (`cli_export.run_export`) are
# imported by the commands that use them: no command needs all of them, and together they
# are over a second of start-up and 100 MB of memory (`serve` needs none but uvicorn).


def _db_upgrade(args: argparse.Namespace) -> int:
    from models.schema import upgrade_database

    engine = _engine(args)
    before, after = upgrade_database(engine)
    where = describe_url(engine)
    if before == after:
        print(f"database {where} is already at revision {after}")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to revision {after}")
    engine.dispose()
    return 0


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `24h`, `7d` or `2w` as a timedelta."""
    match = _DURATION.match(text.lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 24h)"
        )
    return timedelta(seconds=int(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range (1-65535)")
    return value


def _agent_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent id (a UUID)") from None


def _require_current_schema(engine: Engine) -> None:
    from models.schema import current_revision, head_revision

    if current_revision(engine) != head_revision():
        raise CommandError(
            f"the database {describe_url(engine)} is not at the current schema: "
            "run `redflag-server db upgrade` first"
        )


# The check-in writer lets go of the GIL for every SQLite statement and then waits up to
# the interpreter's switch interval to get it back while the event loop validates the
# next check-ins; at the default 5 ms that wait dominates a small check-in. 1 ms roughly
# halved check-in latency in bench/ingest.py; 0.1 ms cost more in switching than it saved.
SERVER_SWITCH_INTERVAL_SECONDS = 0.001


def served_app() -> FastAPI:
    """The app as `serve` runs it, in each worker process: the interpreter tuned first."""
    from ingest_api.app import create_app  # the other commands need no FastAPI

    sys.setswitchinterval(SERVER_SWITCH_INTERVAL_SECONDS)
    app = create_app()
    # Everything alive now (modules, schemas, the app) lives as long as the process: kept
    # out of the collector's full passes, which otherwise walk it every few check-ins as
    # parsing allocates. CPU per event stored fell from 119 to 82-91 us in bench/ingest.py.
    gc.collect()
    gc.freeze()
    return app


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    engine = _engine(args)
    _require_current_schema(engine)
    engine.dispose()
    if args.database_url:
        # The workers build their own settings from the environment.
        os.environ["REDFLAG_DATABASE_URL"] = args.database_url
    uvicorn.run(
        "ingest_api.cli:served_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=False,
    )
    return 0


def _enroll_create(args: argparse.Namespace) -> int:
    settings = Settings()
    engine = _engine(args)
    _require_current_schema(engine)
    uses = args.uses or settings.enrollment_default_uses
    ttl = args.expires_in or timedelta(seconds=settings.enrollment_default_ttl_seconds)
    with write_transaction(engine) as connection:
        created = create_enrollment_token(connection, uses=uses, ttl=ttl, note=args.note)
    engine.dispose()
    print(
        f"enrolment token {created.id}: {created.max_uses} use(s), "
        f"expires {created.expires_at:%Y-%m-%d %H:%M:%S} UTC; shown once, store it now:"
    )
    print(created.token)
    return 0


def _agents_list(args: argparse.Namespace) -> int:
    engine = _engine(args)
    _require_current_schema(engine)
    with engine.connect() as connection:
        agents = list_agents(connection)
    engine.dispose()
    if args.json:
        print(json.dumps(agents, default=str, indent=2))
        return 0
    columns = ("id", "hostname", "os_type", "agent_version", "migration_state", "last_seen_at")
    rows = [
        [str(agent[c] if agent[c] is not None else "-") for c in columns]
        + ["revoked" if agent["revoked"] else ""]
        for agent in agents
    ]
    header = [*columns, ""]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _agents_revoke(args: argparse.Namespace) -> int:
    engine = _engine(args)
    _require_current_schema(engine)
    with write_transaction(engine) as connection:
        found = revoke_agent(connection, agent_id=args.agent_id)
    engine.dispose()
    if not found:
        raise CommandError(f"no agent with id {args.agent_id}")
    print(f"agent {args.agent_id} revoked: its token no longer checks in")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="database URL (default: $REDFLAG_DATABASE_URL or sqlite:///./var/redflag.db)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = commands.add_parser("db", help="manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    upgrade = db_commands.add_parser("upgrade", help="create or upgrade the schema (idempotent)")
    upgrade.set_defaults(handler=_db_upgrade)

    add_export_parser(commands, _Parser)

    serve = commands.add_parser("serve", help="run the ingest API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(handler=_serve)

    enroll = commands.add_parser("enroll", help="manage enrolment tokens")
    enroll_commands = enroll.add_subparsers(
        dest="enroll_command", required=True, parser_class=_Parser
    )
    create = enroll_commands.add_parser(
        "create", help="print a new enrolment token (the last line is the token alone)"
    )
    create.add_argument(
        "--uses", type=_positive_int, help="how many hosts may enrol with it (default 1)"
    )
    create.add_argument(
        "--expires-in",
        type=parse_duration,
        metavar="DURATION",
        help="lifetime, e.g. 30m, 24h, 7d (default 24h)",
    )
    create.add_argument("--note", default="", help="a note for admins (e.g. which rollout)")
    create.set_defaults(handler=_enroll_create)

    agents = commands.add_parser("agents", help="list or revoke agents")
    agents_commands = agents.add_subparsers(
        dest="agents_command", required=True, parser_class=_Parser
    )
    listing = agents_commands.add_parser("list", help="list agents, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_agents_list)
    revoke = agents_commands.add_parser("revoke", help="revoke an agent's token")
    revoke.add_argument("agent_id", type=_agent_id, metavar="AGENT_ID")
    revoke.set_defaults(handler=_agents_revoke)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (CommandError, DatabaseURLError) as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"database error: {_first_line(exc)}")
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
