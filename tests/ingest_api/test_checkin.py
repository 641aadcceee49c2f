"""Check-ins as an agent sends them: storage, idempotency, partial rejection, identity."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.tables import AGENT_TABLE, EVENT_TABLE
from models.vocabulary import EventType
from tests.factories import wire_event


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(EVENT_TABLE).order_by(EVENT_TABLE.c.id)).mappings()
        return [dict(row) for row in rows]


def _agent_row(engine: Engine, agent_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        query = sa.select(AGENT_TABLE).where(AGENT_TABLE.c.id == uuid.UUID(agent_id))
        return dict(connection.execute(query).mappings().one())


def test_batch_is_stored_with_derived_fields(agent: Any, engine: Engine) -> None:
    events = [wire_event(EventType.MIGRATION_DETECTION_SUCCESS), wire_event()]

    response = agent.checkin(events)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, [])
    assert body["check_in_interval_seconds"] == 300
    rows = _stored(engine)
    assert [r["event_type"] for r in rows] == [
        EventType.MIGRATION_DETECTION_SUCCESS,
        EventType.MIGRATION_EXECUTION_FAILED,
    ]
    failed = rows[1]
    assert (failed["category"], failed["phase"], failed["severity"]) == (
        "migration",
        "execution",
        "error",
    )
    assert failed["fingerprint"] is not None
    assert rows[0]["fingerprint"] is None
    assert failed["received_at"] >= failed["occurred_at"]
    assert failed["details"] == {"failed_step": "copy_state", "errno": 13}


def test_replayed_batch_counts_only_duplicates(agent: Any, engine: Engine) -> None:
    events = [wire_event(), wire_event(EventType.UPDATE_INSTALLED)]
    agent.checkin(events)

    replay = agent.checkin(events).json()

    assert (replay["accepted"], replay["duplicates"]) == (0, 2)
    assert len(_stored(engine)) == 2


def test_same_event_id_with_other_content_keeps_the_first(agent: Any, engine: Engine) -> None:
    first = wire_event(error_message="first copy")
    second = {**first, "error_message": "second copy"}

    assert agent.checkin([first]).json()["accepted"] == 1
    assert agent.checkin([second]).json()["duplicates"] == 1

    assert [r["error_message"] for r in _stored(engine)] == ["first copy"]


def test_event_repeated_within_one_batch_is_one_row(agent: Any, engine: Engine) -> None:
    event = wire_event()
    body = agent.checkin([event, event]).json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert len(_stored(engine)) == 1


def test_mixed_batch_stores_good_events_and_rejects_bad_by_index(
    agent: Any, engine: Engine
) -> None:
    bad_status = wire_event(EventType.MIGRATION_EXECUTION_SUCCESS, status="failed")
    naive = wire_event(timestamp="2026-11-01T10:00:00")
    events = [wire_event(), bad_status, "not an object", naive, wire_event()]

    body = agent.checkin(events).json()

    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]
    assert body["rejected"][0]["event_id"] == bad_status["event_id"]
    assert "does not agree with event_type" in body["rejected"][0]["error"]
    assert body["rejected"][1]["event_id"] is None
    assert body["rejected"][2]["error"].startswith("timestamp:")
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(events)
    assert len(_stored(engine)) == 2


def test_checkin_updates_last_seen_version_and_system_info(agent: Any, engine: Engine) -> None:
    agent.checkin([], agent_version="0.2.1", system_info={"free_disk_bytes": 42})
    row = _agent_row(engine, agent.agent_id)
    assert row["last_seen_at"] is not None
    assert row["agent_version"] == "0.2.1"
    assert row["system_info"] == {"free_disk_bytes": 42}


def test_migration_summary_follows_the_newest_event(agent: Any, engine: Engine) -> None:
    detected = wire_event(EventType.MIGRATION_DETECTION_SUCCESS, timestamp="2026-11-01T10:00:00Z")
    failed = wire_event(timestamp="2026-11-01T10:00:05Z")
    agent.checkin([failed, detected])
    row = _agent_row(engine, agent.agent_id)
    assert row["migration_state"] == "failed"
    assert row["last_fingerprint"] is not None
    assert "Permission denied" in row["last_error_message"]

    # A late delivery of an older event does not roll the state back.
    older = wire_event(EventType.MIGRATION_DETECTION_SUCCESS, timestamp="2026-11-01T09:00:00Z")
    agent.checkin([older])
    assert _agent_row(engine, agent.agent_id)["migration_state"] == "failed"

    success = wire_event(EventType.MIGRATION_EXECUTION_SUCCESS, timestamp="2026-11-01T11:00:00Z")
    agent.checkin([success])
    row = _agent_row(engine, agent.agent_id)
    assert (row["migration_state"], row["last_error_message"]) == ("migrated", None)

    later = wire_event(EventType.MIGRATION_DETECTION_NOT_NEEDED, timestamp="2026-11-02T08:00:00Z")
    agent.checkin([later])
    assert _agent_row(engine, agent.agent_id)["migration_state"] == "migrated"


def test_update_events_do_not_change_the_migration_state(agent: Any, engine: Engine) -> None:
    agent.checkin([wire_event(EventType.UPDATE_FAILED, error_message="apt-get exited 100")])
    row = _agent_row(engine, agent.agent_id)
    assert row["migration_state"] == "never_reported"
    assert _stored(engine)[0]["category"] == "update"


def test_twenty_threads_checking_in_at_once_lose_nothing(register: Any, engine: Engine) -> None:
    agents = [register(hostname=f"host-{i}") for i in range(20)]
    batches = [[wire_event() for _ in range(25)] for _ in agents]

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda a, events: a.checkin(events), agents, batches))

    assert [r.status_code for r in responses] == [200] * 20
    assert sum(r.json()["accepted"] for r in responses) == 500
    assert len(_stored(engine)) == 500
