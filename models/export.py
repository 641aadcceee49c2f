"""Exports of filtered events to CSV or Parquet that agree row for row with the console.

The rows come from `models.analytics.iter_events_frames`, the generator behind
`events_frame`, so an export holds exactly what the console lists for the same filters,
in the same order. It is streamed chunk by chunk (one keyset query per chunk) into a
temporary file beside the target, which is renamed into place only when complete, so a
failed or interrupted export never leaves a half file. A manifest
(`<file>.manifest.json`) records the filters, row count, SHA-256 and columns.

CSV cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
tab or carriage return) get a leading single quote, as OWASP advises against CSV
injection: every text in an event comes from the agents, so none of it is trusted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from models.analytics import (
    EVENT_COLUMNS,
    EventFilters,
    Source,
    count_events,
    empty_events_frame,
    engine_for,
    iter_events_frames,
    make_filters,
)

ExportFormat: TypeAlias = Literal["csv", "parquet"]
FORMATS: tuple[ExportFormat, ...] = ("csv", "parquet")
DEFAULT_CHUNK_SIZE = 50_000
MANIFEST_SUFFIX = ".manifest.json"
# A leading quote makes spreadsheets read the cell as text; cells starting with these
# characters would otherwise be evaluated (OWASP, "CSV Injection").
FORMULA_PREFIX = "'"
_FORMULA_START = r"^[=+\-@\t\r]"
_CSV_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TOOL = "redflag-migration-reporting"


class ExportError(Exception):
    """An export that cannot be done as asked; the message is fit for one CLI line."""


def manifest_path(out: Path) -> Path:
    """Where the manifest of an export file goes: beside it, `<name>.manifest.json`."""
    return out.with_name(out.name + MANIFEST_SUFFIX)


def export_events(
    source: Source,
    *,
    fmt: ExportFormat,
    out: Path | str,
    filters: EventFilters | None = None,
    limit: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    **filter_values: Any,
) -> dict[str, Any]:
    """Write the filtered events (newest first) to `out` and return its manifest.

    `limit` keeps the newest N matching events. Only one chunk of `chunk_size` rows is in
    memory at a time. JSON columns (`system_info`, `details`) are JSON text in both
    formats. Raises ExportError for an unusable format or target path, ValueError for
    bad filters.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use csv or parquet")
    chosen = make_filters(filters, **filter_values)
    target = Path(out).expanduser()
    if target.is_dir():
        raise ExportError(f"cannot write {target}: it is a directory")
    engine = engine_for(source)
    total = count_events(engine, filters=chosen)
    if limit is not None:
        total = min(total, limit)
    with (
        _atomic_file(target, binary=fmt == "parquet") as handle,
        tqdm(
            total=total,
            unit="events",
            unit_scale=True,
            disable=not progress,
            desc=f"export {target.name}",
        ) as bar,
    ):
        frames = iter_events_frames(
            engine, filters=chosen, chunk_size=chunk_size, limit=limit, json_as="text"
        )
        writer = _write_csv if fmt == "csv" else _write_parquet
        rows, columns = writer(handle, frames, on_chunk=bar.update)
    manifest = {
        "file": target.name,
        "format": fmt,
        "rows": rows,
        "bytes": target.stat().st_size,
        "sha256": _sha256(target),
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "filters": chosen.to_query_params(),
        "limit": limit,
        "order": ["occurred_at desc", "event_pk desc"],
        "columns": columns,
        "database": engine.dialect.name,
        "tool": {"name": _TOOL, "version": _tool_version()},
    }
    if fmt == "csv":
        manifest["csv_formula_prefix"] = FORMULA_PREFIX
    with _atomic_file(manifest_path(target), binary=False) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return manifest


def escape_formulas(values: pd.Series) -> pd.Series:
    """Text cells that would start a spreadsheet formula, prefixed with a single quote."""
    risky = values.str.contains(_FORMULA_START, regex=True, na=False)
    if not risky.any():
        return values
    return values.mask(risky, FORMULA_PREFIX + values)


def _csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    ready = frame.copy()
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.StringDtype):
            ready[name] = escape_formulas(frame[name])
    return ready


def _write_csv(
    handle: IO[Any], frames: Iterator[pd.DataFrame], *, on_chunk: Callable[[int], object]
) -> tuple[int, list[dict[str, str]]]:
    rows = 0
    columns = _csv_columns()
    header = True
    for frame in frames:
        _csv_ready(frame).to_csv(
            handle,
            index=False,
            header=header,
            date_format=_CSV_TIME_FORMAT,
            quoting=csv.QUOTE_MINIMAL,
            # RFC 4180 line ends: with CRLF as the terminator, the csv module quotes any
            # cell holding a CR or LF, so a stray CR in an error message cannot end a row.
            lineterminator="\r\n",
        )
        header = False
        rows += len(frame)
        on_chunk(len(frame))
    if header:
        # No rows: still write the header, so the file says what it would have held.
        handle.write(",".join(EVENT_COLUMNS) + "\r\n")
    return rows, columns


def _csv_columns() -> list[dict[str, str]]:
    # The dtypes the columns have in pandas before being written as text.
    empty = empty_events_frame(json_as="text")
    return [{"name": str(name), "dtype": str(dtype)} for name, dtype in empty.dtypes.items()]


def _write_parquet(
    handle: IO[Any], frames: Iterator[pd.DataFrame], *, on_chunk: Callable[[int], object]
) -> tuple[int, list[dict[str, str]]]:
    # One schema, taken from the typed empty frame, for every chunk: the file's schema
    # never depends on which values a chunk happens to hold.
    schema = pa.Schema.from_pandas(empty_events_frame(json_as="text"), preserve_index=False)
    rows = 0
    with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            rows += len(frame)
            on_chunk(len(frame))
    columns = [{"name": f.name, "dtype": str(f.type)} for f in schema if f.name in EVENT_COLUMNS]
    return rows, columns


@contextlib.contextmanager
def _atomic_file(target: Path, *, binary: bool) -> Iterator[IO[Any]]:
    """A temporary file beside `target`, renamed onto it only if the block succeeds.

    The file keeps mkstemp's owner-only mode: exports hold host names and error texts.
    """
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    path = Path(temporary)
    try:
        handle: IO[Any] = (
            os.fdopen(descriptor, "wb")
            if binary
            else os.fdopen(descriptor, "w", encoding="utf-8", newline="")
        )
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path, target)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _tool_version() -> str:
    try:
        return metadata.version(_TOOL)
    except metadata.PackageNotFoundError:
        return "unknown"
