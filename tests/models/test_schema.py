"""Alembic owns the schema: upgrades are idempotent and match the models exactly."""

from __future__ import annotations

import sqlalchemy as sa

from models.analytics import EventFilters, event_conditions
from models.database import create_db_engine
from models.schema import current_revision, head_revision, schema_drift, upgrade_database
from models.tables import EVENT_TABLE


def test_upgrade_creates_schema_and_second_run_is_a_no_op(empty_db_url: str) -> None:
    engine = create_db_engine(empty_db_url)
    assert current_revision(engine) is None

    assert upgrade_database(engine) == (None, head_revision())
    assert upgrade_database(engine) == (head_revision(), head_revision())

    tables = set(sa.inspect(engine).get_table_names())
    assert {"agent", "enrollment_token", "update_events", "alembic_version"} <= tables
    engine.dispose()


def test_migrations_match_models_without_drift(engine: sa.Engine) -> None:
    assert schema_drift(engine) == []


def test_event_id_is_unique_per_agent(engine: sa.Engine) -> None:
    constraints = sa.inspect(engine).get_unique_constraints("update_events")
    assert {
        "name": "uq_update_events_agent_id_event_id",
        "column_names": ["agent_id", "event_id"],
    } in [{"name": c["name"], "column_names": c["column_names"]} for c in constraints]


def test_console_query_indexes_exist(engine: sa.Engine) -> None:
    indexed = {tuple(ix["column_names"]) for ix in sa.inspect(engine).get_indexes("update_events")}
    assert {
        ("occurred_at", "id"),
        ("agent_id", "occurred_at"),
        ("event_type", "status", "occurred_at", "migration_from", "migration_to", "agent_id"),
        ("fingerprint", "occurred_at", "agent_id"),
    } <= indexed


def test_error_text_search_reads_the_index_of_events_with_a_message(engine: sa.Engine) -> None:
    """Each database's error-text index holds only the events that carry a message, and the
    console's "error text contains" condition is answered from it."""
    name = {
        "postgresql": "ix_update_events_error_message_trgm",
        "sqlite": "ix_update_events_error_message_present",
    }[engine.dialect.name]
    query = (
        sa.select(EVENT_TABLE.c.id)
        .where(*event_conditions(EventFilters(error_text="No space left")))
        .compile(engine, compile_kwargs={"literal_binds": True})
    )
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            definition = connection.scalar(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": name}
            )
            # An empty table is read whole unless the planner is told to avoid that.
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = connection.exec_driver_sql(f"EXPLAIN {query}").scalars().all()
        else:
            definition = connection.scalar(
                sa.text("SELECT sql FROM sqlite_master WHERE name = :name"), {"name": name}
            )
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")]
    assert "WHERE" in definition
    assert "error_message IS NOT NULL" in definition
    assert any(name in line for line in plan), plan
