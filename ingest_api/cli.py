"""`redflag-server`: the operator's command line for the database and the ingest API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from models.database import DatabaseURLError, create_db_engine, describe_url
from models.schema import upgrade_database

PROG = "redflag-server"


class CommandError(Exception):
    """A failure the user can fix; printed as one line, never as a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _engine(args: argparse.Namespace) -> Engine:
    return create_db_engine(args.database_url)


def _db_upgrade(args: argparse.Namespace) -> int:
    engine = _engine(args)
    before, after = upgrade_database(engine)
    where = describe_url(engine)
    if before == after:
        print(f"database {where} is already at revision {after}")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to revision {after}")
    engine.dispose()
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
