"""The `redflag-server` program: the command line, imported without the cyclic collector.

Importing the CLI (SQLAlchemy, SQLModel, pydantic, psycopg; the export adds pandas and
pyarrow) makes hundreds of thousands of objects that live as long as the process. With the
collector on, the growing heap is walked again and again while they are made (0.3-0.5 s
of a 1.2-1.7 s start on the benchmark machine), and every later full collection walks all
of them once more: in an export of a million events that was another 0.3-0.5 s. So the
imports run with the collector paused, and what they made is frozen out of its passes
(`gc.freeze`) before the command runs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block (imports) with the collector paused, then freeze what it made."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def main() -> int:
    with collector_paused():
        from ingest_api.cli import main as cli_main
    return cli_main()
