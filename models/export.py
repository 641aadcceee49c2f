"""Exports of filtered events to CSV or Parquet that agree row for row with the console.

An export holds exactly what the console lists for the same filters, in the same order:
the rows of `models.analytics.iter_events_frames`, the generator behind `events_frame`.
Two readers produce them. The Arrow reader (`models.event_batches`, the default wherever
it can read the database: PostgreSQL, or SQLite in a file) has the database driver fill
Arrow record batches and writes them without a Python object per cell: about a million
events a second. The frames reader (`iter_events_frames` itself, one keyset query per
chunk) is the reference the Arrow reader is tested against, and reads in-memory SQLite.
Either way the rows are streamed chunk by chunk into a temporary file beside the target,
which is renamed into place only when complete, so a failed or interrupted export never
leaves a half file. A manifest (`<file>.manifest.json`) records the filters, row count,
SHA-256 and columns.

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
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine
from tqdm import tqdm

from models import event_batches
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
from models.export_options import (
    DEFAULT_CHUNK_SIZE,
    FORMATS,
    PARQUET_COMPRESSIONS,
    READERS,
    ExportFormat,
    ExportReader,
    ParquetCompression,
)

MANIFEST_SUFFIX = ".manifest.json"
# A leading quote makes spreadsheets read the cell as text; cells starting with these
# characters would otherwise be evaluated (OWASP, "CSV Injection").
FORMULA_PREFIX = "'"
_FORMULA_START = r"^[=+\-@\t\r]"
# Cells the csv module (QUOTE_MINIMAL, CRLF line ends) puts in double quotes.
_CSV_NEEDS_QUOTES = r'[,"\r\n]'
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
    reader: ExportReader = "auto",
    compression: ParquetCompression = "snappy",
    **filter_values: Any,
) -> dict[str, Any]:
    """Write the filtered events (newest first) to `out` and return its manifest.

    `limit` keeps the newest N matching events. Only a chunk or two of `chunk_size` rows
    is in memory at a time. JSON columns (`system_info`, `details`) are JSON text in both
    formats. `reader` picks how rows are read (see the module docstring); both give the
    same file contents. `compression` is the Parquet codec. Raises ExportError for an
    unusable format, reader, codec or target path, ValueError for bad filters.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use csv or parquet")
    if compression not in PARQUET_COMPRESSIONS:
        raise ExportError(
            f"unknown compression {compression!r}: use {', '.join(PARQUET_COMPRESSIONS)}"
        )
    if reader not in READERS:
        raise ExportError(f"unknown reader {reader!r}: use {', '.join(READERS)}")
    chosen = make_filters(filters, **filter_values)
    target = Path(out).expanduser()
    if target.is_dir():
        raise ExportError(f"cannot write {target}: it is a directory")
    engine = engine_for(source)
    use_arrow = _uses_arrow(engine, reader)
    total = count_events(engine, filters=chosen)
    if limit is not None:
        total = min(total, limit)
    with (
        _atomic_file(target, binary=use_arrow or fmt == "parquet") as handle,
        tqdm(
            total=total,
            unit="events",
            unit_scale=True,
            disable=not progress,
            desc=f"export {target.name}",
        ) as bar,
    ):
        if use_arrow:
            batches = event_batches.iter_event_batches(
                engine, filters=chosen, limit=limit, batch_rows=chunk_size
            )
            if fmt == "csv":
                rows, columns = _write_csv_batches(
                    handle, batches, chunk_size=chunk_size, on_chunk=bar.update
                )
            else:
                rows, columns = _write_parquet_batches(
                    handle,
                    batches,
                    chunk_size=chunk_size,
                    compression=compression,
                    on_chunk=bar.update,
                )
        else:
            frames = iter_events_frames(
                engine, filters=chosen, chunk_size=chunk_size, limit=limit, json_as="text"
            )
            if fmt == "csv":
                rows, columns = _write_csv(handle, frames, on_chunk=bar.update)
            else:
                rows, columns = _write_parquet(
                    handle, frames, compression=compression, on_chunk=bar.update
                )
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
    else:
        manifest["compression"] = compression
    with _atomic_file(manifest_path(target), binary=False) as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return manifest


def _uses_arrow(engine: Engine, reader: ExportReader) -> bool:
    if reader == "frames":
        return False
    readable = event_batches.can_read(engine)
    if reader == "arrow" and not readable:
        raise ExportError(
            f"the arrow reader cannot read {engine.url.render_as_string(hide_password=True)}: "
            "it reads PostgreSQL and SQLite files"
        )
    return readable


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
    handle: IO[Any],
    frames: Iterator[pd.DataFrame],
    *,
    compression: ParquetCompression,
    on_chunk: Callable[[int], object],
) -> tuple[int, list[dict[str, str]]]:
    # One schema, taken from the typed empty frame, for every chunk: the file's schema
    # never depends on which values a chunk happens to hold.
    schema = pa.Schema.from_pandas(empty_events_frame(json_as="text"), preserve_index=False)
    rows = 0
    with pq.ParquetWriter(handle, schema, compression=compression) as writer:
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            rows += len(frame)
            on_chunk(len(frame))
    columns = [{"name": f.name, "dtype": str(f.type)} for f in schema if f.name in EVENT_COLUMNS]
    return rows, columns


def _write_parquet_batches(
    handle: IO[Any],
    batches: Iterator[pa.RecordBatch],
    *,
    chunk_size: int,
    compression: ParquetCompression,
    on_chunk: Callable[[int], object],
) -> tuple[int, list[dict[str, str]]]:
    schema = event_batches.EXPORT_SCHEMA
    rows = 0
    with pq.ParquetWriter(
        handle, schema, compression=compression, use_dictionary=list(_PARQUET_DICTIONARY_COLUMNS)
    ) as writer:
        for group in _row_groups(batches, chunk_size):
            writer.write_table(group)
            rows += group.num_rows
            on_chunk(group.num_rows)
    columns = [{"name": f.name, "dtype": str(f.type)} for f in schema if f.name in EVENT_COLUMNS]
    return rows, columns


# Columns with few distinct values, which dictionary encoding shrinks. Trying it on the
# others (ids, times, JSON) costs time for nothing: the writer gives up on them per page.
_PARQUET_DICTIONARY_COLUMNS = (
    "agent_id",
    "hostname",
    "agent_version",
    "category",
    "event_type",
    "phase",
    "status",
    "severity",
    "error_message",
    "fingerprint",
    "migration_from",
    "migration_to",
)


def _row_groups(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Batches gathered into tables of about `rows` rows: one Parquet row group each."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= rows:
            yield pa.Table.from_batches(pending)
            pending, pending_rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _write_csv_batches(
    handle: IO[Any],
    batches: Iterator[pa.RecordBatch],
    *,
    chunk_size: int,
    on_chunk: Callable[[int], object],
) -> tuple[int, list[dict[str, str]]]:
    """The CSV `_write_csv` writes, byte for byte, rendered a column at a time by Arrow."""
    handle.write((",".join(EVENT_COLUMNS) + "\r\n").encode())
    rows = 0
    for batch in batches:
        handle.write(csv_text(batch))
        rows += batch.num_rows
        on_chunk(batch.num_rows)
    return rows, _csv_columns()


def csv_text(batch: pa.RecordBatch) -> bytes:
    """CSV rows (no header) of a batch of EXPORT_SCHEMA, as `_write_csv` writes them.

    The same rules as pandas' `to_csv` with the csv module: formula cells of the text
    columns prefixed with a quote, cells holding a comma, quote, CR or LF quoted (quotes
    doubled), missing values empty, times as `%Y-%m-%dT%H:%M:%S.%fZ`, booleans as
    True/False, CRLF line ends.
    """
    if batch.num_rows == 0:
        return b""
    cells = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        kind = EVENT_COLUMNS[field.name]
        if pa.types.is_timestamp(field.type):
            text = _csv_times(column)
        elif pa.types.is_boolean(field.type):
            text = pc.if_else(column, _text("True"), _text("False"))
        else:
            text = column.cast(pa.large_string())
            if kind in ("string", "json"):
                text = _escape_formula_cells(text)
            text = _quote_csv_cells(text)
        cells.append(text.cast(pa.large_string()).fill_null(_text("")))
    lines = pc.binary_join_element_wise(*cells, _text(","))
    lines = pc.binary_join_element_wise(lines, _text(""), _text("\r\n"))
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[start:end].tobytes()


# The tens and the ones digit of 0 to 99, as ASCII.
_TENS = np.array([48 + n // 10 for n in range(100)], dtype=np.uint8)
_ONES = np.array([48 + n % 10 for n in range(100)], dtype=np.uint8)
_TIME_TEMPLATE = np.frombuffer(b"0000-00-00T00:00:00.000000Z", dtype=np.uint8)
_US_PER_DAY = 86_400_000_000


def _csv_times(column: pa.Array) -> pa.Array:
    """UTC times as `_CSV_TIME_FORMAT` text; missing ones stay missing.

    Arrow's strftime (or cast to text) takes about 2 µs a value; writing the 27
    fixed-width characters with NumPy takes a fifth of that. Years outside 1000-9999,
    which no event has, are left to pandas.
    """
    micros = column.cast(pa.int64()).fill_null(0).to_numpy()
    days = micros // _US_PER_DAY
    of_day = micros - days * _US_PER_DAY
    year, month, day = _civil_dates(days)
    if len(micros) and (year.min() < 1000 or year.max() > 9999):
        series = column.to_pandas().dt.strftime(_CSV_TIME_FORMAT)
        return pa.array(series, type=pa.large_string(), from_pandas=True)
    micro = of_day % 1_000_000
    pairs = (
        (0, year // 100),
        (2, year % 100),
        (5, month),
        (8, day),
        (11, of_day // 3_600_000_000),
        (14, of_day // 60_000_000 % 60),
        (17, of_day // 1_000_000 % 60),
        (20, micro // 10_000),
        (22, micro // 100 % 100),
        (24, micro % 100),
    )
    # One row per character position, so every write is contiguous; transposed at the end.
    text = np.empty((len(_TIME_TEMPLATE), len(micros)), dtype=np.uint8)
    text[:] = _TIME_TEMPLATE[:, None]
    for at, values in pairs:
        text[at] = _TENS[values]
        text[at + 1] = _ONES[values]
    width = len(_TIME_TEMPLATE)
    offsets = np.arange(0, width * (len(micros) + 1), width, dtype=np.int64)
    result = pa.LargeStringArray.from_buffers(
        len(micros), pa.py_buffer(offsets), pa.py_buffer(text.T.tobytes())
    )
    if column.null_count:
        result = pc.if_else(column.is_valid(), result, pa.scalar(None, pa.large_string()))
    return result


def _civil_dates(days: Any) -> tuple[Any, Any, Any]:
    """Year, month and day of days since 1970-01-01 (proleptic Gregorian), vectorised.

    Howard Hinnant's `civil_from_days`, in integer arithmetic on whole arrays.
    """
    shifted = days + 719_468  # days since 0000-03-01
    era = shifted // 146_097
    day_of_era = shifted - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_from_march = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_from_march + 2) // 5 + 1
    month = np.where(month_from_march < 10, month_from_march + 3, month_from_march - 9)
    year = year_of_era + era * 400 + (month <= 2)
    return year, month, day


def _escape_formula_cells(text: pa.Array) -> pa.Array:
    risky = pc.match_substring_regex(text, _FORMULA_START)
    if not pc.any(risky).as_py():
        return text
    prefixed = pc.binary_join_element_wise(_text(FORMULA_PREFIX), text, _text(""))
    return pc.if_else(risky, prefixed, text)


def _quote_csv_cells(text: pa.Array) -> pa.Array:
    needs = pc.match_substring_regex(text, _CSV_NEEDS_QUOTES)
    if not pc.any(needs).as_py():
        return text
    doubled = pc.replace_substring(text, '"', '""')
    quoted = pc.binary_join_element_wise(_text('"'), doubled, _text('"'), _text(""))
    return pc.if_else(needs, quoted, text)


def _text(value: str) -> pa.Scalar:
    # Arrow's string kernels want every argument of the same string type.
    return pa.scalar(value, type=pa.large_string())


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
