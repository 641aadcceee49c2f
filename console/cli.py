"""`redflag-console`: start the Streamlit console, or make a password hash for its login."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from console.auth import LOCAL_ADDRESSES
from console.passwords import hash_password
from console.settings import AuthMode, ConsoleSettings

PROG = "redflag-console"
APP = Path(__file__).with_name("app.py")
# The repository's .streamlit/config.toml sits beside the package; Streamlit reads it from
# the working directory, so the console starts there when it exists.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (1-65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8501, help="port (default 8501)")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    commands.add_parser(
        "hash-password",
        help="read a password (twice, or once from a pipe) and print its hash for "
        "REDFLAG_CONSOLE_ADMIN_PASSWORD_HASH",
    )
    return parser


def _hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print(f"{PROG}: error: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print(f"{PROG}: error: use a password of at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-password":
        return _hash_password()
    try:
        settings = ConsoleSettings()
    except ValueError as exc:
        print(f"{PROG}: error: invalid console settings: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    if settings.auth is AuthMode.NONE and args.host not in LOCAL_ADDRESSES:
        print(
            f"{PROG}: error: REDFLAG_CONSOLE_AUTH=none is only allowed on 127.0.0.1, "
            f"not on {args.host}",
            file=sys.stderr,
        )
        return 1
    if (PROJECT_ROOT / ".streamlit" / "config.toml").is_file():
        os.chdir(PROJECT_ROOT)
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        f"--server.address={args.host}", f"--server.port={args.port}",
        "--server.headless=true", "--browser.gatherUsageStats=false",
    ]  # fmt: skip
    os.execv(sys.executable, command)


if __name__ == "__main__":
    sys.exit(main())
