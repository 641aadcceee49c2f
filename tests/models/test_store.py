"""Storing events: new ones go in once, re-sent ones are counted, a lost race is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ingest_api.service import create_enrollment_token, register_agent
from models import store
from models.database import write_transaction
from models.tables import EVENT_TABLE
from models.vocabulary import EventType
from models.wire import Event, RegistrationRequest
from tests.factories import registration, wire_event

NOW = datetime.now(UTC)


def _agent(engine: Engine) -> UUID:
    with write_transaction(engine) as connection:
        token = create_enrollment_token(connection, uses=1, ttl=timedelta(hours=1)).token
        request = RegistrationRequest.model_validate(registration())
        return register_agent(connection, enrollment_token=token, request=request).agent_id


def _store(engine: Engine, agent_id: UUID, events: list[Event]) -> store.StoreResult:
    with write_transaction(engine) as connection:
        return store.store_events(connection, agent_id=agent_id, events=events, received_at=NOW)


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(EVENT_TABLE)) or 0)


def test_new_events_are_accepted_and_resent_ones_counted_duplicate(engine: Engine) -> None:
    agent_id = _agent(engine)
    first = [Event.model_validate(wire_event()) for _ in range(3)]
    later = [Event.model_validate(wire_event(EventType.UPDATE_INSTALLED))]

    assert _store(engine, agent_id, first) == store.StoreResult(accepted=3, duplicates=0)
    mixed = [*first[:2], *later, first[0]]
    assert _store(engine, agent_id, mixed) == store.StoreResult(accepted=1, duplicates=3)
    assert _count(engine) == 4


def test_the_same_event_id_of_another_agent_is_a_new_event(engine: Engine) -> None:
    event = Event.model_validate(wire_event())
    assert _store(engine, _agent(engine), [event]).accepted == 1
    assert _store(engine, _agent(engine), [event]).accepted == 1


def test_a_writer_racing_the_duplicate_check_is_refused_not_doubled(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_id = _agent(engine)
    events = [Event.model_validate(wire_event()) for _ in range(2)]
    _store(engine, agent_id, events)

    # As if another writer had stored these events after the check looked for them.
    def sees_nothing(*_args: Any) -> set[UUID]:
        return set()

    monkeypatch.setattr(store, "_already_stored", sees_nothing)
    if engine.dialect.name == "sqlite":
        with pytest.raises(store.ConcurrentInsert):
            _store(engine, agent_id, events)
    else:
        # psycopg reports no row count for executemany: the conflict clause still keeps
        # the first copies, and the agent's row lock keeps check-ins from racing at all.
        _store(engine, agent_id, events)
    assert _count(engine) == 2
