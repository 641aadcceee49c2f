"""The bulk seeder writes what ingest would have stored, and the read layer reads it back."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from bench.seed import SeedSummary, seed_database
from models import analytics
from models.database import create_db_engine, write_transaction
from models.schema import schema_drift
from models.store import NEW_AGENT_SUMMARY, store_events
from models.tables import AGENT_TABLE
from models.vocabulary import Category, Status
from models.wire import Event
from tests.conftest import _migrated_database

AGENTS, EVENTS = 50, 2_000
SUMMARY_COLUMNS = (
    "migration_state",
    "migration_state_at",
    "ever_migrated",
    "last_migration_event_type",
    "last_migration_from",
    "last_migration_to",
    "last_error_message",
    "last_fingerprint",
)
DERIVED_COLUMNS = ("category", "phase", "status", "severity", "fingerprint", "error_message")


@pytest.fixture
def seeded(empty_db_url: str) -> Iterator[tuple[str, SeedSummary]]:
    summary = seed_database(empty_db_url, agents=AGENTS, events=EVENTS, progress=False)
    yield empty_db_url, summary
    analytics.dispose_cached_engines()


def test_seeded_fleet_reads_back_through_the_analytics_layer(
    seeded: tuple[str, SeedSummary],
) -> None:
    url, summary = seeded

    fleet = analytics.fleet_summary(url)
    assert fleet.by_state == summary.by_state
    assert fleet.agents == AGENTS - summary.revoked
    assert analytics.count_events(url) == EVENTS
    for status, count in summary.events_by_status.items():
        assert analytics.count_events(url, status=status) == count
    for category, count in summary.events_by_category.items():
        assert analytics.count_events(url, category=category) == count
    assert len(analytics.error_groups_frame(url)) == summary.error_groups
    # About one event in six fails, in a realistic number of groups shared by hosts.
    failed = summary.events_by_status[Status.FAILED] / EVENTS
    assert 0.1 < failed < 0.25
    assert summary.error_groups > 20
    assert analytics.error_groups_frame(url, limit=1).iloc[0]["agents"] > 1


def test_seeded_schema_is_exactly_the_migrated_one(seeded: tuple[str, SeedSummary]) -> None:
    url, _ = seeded
    engine = create_db_engine(url)
    try:
        assert schema_drift(engine) == []
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("update_events")}
        assert "ix_update_events_fingerprint_occurred_at_agent_id" in indexes
    finally:
        engine.dispose()


def test_seeded_rows_equal_what_ingest_stores_for_the_same_events(
    seeded: tuple[str, SeedSummary],
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Every seeded event replayed through `store_events` (one check-in per agent) gives
    the same derived fields, fingerprints and agent migration summaries."""
    url, _ = seeded
    events = analytics.events_frame(url)
    source = create_db_engine(url)
    with source.connect() as connection:
        agents = [dict(row) for row in connection.execute(sa.select(AGENT_TABLE)).mappings()]
    source.dispose()
    by_agent: dict[str, list[Event]] = defaultdict(list)
    for row in events.itertuples(index=False):
        by_agent[row.agent_id].append(_wire_event(row))

    (tmp_path / "replay").mkdir()
    with _migrated_database(backend, request, tmp_path / "replay") as replay_url:
        replay = create_db_engine(replay_url)
        with write_transaction(replay) as connection:
            connection.execute(
                sa.insert(AGENT_TABLE),
                [{**agent, **NEW_AGENT_SUMMARY} for agent in agents],
            )
            for agent in agents:
                store_events(
                    connection,
                    agent_id=agent["id"],
                    events=by_agent.get(str(agent["id"]), []),
                    received_at=agent["last_seen_at"] or agent["created_at"],
                )
        with replay.connect() as connection:
            replayed = {
                row["id"]: row for row in connection.execute(sa.select(AGENT_TABLE)).mappings()
            }
        stored = analytics.events_frame(replay)
        replay.dispose()

    for agent in agents:
        again = replayed[agent["id"]]
        assert {c: agent[c] for c in SUMMARY_COLUMNS} == {c: again[c] for c in SUMMARY_COLUMNS}
    key = ["agent_id", "event_id"]
    seeded_rows = events.sort_values(key).reset_index(drop=True)
    replayed_rows = stored.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        seeded_rows[[*key, *DERIVED_COLUMNS]], replayed_rows[[*key, *DERIVED_COLUMNS]]
    )
    assert set(seeded_rows["category"]) == {Category.MIGRATION.value, Category.UPDATE.value}


def _wire_event(row: Any) -> Event:
    def text(value: Any) -> str | None:
        return None if pd.isna(value) else str(value)

    return Event.model_validate(
        {
            "event_id": row.event_id,
            "event_type": row.event_type,
            "status": row.status,
            "error_message": text(row.error_message),
            "migration_from": text(row.migration_from),
            "migration_to": text(row.migration_to),
            "timestamp": row.occurred_at.to_pydatetime(),
            "system_info": row.system_info,
            "details": row.details,
        }
    )
