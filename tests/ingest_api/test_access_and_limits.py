"""Every status code of the contract, reached the way a client would reach it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from ingest_api.app import create_app
from ingest_api.service import revoke_agent
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database
from models.settings import Settings
from tests.factories import registration, wire_event


def _register(client: TestClient, token: str) -> Any:
    return client.post(
        "/api/v1/agents/register",
        json=registration(),
        headers={"Authorization": f"Bearer {token}"},
    )


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_registration_returns_identity_and_interval(
    client: TestClient, enrollment_token: Any
) -> None:
    response = _register(client, enrollment_token())
    assert response.status_code == 201
    body = response.json()
    uuid.UUID(body["agent_id"])
    assert body["agent_token"].startswith("rfa_")
    assert len(body["agent_token"]) >= 40
    assert body["check_in_interval_seconds"] == 300


def test_enrolment_token_use_limit_is_enforced(client: TestClient, enrollment_token: Any) -> None:
    token = enrollment_token(uses=2)
    assert [_register(client, token).status_code for _ in range(3)] == [201, 201, 401]


def test_expired_enrolment_token_is_refused(client: TestClient, enrollment_token: Any) -> None:
    response = _register(client, enrollment_token(ttl=timedelta(microseconds=1)))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", [None, "Bearer rfe_unknown", "Basic abc", "Bearer "])
def test_missing_or_unknown_enrolment_token_is_401(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.post("/api/v1/agents/register", json=registration(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_checkin_without_token_is_401(agent: Any, client: TestClient) -> None:
    response = client.post(f"/api/v1/agents/{agent.agent_id}/checkin", json={"agent_version": "1"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_checkin_with_unknown_token_is_401(agent: Any, client: TestClient) -> None:
    response = client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin",
        json={"agent_version": "1"},
        headers={"Authorization": "Bearer rfa_forged"},
    )
    assert response.status_code == 401


def test_revoked_agent_is_401(agent: Any, engine: Engine) -> None:
    with write_transaction(engine) as connection:
        assert revoke_agent(connection, agent_id=uuid.UUID(agent.agent_id))
    response = agent.checkin([wire_event()])
    assert response.status_code == 401


def test_token_cannot_write_as_another_agent(register: Any, engine: Engine) -> None:
    alice, bob = register(hostname="alice"), register(hostname="bob")
    response = alice.client.post(
        f"/api/v1/agents/{bob.agent_id}/checkin",
        json={"agent_version": "1", "events": [wire_event()]},
        headers=alice.headers,
    )
    assert response.status_code == 403
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM update_events")).scalar() == 0


@pytest.mark.parametrize(
    "body",
    [
        {"events": []},
        {"agent_version": "1", "events": {"not": "a list"}},
        {"agent_version": "1", "events": [], "surprise": True},
        {"agent_version": "1", "events": [{}] * 1001},
    ],
)
def test_malformed_envelope_is_422(agent: Any, body: dict[str, Any]) -> None:
    response = agent.client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin", json=body, headers=agent.headers
    )
    assert response.status_code == 422


def test_body_that_is_not_json_is_422(agent: Any) -> None:
    response = agent.client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin",
        content=b"\xff\xfe{not json",
        headers={**agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def _big_body() -> bytes:
    events = [wire_event(error_message="x" * 60_000) for _ in range(55)]
    return json.dumps({"agent_version": "1", "events": events}).encode()


def test_three_mib_body_is_413(agent: Any, engine: Engine) -> None:
    body = _big_body()
    assert len(body) > 3 * 1024 * 1024
    response = agent.client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin",
        content=body,
        headers={**agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_chunked_body_without_content_length_is_counted_and_413(agent: Any) -> None:
    body = _big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = agent.client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin",
        content=chunks(),
        headers={**agent.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_rate_limit_answers_429_with_retry_after(engine: Engine, enrollment_token: Any) -> None:
    settings = Settings(rate_limit_per_minute=6, rate_limit_burst=2)
    with TestClient(create_app(settings=settings, engine=engine)) as client:
        body = _register(client, enrollment_token()).json()
        url = f"/api/v1/agents/{body['agent_id']}/checkin"
        headers = {"Authorization": f"Bearer {body['agent_token']}"}
        codes = [client.post(url, json={"agent_version": "1"}, headers=headers) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert 1 <= int(codes[2].headers["Retry-After"]) <= 10


def test_unreachable_database_is_503_with_retry_after() -> None:
    engine = create_db_engine(
        "postgresql://postgres@127.0.0.1:1/nothing",
        settings=Settings(database_timeout_seconds=1),
    )
    with TestClient(create_app(engine=engine)) as client:
        health = client.get("/healthz")
        checkin = client.post(
            f"/api/v1/agents/{uuid.uuid4()}/checkin",
            json={"agent_version": "1"},
            headers={"Authorization": "Bearer rfa_x"},
        )
    for response in (health, checkin):
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert "SELECT" not in response.text
        assert "Traceback" not in response.text


def test_sqlite_locked_past_timeout_is_503(tmp_path: Any) -> None:
    path = tmp_path / "locked.db"
    engine = create_db_engine(f"sqlite:///{path}", settings=Settings(database_timeout_seconds=0.2))
    upgrade_database(engine)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with TestClient(create_app(engine=engine)) as client:
            response = _register(client, "rfe_whatever")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert response.status_code == 503
    assert response.headers["Retry-After"]


def test_no_raw_token_is_stored(client: TestClient, engine: Engine, enrollment_token: Any) -> None:
    enrolment = enrollment_token()
    agent_token = _register(client, enrolment).json()["agent_token"]
    with engine.connect() as connection:
        dump = [
            str(tuple(row))
            for table in ("agent", "enrollment_token")
            for row in connection.execute(sa.text(f"SELECT * FROM {table}"))
        ]
    text = "\n".join(dump)
    assert enrolment not in text
    assert agent_token not in text
    assert hashlib.sha256(agent_token.encode()).hexdigest() in text


def test_openapi_documents_every_status_code(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    checkin = set(paths["/api/v1/agents/{agent_id}/checkin"]["post"]["responses"])
    register = set(paths["/api/v1/agents/register"]["post"]["responses"])
    health = set(paths["/healthz"]["get"]["responses"])
    assert checkin == {"200", "401", "403", "413", "422", "429", "503"}
    assert register == {"201", "401", "413", "422", "503"}
    assert health == {"200", "503"}
