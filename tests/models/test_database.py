"""The engine factory: URL shapes, SQLite tuning, aware UTC datetimes and portable JSON."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import select

from models.database import DatabaseURLError, create_db_engine, normalise_url, session_scope
from models.tables import Agent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("  sqlite:///x.db ", "sqlite:///x.db"),
    ],
)
def test_operator_url_shapes_are_normalised(given: str, expected: str) -> None:
    assert normalise_url(given) == expected


@pytest.mark.parametrize("url", ["not a url", "mysql://u@h/db"])
def test_unusable_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(DatabaseURLError):
        create_db_engine(url)


def test_sqlite_connections_are_tuned_for_concurrency(tmp_path: object) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/tuned.db")
    with engine.connect() as connection:
        pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 1  # NORMAL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 5000
        assert pragma("cache_size") == -16 * 1024  # KiB
        assert pragma("wal_autocheckpoint") == 50_000
    engine.dispose()


def _agent(**overrides: object) -> Agent:
    values: dict[str, object] = {
        "hostname": "web-01",
        "os_type": "linux",
        "os_version": "Debian 12",
        "os_architecture": "x86_64",
        "agent_version": "0.1.18",
        "token_hash": uuid.uuid4().hex,
        "created_at": datetime.now(UTC),
    }
    values.update(overrides)
    return Agent(**values)


def test_datetimes_come_back_aware_utc(engine: sa.Engine) -> None:
    seen = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(engine) as session:
        session.add(_agent(last_seen_at=seen))
    with session_scope(engine) as session:
        agent = session.exec(select(Agent)).one()
    assert agent.last_seen_at == seen
    assert agent.last_seen_at is not None
    assert agent.last_seen_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive"), session_scope(engine) as session:
        session.add(_agent(created_at=datetime(2026, 1, 1)))  # noqa: DTZ001


def test_json_columns_round_trip_nested_values(engine: sa.Engine) -> None:
    info = {"disk": {"free_bytes": 123, "paths": ["/", "/var"]}, "uid": 0, "ok": True}
    with session_scope(engine) as session:
        session.add(_agent(system_info=info))
    with session_scope(engine) as session:
        assert session.exec(select(Agent.system_info)).one() == info
