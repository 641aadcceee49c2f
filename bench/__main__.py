"""`python -m bench`: every benchmark in one run, one table (what `make bench` calls).

Each benchmark module offers `add_arguments(parser)`, `options_from(args)` and
`run(options) -> Report`; adding one (console, export, agent) means adding its module to
BENCHMARKS. Each stays runnable alone as `python -m bench.<name>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.report import Report, finish

BENCHMARKS: dict[str, str] = {
    "ingest": "bench.ingest",
    "console": "bench.console",
    "export": "bench.export",
    "agent": "bench.agent",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated, of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    modules = {name: importlib.import_module(path) for name, path in BENCHMARKS.items()}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(modules))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    report = Report()
    started = time.perf_counter()
    for name in chosen:
        module = modules[name]
        report.extend(module.run(module.options_from(args)))
    report.facts["benchmark wall time"] = f"{time.perf_counter() - started:.0f} s"
    return finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
