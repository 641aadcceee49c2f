"""The check-in writer: waiting check-ins go in one transaction, each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Connection, Engine

from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token, register_agent, revoke_agent
from ingest_api.writer import CheckinWriter
from models.database import write_transaction
from models.store import Checkin, InactiveAgent, StoreResult
from models.tables import EVENT_TABLE
from models.wire import Event, RegistrationRequest
from tests.factories import registration, wire_event

NOW = datetime.now(UTC)


def _agent(engine: Engine) -> UUID:
    with write_transaction(engine) as connection:
        token = create_enrollment_token(connection, uses=1, ttl=timedelta(hours=1)).token
        request = RegistrationRequest.model_validate(registration())
        return register_agent(connection, enrollment_token=token, request=request).agent_id


def _checkin(agent_id: UUID, size: int = 2) -> Checkin:
    return Checkin(agent_id, [Event.model_validate(wire_event()) for _ in range(size)], NOW)


def _stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(EVENT_TABLE)) or 0)


class GatedTransactions:
    """Write transactions that record their group sizes and, while the gate is closed,
    hold the first one open so that later check-ins queue up behind it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_next = False

    @contextmanager
    def __call__(self) -> Iterator[Connection]:
        self.entered.set()
        self.gate.wait(timeout=30)
        fail, self.fail_next = self.fail_next, False
        with write_transaction(self.engine) as connection:
            yield connection
            if fail:
                raise sa.exc.OperationalError("COMMIT", {}, Exception("database or disk is full"))


class RecordingWriter(CheckinWriter):
    """Remembers the size of every group it writes."""

    groups: list[int]

    def _write(self, group: list[Any]) -> None:
        self.groups.append(len(group))
        super()._write(group)


def test_waiting_checkins_share_one_transaction_and_get_their_own_results(
    engine: Engine,
) -> None:
    alice, bob, revoked = _agent(engine), _agent(engine), _agent(engine)
    with write_transaction(engine) as connection:
        revoke_agent(connection, agent_id=revoked)
    transactions = GatedTransactions(engine)
    writer = RecordingWriter(transactions)
    writer.groups = []

    async def scenario() -> list[StoreResult | BaseException]:
        first = asyncio.ensure_future(writer.store(_checkin(alice, 1)))
        await asyncio.to_thread(transactions.entered.wait, 30)
        rest = [
            asyncio.ensure_future(writer.store(checkin))
            for checkin in (_checkin(bob, 3), _checkin(revoked), _checkin(alice, 2))
        ]
        await asyncio.sleep(0.05)  # all three are queued behind the open transaction
        transactions.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    writer.start()
    try:
        results = asyncio.run(scenario())
    finally:
        writer.stop()

    assert writer.groups == [1, 3]
    assert results[0] == StoreResult(accepted=1, duplicates=0)
    assert results[1] == StoreResult(accepted=3, duplicates=0)
    assert isinstance(results[2], InactiveAgent)
    assert results[3] == StoreResult(accepted=2, duplicates=0)
    assert _stored(engine) == 6


def test_a_group_stops_growing_at_its_cap_and_the_rest_waits_for_the_next(
    engine: Engine,
) -> None:
    agent_id = _agent(engine)
    transactions = GatedTransactions(engine)
    writer = RecordingWriter(transactions, max_events_per_group=5)
    writer.groups = []

    async def scenario() -> list[StoreResult]:
        first = asyncio.ensure_future(writer.store(_checkin(agent_id, 1)))
        await asyncio.to_thread(transactions.entered.wait, 30)
        rest = [asyncio.ensure_future(writer.store(_checkin(agent_id, 2))) for _ in range(4)]
        await asyncio.sleep(0.05)
        transactions.gate.set()
        return await asyncio.gather(first, *rest)

    writer.start()
    try:
        results = asyncio.run(scenario())
    finally:
        writer.stop()

    # 2 + 2 events, then a third check-in crosses the cap of 5 and closes the group.
    assert writer.groups == [1, 3, 1]
    assert sum(result.accepted for result in results) == 9
    assert _stored(engine) == 9


def test_postgresql_writes_smaller_groups_on_two_threads_sqlite_larger_on_one(
    engine: Engine,
) -> None:
    def writer_threads() -> int:
        return sum(t.name.startswith("checkin-writer-") for t in threading.enumerate())

    with TestClient(create_app(engine=engine)) as client:
        assert client.get("/healthz").status_code == 200
        writer = client.app.state.runtime.checkin_writer
        expected = {"postgresql": (2, 1000), "sqlite": (1, 5000)}[engine.dialect.name]
        assert (writer_threads(), writer._max_events) == expected


def test_a_failed_group_answers_every_checkin_in_it_and_stores_none(engine: Engine) -> None:
    agent_id = _agent(engine)
    transactions = GatedTransactions(engine)
    transactions.gate.set()
    transactions.fail_next = True
    writer = CheckinWriter(transactions)

    async def scenario() -> tuple[BaseException | StoreResult, StoreResult]:
        failed = await asyncio.gather(writer.store(_checkin(agent_id)), return_exceptions=True)
        retried = await writer.store(_checkin(agent_id))
        return failed[0], retried

    writer.start()
    try:
        failed, retried = asyncio.run(scenario())
    finally:
        writer.stop()

    assert isinstance(failed, sa.exc.OperationalError)
    assert retried == StoreResult(accepted=2, duplicates=0)
    assert _stored(engine) == 2


def test_a_stopped_writer_refuses_work_instead_of_hanging(engine: Engine) -> None:
    writer = CheckinWriter(GatedTransactions(engine))
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(writer.store(_checkin(_agent(engine))))


def test_the_api_checkpoints_sqlite_on_its_own_thread_while_it_runs(engine: Engine) -> None:
    def checkpointing() -> bool:
        return any(t.name == "wal-checkpoints" for t in threading.enumerate())

    with TestClient(create_app(engine=engine)) as client:
        assert client.get("/healthz").status_code == 200
        assert checkpointing() is (engine.dialect.name == "sqlite")
    assert not checkpointing()
