"""`redflag-demo`: start the whole system with a living demo fleet; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from demo.confinement import ConfinementError
from demo.services import ServiceError
from demo.supervisor import DemoError, DemoOptions, Supervisor
from models.database import DatabaseURLError

PROG = "redflag-demo"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (1-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Upgrade the database, start the ingest API and the console on 127.0.0.1, and "
            "run a fleet of sandboxed hosts through the real redflag-agent. Runs until "
            "Ctrl-C (or SIGTERM), which stops every process it started. A second run reuses "
            "the fleet in ./var/demo; --reset starts over."
        ),
    )
    parser.add_argument(
        "--hosts", type=_count, default=50, help="how many sandbox hosts (default 50)"
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="database URL (default: $REDFLAG_DATABASE_URL or sqlite:///./var/redflag.db)",
    )
    parser.add_argument("--api-port", type=_port, default=8000, help="ingest API port (8000)")
    parser.add_argument("--console-port", type=_port, default=8501, help="console port (8501)")
    parser.add_argument("--no-console", action="store_true", help="do not start the console")
    parser.add_argument(
        "--reset",
        action="store_true",
        help="start over: delete the demo's hosts, logs and password, and its agents and "
        "their events from the database",
    )
    parser.add_argument(
        "--duration", type=_seconds, metavar="SECONDS", help="stop by itself after this long"
    )
    parser.add_argument(
        "--concurrency",
        type=_count,
        default=4,
        help="agent processes running at once (default 4)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/demo"),
        metavar="DIR",
        help="where the demo keeps its hosts, logs and password (default ./var/demo)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = DemoOptions(
        hosts=args.hosts,
        database_url=args.database_url,
        api_port=args.api_port,
        console_port=args.console_port,
        console=not args.no_console,
        reset=args.reset,
        duration=args.duration,
        concurrency=args.concurrency,
        state_dir=args.state_dir,
    )
    if options.console and options.api_port == options.console_port:
        print(f"{PROG}: error: the API and the console need different ports", file=sys.stderr)
        return 2
    try:
        return Supervisor(options).run()
    except (DemoError, ServiceError, ConfinementError, DatabaseURLError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
