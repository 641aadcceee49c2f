"""Recently proven agent tokens are cached, and revocation still stops writes at once."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ingest_api.runtime import TokenCache
from ingest_api.service import revoke_agent
from models.database import write_transaction
from tests.factories import wire_event


def _stored(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM update_events")).scalar_one())


def test_revoked_agent_is_refused_at_once_although_its_token_is_cached(
    agent: Any, engine: Engine
) -> None:
    assert agent.checkin([wire_event()]).status_code == 200  # the token is now cached
    with write_transaction(engine) as connection:
        assert revoke_agent(connection, agent_id=uuid.UUID(agent.agent_id))

    response = agent.checkin([wire_event()])

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert _stored(engine) == 1


def test_cached_token_still_cannot_write_as_another_agent(register: Any, engine: Engine) -> None:
    alice, bob = register(hostname="alice"), register(hostname="bob")
    assert alice.checkin([]).status_code == 200  # alice's token is now cached

    response = alice.client.post(
        f"/api/v1/agents/{bob.agent_id}/checkin",
        json={"agent_version": "1", "events": [wire_event()]},
        headers=alice.headers,
    )

    assert response.status_code == 403
    assert _stored(engine) == 0


def test_cache_entries_expire_and_the_oldest_go_first() -> None:
    now = [0.0]
    cache = TokenCache(ttl=10, max_entries=2, clock=lambda: now[0])
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put("a", first)
    cache.put("b", second)
    assert cache.get("a") == first
    cache.put("c", third)
    assert cache.get("a") is None  # evicted: the oldest entry
    assert cache.get("b") == second
    now[0] = 10.0
    assert cache.get("b") is None  # expired
    assert cache.get("c") is None


def test_tokens_proven_together_do_not_all_expire_together() -> None:
    now = [0.0]
    draws = iter([0.0, 0.5, 1.0])
    cache = TokenCache(ttl=10, jitter=0.25, clock=lambda: now[0], rng=lambda: next(draws))
    owners = {name: uuid.uuid4() for name in "abc"}
    for name, owner in owners.items():
        cache.put(name, owner)
    now[0] = 7.4
    assert [cache.get(name) for name in "abc"] == list(owners.values())
    now[0] = 7.5  # the last quarter of the lifetime: c's entry (drawn 1.0) is over
    assert cache.get("c") is None
    now[0] = 8.75
    assert cache.get("b") is None
    assert cache.get("a") == owners["a"]
    now[0] = 10.0
    assert cache.get("a") is None


def test_zero_lifetime_turns_the_cache_off() -> None:
    cache = TokenCache(ttl=0)
    cache.put("a", uuid.uuid4())
    assert cache.get("a") is None
