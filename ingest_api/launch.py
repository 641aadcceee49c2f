"""The `redflag-server` program: the command line, imported without the cyclic collector.

Importing the CLI (SQLAlchemy, SQLModel, pandas, pyarrow, psycopg) makes about a million
objects that live as long as the process. With the collector on, the growing heap is walked
again and again while they are made (0.3-0.5 s of a 1.2-1.7 s start on the benchmark
machine), and every later full collection walks all of them once more: in an export of a
million events that was another 0.3-0.5 s. So the imports run with the collector paused,
and what they made is frozen out of its passes (`gc.freeze`) before the command runs.
"""

from __future__ import annotations

import gc
import importlib
from types import ModuleType


def import_paused(name: str) -> ModuleType:
    """Import a module with the collector paused, then freeze what the import made."""
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


def main() -> int:
    status: int = import_paused("ingest_api.cli").main()
    return status
