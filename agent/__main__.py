"""Lets `python -m agent` run the command line, as the tests and unprivileged runs do."""

from __future__ import annotations

from agent.cli import main

raise SystemExit(main())
