"""Storing events: new ones go in once, re-sent ones are counted, a lost race is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ingest_api.service import create_enrollment_token, register_agent, revoke_agent
from models import store
from models.database import write_transaction
from models.fingerprint import fingerprint
from models.plain_checkin import parse_plain_checkin
from models.tables import AGENT_TABLE, EVENT_TABLE
from models.vocabulary import EventType, MigrationState
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
    with pytest.raises(store.ConcurrentInsert):
        _store(engine, agent_id, events)
    assert _count(engine) == 2


def test_stored_values_are_those_the_core_insert_writes(engine: Engine) -> None:
    """The driver-level insert applies SQLAlchemy's own column processors: every stored
    value, as the database holds it, matches a plain Core insert of the same row."""
    agent_id = _agent(engine)
    events = [
        Event.model_validate(wire_event()),
        Event.model_validate(
            wire_event(
                EventType.MIGRATION_EXECUTION_PARTIAL,
                status="warning",
                error_message="caf\u00e9 <b>=1+1</b>\n\u202eevil",
                migration_from="0.1.18",
                migration_to="0.2.0",
                timestamp="2026-11-01T10:00:00.123456+05:30",
                details={"steps": [{"name": "copy", "ok": True}], "ratio": 1e-07, "n": None},
            )
        ),
        Event.model_validate(wire_event(EventType.UPDATE_INSTALLED, system_info={})),
    ]
    other_id = _agent(engine)
    _store(engine, agent_id, events)
    reference = [
        store.event_row(event, agent_id=other_id, hostname="web-01", received_at=NOW)
        for event in events
    ]
    with write_transaction(engine) as connection:
        connection.execute(sa.insert(EVENT_TABLE), reference)

    columns = [column for column in EVENT_TABLE.c if column.name not in {"id", "agent_id"}]
    # Read back as the database stores them (text on SQLite), not through the column types.
    raw = [sa.cast(column, sa.Text) for column in columns]
    with engine.connect() as connection:

        def stored(owner: UUID) -> list[Any]:
            query = sa.select(*raw).where(EVENT_TABLE.c.agent_id == owner)
            return sorted(map(tuple, connection.execute(query.order_by(EVENT_TABLE.c.event_id))))

        assert stored(agent_id) == stored(other_id)


def test_checkins_stored_together_behave_as_if_stored_one_by_one(engine: Engine) -> None:
    alice, bob, mallory = _agent(engine), _agent(engine), _agent(engine)
    with write_transaction(engine) as connection:
        revoke_agent(connection, agent_id=mallory)
    detected = Event.model_validate(
        wire_event(EventType.MIGRATION_DETECTION_SUCCESS, timestamp="2026-11-01T10:00:00Z")
    )
    failed = Event.model_validate(wire_event(timestamp="2026-11-01T10:05:00Z"))
    migrated = Event.model_validate(
        wire_event(EventType.MIGRATION_EXECUTION_SUCCESS, timestamp="2026-11-01T10:10:00Z")
    )
    checkins = [
        store.Checkin(alice, [detected, failed, detected], NOW, agent_version="0.2.0"),
        store.Checkin(mallory, [Event.model_validate(wire_event())], NOW),
        store.Checkin(bob, [failed], NOW),
        store.Checkin(alice, [failed, migrated], NOW + timedelta(seconds=1)),
    ]
    with write_transaction(engine) as connection:
        outcomes = store.store_checkins(connection, checkins, refuse_revoked=True)

    assert outcomes[0] == store.StoreResult(accepted=2, duplicates=1)
    assert isinstance(outcomes[1], store.InactiveAgent)
    # The same event id from another agent is that agent's own event.
    assert outcomes[2] == store.StoreResult(accepted=1, duplicates=0)
    assert outcomes[3] == store.StoreResult(accepted=1, duplicates=1)
    assert _count(engine) == 4
    with engine.connect() as connection:
        summary = connection.execute(sa.select(AGENT_TABLE).where(AGENT_TABLE.c.id == alice)).one()
    assert summary.migration_state == MigrationState.MIGRATED
    assert summary.ever_migrated
    assert summary.last_seen_at == NOW + timedelta(seconds=1)
    assert summary.agent_version == "0.2.0"


def test_duplicate_lookup_probes_the_unique_index(engine: Engine) -> None:
    agent_id = _agent(engine)
    events = [Event.model_validate(wire_event()) for _ in range(3)]
    _store(engine, agent_id, events)
    # Keys as the driver has them: hex text on SQLite, UUIDs on PostgreSQL.
    uuid_type = EVENT_TABLE.c.event_id.type.dialect_impl(engine.dialect)
    encode = uuid_type.bind_processor(engine.dialect) or (lambda value: value)
    ids = [(agent_id, event.event_id) for event in events] + [(agent_id, uuid4())]
    keys = [(encode(agent), encode(event)) for agent, event in ids]
    statements: list[str] = []

    def remember(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", remember)
    try:
        with engine.connect() as connection:
            assert store._already_stored(connection, keys) == set(keys[:3])
            if engine.dialect.name == "sqlite":
                plan = connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statements[-1],
                    tuple(value for key in keys for value in key),
                ).all()
                details = " | ".join(row[-1] for row in plan)
                assert "SEARCH e USING COVERING INDEX" in details, details
                assert "SCAN e" not in details, details
    finally:
        sa.event.remove(engine, "before_cursor_execute", remember)


def test_rows_prepared_ahead_are_used_only_for_the_hostname_on_the_agent_row(
    engine: Engine,
) -> None:
    """The ingest API derives rows before the write with the hostname it cached; the
    writer makes them again if that is not the one the agent row holds."""
    agent_id = _agent(engine)  # registered as web-01
    message = "copy /var/lib/state on web-01 failed: [Errno 28] No space left on device"
    events = [Event.model_validate(wire_event(error_message=message)) for _ in range(2)]
    for event, hostname in zip(events, ["web-01", "elsewhere"], strict=True):
        prepared = store.prepare_rows(
            engine.dialect, agent_id=agent_id, hostname=hostname, events=[event], received_at=NOW
        )
        checkin = store.Checkin(agent_id, [event], NOW, prepared=prepared)
        with write_transaction(engine) as connection:
            assert store.store_checkins(connection, [checkin]) == [store.StoreResult(1, 0)]
    expected = fingerprint(events[0].event_type.value, message, hostname="web-01")
    assert expected != fingerprint(events[0].event_type.value, message, hostname="elsewhere")
    with engine.connect() as connection:
        stored = connection.scalars(sa.select(EVENT_TABLE.c.fingerprint)).all()
    assert stored == [expected, expected]


def test_a_plain_check_ins_json_is_stored_as_sent_and_reads_back_as_the_general_paths(
    engine: Engine,
) -> None:
    """The plain lane stores an event's JSON columns as the agent wrote them (`JSONText`);
    the general path stores the serializer's text of the objects it parsed. Both read back
    as the same values, on either database."""
    events = [
        wire_event(details={"caf\u00e9": ["\U0001f600", 1.5, -0.25, None, True], "n": 10**20}),
        wire_event(EventType.UPDATE_INSTALLED, system_info={"a": [[1]], "b": {"c": [2]}}),
        wire_event(EventType.UPDATE_DISCOVERED, details={}),
    ]
    body = json.dumps({"agent_version": "1", "events": events}, ensure_ascii=False).encode()
    plain = parse_plain_checkin(body)
    assert plain is not None
    general = [Event.model_validate(event) for event in events]
    stored: dict[str, list[tuple[Any, ...]]] = {}
    for lane, validated in (("plain", plain.events), ("general", general)):
        agent_id = _agent(engine)
        prepared = store.prepare_rows(
            engine.dialect, agent_id=agent_id, hostname="web-01", events=validated, received_at=NOW
        )
        checkin = store.Checkin(agent_id, validated, NOW, prepared=prepared)
        with write_transaction(engine) as connection:
            store.store_checkins(connection, [checkin])
        with engine.connect() as connection:
            columns = (EVENT_TABLE.c.event_id, EVENT_TABLE.c.system_info, EVENT_TABLE.c.details)
            as_text = [sa.cast(column, sa.Text) for column in columns[1:]]
            query = sa.select(*columns, *as_text).where(EVENT_TABLE.c.agent_id == agent_id)
            stored[lane] = sorted(map(tuple, connection.execute(query)))
    assert [row[:3] for row in stored["plain"]] == [row[:3] for row in stored["general"]]
    sent = {event["event_id"]: event for event in events}
    for event_id, _, _, system_info_text, details_text in stored["plain"]:
        sent_event = sent[str(event_id)]
        assert system_info_text == json.dumps(sent_event["system_info"], ensure_ascii=False)
        assert details_text == json.dumps(sent_event["details"], ensure_ascii=False)


def test_agents_changed_alike_in_one_group_each_get_their_own_values(engine: Engine) -> None:
    """Several agents whose check-ins change the same columns are updated by one
    executemany: each row must get its own values."""
    agents = [_agent(engine) for _ in range(3)]
    kinds = [
        EventType.MIGRATION_EXECUTION_FAILED,
        EventType.MIGRATION_EXECUTION_SUCCESS,
        EventType.MIGRATION_DETECTION_SUCCESS,
    ]
    checkins = [
        store.Checkin(
            agent_id,
            [Event.model_validate(wire_event(kind, error_message=f"failure {n}"))]
            if kind == EventType.MIGRATION_EXECUTION_FAILED
            else [Event.model_validate(wire_event(kind))],
            NOW + timedelta(seconds=n),
            agent_version=f"0.2.{n}",
            system_info={"host": n},
        )
        for n, (agent_id, kind) in enumerate(zip(agents, kinds, strict=True))
    ]
    with write_transaction(engine) as connection:
        store.store_checkins(connection, checkins)
    with engine.connect() as connection:
        rows = {
            row.id: row
            for row in connection.execute(
                sa.select(AGENT_TABLE).where(AGENT_TABLE.c.id.in_(agents))
            )
        }
    for n, (agent_id, kind) in enumerate(zip(agents, kinds, strict=True)):
        row = rows[agent_id]
        assert (row.agent_version, row.system_info) == (f"0.2.{n}", {"host": n})
        assert row.last_seen_at == NOW + timedelta(seconds=n)
        assert row.last_migration_event_type == kind
        assert row.ever_migrated is (kind == EventType.MIGRATION_EXECUTION_SUCCESS)
        assert row.last_error_message == ("failure 0" if n == 0 else None)
    assert [rows[a].migration_state for a in agents] == [
        MigrationState.FAILED,
        MigrationState.MIGRATED,
        MigrationState.PENDING,
    ]
