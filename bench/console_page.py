"""One console page driven by AppTest in a fresh process, for bench.console; prints JSON.

A process of its own per page, so that its peak memory (ru_maxrss) is that page's, like a
console process that has served it. The console's modules are imported, and a first run
made against an empty database, before the clock starts: a running console has done
both long before a user opens a page. Query results are not cached yet: every step is the
first time this process asks the database for it.

    python -m bench.console_page '{"url": ..., "steps": [...]}'
    python -m bench.console_page --baseline URL   # pandas.read_sql of every event

A step is {"label": ..., "open": PAGE, "query": {...}} (a new browser session on a page,
URL query parameters included), {"label": ..., "widget": KIND, "key": KEY, "value": V}
(a widget set, then the script rerun) or {"label": ..., "url": {...}} (query parameters
changed, as a link or the back button does, then rerun).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import REPO

APP = REPO / "console" / "app.py"


def _peak_rss_mb() -> float:
    """This process's peak resident memory since it started (exec), in MiB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
    big benchmark process would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _patch_component_scan() -> None:
    """Scan installed packages for Streamlit components once, as a server does at start.

    Every AppTest run rescans them otherwise (about a second), which a real console
    process never does per page.
    """
    from streamlit.components.v2 import manifest_scanner

    first = functools.cache(manifest_scanner.scan_component_manifests)
    manifest_scanner.scan_component_manifests = lambda max_workers=None: first()


def _tables(at: Any) -> list[dict[str, Any]]:
    found = []
    for frame in at.dataframe:
        data = frame.proto.arrow_data.data
        if not data and frame.proto.HasField("lazy_data"):
            data = frame.proto.lazy_data.initial_chunk.data
        found.append(
            {"key": frame.key or (frame.proto.alt or "table"), "rows": len(frame.value),
             "bytes": len(data)}
        )  # fmt: skip
    return found


def _payload_bytes(at: Any) -> int:
    """Bytes of every element the script sent (tables, charts, text), as protobuf."""
    from streamlit.testing.v1.element_tree import Block

    return sum(node.proto.ByteSize() for node in at._tree if not isinstance(node, Block))


def _apply(at: Any, step: dict[str, Any]) -> Any:
    from streamlit.testing.v1 import AppTest

    if "open" in step:
        at = AppTest.from_file(str(APP), default_timeout=120)
        for name, value in step.get("query", {}).items():
            at.query_params[name] = value
        at.switch_page(step["open"])
    elif "widget" in step:
        getattr(at, step["widget"])(key=step["key"]).set_value(step["value"])
    elif "url" in step:
        for name, value in step["url"].items():
            at.query_params[name] = value
    return at


def render(spec: dict[str, Any]) -> dict[str, Any]:
    os.chdir(REPO)  # the repository's .streamlit/config.toml: 127.0.0.1, as `redflag-console`
    os.environ["REDFLAG_CONSOLE_AUTH"] = "none"
    _patch_component_scan()
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from models.database import create_db_engine
    from models.schema import upgrade_database

    with tempfile.TemporaryDirectory(prefix="redflag-console-warmup-") as tmp:
        empty = f"sqlite:///{Path(tmp) / 'empty.db'}"
        engine = create_db_engine(empty)
        upgrade_database(engine)
        engine.dispose()
        os.environ["REDFLAG_DATABASE_URL"] = empty
        started = time.perf_counter()
        warm = AppTest.from_file(str(APP), default_timeout=120)
        first = spec["steps"][0]
        warm.switch_page(first["open"]).run()
        warmup = time.perf_counter() - started
        st.cache_data.clear()
    rss_before = _peak_rss_mb()
    os.environ["REDFLAG_DATABASE_URL"] = spec["url"]
    at: Any = None
    steps = []
    for step in spec["steps"]:
        at = _apply(at, step)
        started = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - started
        steps.append(
            {
                "label": step["label"],
                "seconds": seconds,
                "tables": _tables(at),
                "payload_bytes": _payload_bytes(at),
                "exception": "; ".join(str(e.value) for e in at.exception) or None,
            }
        )
    return {
        "steps": steps,
        "warmup_seconds": warmup,
        "rss_after_warmup_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def read_everything(url: str) -> dict[str, Any]:
    """The baseline: every event into pandas with `pandas.read_sql`, as a naive console would."""
    import pandas as pd

    from models.database import create_db_engine

    engine = create_db_engine(url)
    started = time.perf_counter()
    frame = pd.read_sql("SELECT * FROM update_events", engine)
    seconds = time.perf_counter() - started
    rows = len(frame)
    engine.dispose()
    return {"seconds": seconds, "rows": rows, "peak_rss_mb": _peak_rss_mb()}


def main(argv: list[str]) -> int:
    baseline = argv[:1] == ["--baseline"]
    result = read_everything(argv[1]) if baseline else render(json.loads(argv[0]))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
