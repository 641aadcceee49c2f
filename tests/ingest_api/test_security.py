"""Security properties of the ingest API: secrets at rest, identity, token life cycle,
rate limits that cannot be dodged, and errors that give nothing away."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from starlette.routing import Route

from ingest_api import routes, writer
from ingest_api.app import create_app
from ingest_api.limits import RateLimiter
from ingest_api.service import hash_token, revoke_agent
from models.database import create_db_engine, write_transaction
from models.settings import Settings
from models.tables import AGENT_TABLE, ENROLLMENT_TOKEN_TABLE, EVENT_TABLE
from tests.factories import registration, wire_event

REGISTER = "/api/v1/agents/register"


def _checkin_url(agent_id: str) -> str:
    return f"/api/v1/agents/{agent_id}/checkin"


def _count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _agent_row(engine: Engine, agent_id: str) -> dict[str, Any]:
    query = sa.select(AGENT_TABLE).where(AGENT_TABLE.c.id == uuid.UUID(agent_id))
    with engine.connect() as connection:
        return dict(connection.execute(query).mappings().one())


def assert_bearer_challenge(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"]


# --- Secrets at rest -----------------------------------------------------------------------


def _database_dump(engine: Engine) -> str:
    """Every row of every table in the database, whatever the models declare."""
    metadata = sa.MetaData()
    metadata.reflect(engine)
    assert {"agent", "enrollment_token", "update_events"} <= set(metadata.tables)
    with engine.connect() as connection:
        return "\n".join(
            repr(tuple(row))
            for table in metadata.sorted_tables
            for row in connection.execute(sa.select(table))
        )


def test_database_dump_holds_no_raw_token(
    client: TestClient,
    engine: Engine,
    enrollment_token: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    spent = enrollment_token(uses=1)
    open_seat = enrollment_token(uses=5)
    unused = enrollment_token()
    agent_tokens = []
    for token in (spent, open_seat):
        body = client.post(
            REGISTER, json=registration(), headers={"Authorization": f"Bearer {token}"}
        ).json()
        agent_tokens.append(body["agent_token"])
        response = client.post(
            _checkin_url(body["agent_id"]),
            json={"agent_version": "0.2.0", "events": [wire_event()]},
            headers={"Authorization": f"Bearer {body['agent_token']}"},
        )
        assert response.status_code == 200
    secrets = [spent, open_seat, unused, *agent_tokens]

    dump = _database_dump(engine)
    files = b""
    if engine.dialect.name == "sqlite":
        # The database file and its write-ahead log, as a thief would copy them.
        database = Path(str(engine.url.database))
        files = b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))

    for secret in secrets:
        body = secret.split("_", 1)[1]  # without the recognisable prefix, too
        assert body not in dump
        assert body.encode() not in files
        assert body not in caplog.text
    assert "rfe_" not in dump
    assert "rfa_" not in dump


# --- Identity: the token decides who writes ------------------------------------------------


def test_agent_cannot_check_in_as_another_agent(register: Any, engine: Engine) -> None:
    alice, bob = register(hostname="alice"), register(hostname="bob")
    bob_before = _agent_row(engine, bob.agent_id)
    bob_id = uuid.UUID(bob.agent_id)
    spellings = [str(bob_id), str(bob_id).upper(), bob_id.hex, f"{{{bob_id}}}", bob_id.urn]

    for spelling in spellings:
        response = alice.client.post(
            _checkin_url(spelling),
            json={"agent_version": "6.6.6", "system_info": {"pwned": 1}, "events": [wire_event()]},
            headers=alice.headers,
        )
        assert response.status_code == 403, (spelling, response.text)
        assert response.json()["detail"]

    assert _count(engine, EVENT_TABLE) == 0
    assert _agent_row(engine, bob.agent_id) == bob_before
    assert _agent_row(engine, alice.agent_id)["last_seen_at"] is None


def test_api_has_no_route_to_read_list_or_revoke_agents() -> None:
    served = {
        (method, route.path)
        for route in routes.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert served == {
        ("GET", "/healthz"),
        ("POST", "/api/v1/agents/register"),
        ("POST", "/api/v1/agents/{agent_id}/checkin"),
    }
    documentation = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    app_routes = [route for route in create_app().routes if isinstance(route, Route)]
    assert {route.path for route in app_routes} <= documentation
    assert all(route.methods <= {"GET", "HEAD"} for route in app_routes)


ELSEWHERE = [
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/agents/{bob}"),
    ("GET", "/api/v1/agents/{bob}/checkin"),
    ("GET", "/api/v1/agents/{bob}/events"),
    ("DELETE", "/api/v1/agents/{bob}"),
    ("PUT", "/api/v1/agents/{bob}"),
    ("PATCH", "/api/v1/agents/{bob}"),
    ("POST", "/api/v1/agents/{bob}/revoke"),
    ("DELETE", "/api/v1/agents/{bob}/checkin"),
    ("PUT", "/api/v1/agents/{bob}/checkin"),
]


def test_agent_cannot_read_or_revoke_another_agent(register: Any, engine: Engine) -> None:
    alice, bob = register(hostname="alice"), register(hostname="bob")

    for method, path in ELSEWHERE:
        url = path.format(bob=bob.agent_id)
        response = alice.client.request(method, url, headers=alice.headers, json={})
        assert response.status_code in (404, 405), (method, path)
        assert response.json()["detail"]
        assert "bob" not in response.text

    assert _agent_row(engine, bob.agent_id)["revoked"] is False
    assert bob.checkin([wire_event()]).status_code == 200


# --- Token life cycle ----------------------------------------------------------------------


def _revoke_enrolment(engine: Engine, token: str) -> None:
    with write_transaction(engine) as connection:
        connection.execute(
            sa.update(ENROLLMENT_TOKEN_TABLE)
            .where(ENROLLMENT_TOKEN_TABLE.c.token_hash == hash_token(token))
            .values(revoked_at=datetime.now(UTC))
        )


def test_expired_spent_revoked_and_foreign_enrolment_tokens_get_the_same_401(
    client: TestClient, engine: Engine, enrollment_token: Callable[..., str], agent: Any
) -> None:
    spent = enrollment_token(uses=1)
    assert (
        client.post(
            REGISTER, json=registration(), headers={"Authorization": f"Bearer {spent}"}
        ).status_code
        == 201
    )
    revoked = enrollment_token(uses=5)
    _revoke_enrolment(engine, revoked)
    refused = {
        "expired": enrollment_token(ttl=timedelta(microseconds=1)),
        "spent": spent,
        "revoked": revoked,
        "unknown": "rfe_" + "A" * 43,
        "agent token": agent.token,
    }
    agents_before = _count(engine, AGENT_TABLE)

    answers = {}
    for reason, token in refused.items():
        response = client.post(
            REGISTER, json=registration(), headers={"Authorization": f"Bearer {token}"}
        )
        assert_bearer_challenge(response)
        answers[reason] = response.json()

    # One answer for every reason, so probing tokens teaches nothing.
    assert len({str(answer) for answer in answers.values()}) == 1
    assert _count(engine, AGENT_TABLE) == agents_before


def test_enrolment_token_seats_hold_under_concurrent_registrations(
    client: TestClient, engine: Engine, enrollment_token: Callable[..., str]
) -> None:
    token = enrollment_token(uses=3)
    codes: list[int] = []
    start = threading.Barrier(12)

    def enrol() -> None:
        start.wait()
        response = client.post(
            REGISTER, json=registration(), headers={"Authorization": f"Bearer {token}"}
        )
        codes.append(response.status_code)

    threads = [threading.Thread(target=enrol) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(codes) == [201] * 3 + [401] * 9
    assert _count(engine, AGENT_TABLE) == 3


NOT_A_LIVE_AGENT_TOKEN = {
    "missing": None,
    "empty": "",
    "scheme only": "Bearer",
    "empty token": "Bearer ",
    "forged": "Bearer rfa_forged",
    "basic scheme": "Basic {token}",
    "no scheme": "{token}",
    "token with a suffix": "Bearer {token}x",
    "enrolment token": "Bearer {enrolment}",
}


def test_checkin_without_a_live_agent_token_is_401(
    agent: Any, engine: Engine, enrollment_token: Callable[..., str]
) -> None:
    enrolment = enrollment_token()
    for case, authorization in NOT_A_LIVE_AGENT_TOKEN.items():
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization.format(token=agent.token, enrolment=enrolment)
        response = agent.client.post(
            _checkin_url(agent.agent_id),
            json={"agent_version": "0.2.0", "events": [wire_event()]},
            headers=headers,
            params={"token": agent.token},  # a token in the query string counts for nothing
        )
        assert response.status_code == 401, case
        assert_bearer_challenge(response)

    assert _count(engine, EVENT_TABLE) == 0
    assert _agent_row(engine, agent.agent_id)["last_seen_at"] is None


def test_revoked_agent_token_is_401_from_the_next_checkin(agent: Any, engine: Engine) -> None:
    assert agent.checkin([wire_event()]).status_code == 200
    with write_transaction(engine) as connection:
        assert revoke_agent(connection, agent_id=uuid.UUID(agent.agent_id))

    response = agent.checkin([wire_event()])

    assert_bearer_challenge(response)
    assert _count(engine, EVENT_TABLE) == 1


# --- Rate limits ---------------------------------------------------------------------------


ENVELOPE = {"agent_version": "0.2.0"}


@dataclass
class Limited:
    """A client whose agents may check in twice, then once every ten seconds."""

    client: TestClient
    enrollment_token: Callable[..., str]

    def new_agent(self) -> tuple[str, dict[str, str]]:
        body = self.client.post(
            REGISTER,
            json=registration(),
            headers={"Authorization": f"Bearer {self.enrollment_token()}"},
        ).json()
        return body["agent_id"], {"Authorization": f"Bearer {body['agent_token']}"}

    def checkin(self, agent_id: str, headers: dict[str, str]) -> Any:
        return self.client.post(_checkin_url(agent_id), json=ENVELOPE, headers=headers)

    def used_up_agent(self) -> tuple[str, dict[str, str]]:
        agent_id, auth = self.new_agent()
        assert [self.checkin(agent_id, auth).status_code for _ in range(2)] == [200, 200]
        return agent_id, auth


# The limiter lives in the process, not the database: one backend is enough.
@pytest.fixture
def limited(engine: Engine, enrollment_token: Callable[..., str]) -> Iterator[Limited]:
    settings = Settings(rate_limit_per_minute=6, rate_limit_burst=2)
    with TestClient(create_app(settings=settings, engine=engine)) as client:
        yield Limited(client, enrollment_token)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_rate_limit_answers_429_with_retry_after_that_is_long_enough(limited: Limited) -> None:
    agent_id, auth = limited.used_up_agent()

    response = limited.checkin(agent_id, auth)

    assert response.status_code == 429
    assert response.json()["detail"]
    # One token every 10 s: the advertised wait is what it takes, rounded up.
    assert int(response.headers["Retry-After"]) == 10


HEADER_DODGES = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Real-IP": "198.51.100.1",
    "Forwarded": "for=192.0.2.60;proto=https",
    "User-Agent": "another-agent/9.9",
    "X-Agent-Id": str(uuid.uuid4()),
}
SPELLINGS: dict[str, Callable[[uuid.UUID], str]] = {
    "uppercase": lambda agent_id: str(agent_id).upper(),
    "hex": lambda agent_id: agent_id.hex,
    "braces": lambda agent_id: f"{{{agent_id}}}",
    "urn": lambda agent_id: agent_id.urn,
}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_rate_limit_key_cannot_be_spoofed(limited: Limited) -> None:
    agent_id, auth = limited.used_up_agent()

    for header, value in HEADER_DODGES.items():
        assert limited.checkin(agent_id, {**auth, header: value}).status_code == 429, header
    for spelling, spell in SPELLINGS.items():
        respelled = spell(uuid.UUID(agent_id))
        assert limited.checkin(respelled, auth).status_code == 429, spelling
    lowercase = {"Authorization": auth["Authorization"].replace("Bearer", "bearer")}
    assert limited.checkin(agent_id, lowercase).status_code == 429


@pytest.mark.parametrize("backend", ["sqlite"])
def test_another_agents_path_gives_no_fresh_bucket(limited: Limited) -> None:
    alice_id, alice_auth = limited.used_up_agent()
    bob_id, _ = limited.new_agent()

    assert limited.checkin(bob_id, alice_auth).status_code == 403
    assert limited.checkin(alice_id, alice_auth).status_code == 429


@pytest.mark.parametrize("backend", ["sqlite"])
def test_strangers_cannot_use_up_an_agents_rate(limited: Limited) -> None:
    _, alice_auth = limited.new_agent()
    bob_id, bob_auth = limited.new_agent()
    for _ in range(5):
        assert limited.checkin(bob_id, {}).status_code == 401
        assert limited.checkin(bob_id, alice_auth).status_code == 403

    assert limited.checkin(bob_id, bob_auth).status_code == 200


def test_waiting_the_advertised_delay_is_enough() -> None:
    now = [1000.0]
    limiter = RateLimiter(per_minute=6, burst=1, clock=lambda: now[0])
    assert limiter.acquire("alice") == 0
    wait = limiter.acquire("alice")
    assert wait == pytest.approx(10.0)

    now[0] += wait
    assert limiter.acquire("alice") == 0


# --- Errors give nothing away ----------------------------------------------------------------

LEAKS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "psycopg",
    "sqlite3",
    "SELECT",
    "INSERT",
    "update_events",
)


def test_every_error_answer_is_json_without_traceback_or_sql(
    agent: Any, register: Any, engine: Engine, enrollment_token: Callable[..., str]
) -> None:
    other = register(hostname="other")
    url = _checkin_url(agent.agent_id)
    client = agent.client
    answers = {
        401: client.post(url, json={"agent_version": "1"}),
        403: client.post(
            _checkin_url(other.agent_id), json={"agent_version": "1"}, headers=agent.headers
        ),
        404: client.post("/api/v1/agents/../../etc/passwd", headers=agent.headers),
        405: client.get(url, headers=agent.headers),
        413: client.post(url, content=b"x" * (3 * 1024 * 1024), headers=agent.headers),
        422: client.post(url, content=b"{'agent_version': 1", headers=agent.headers),
    }
    for status, response in answers.items():
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["detail"]
        for leak in LEAKS:
            assert leak not in response.text, (status, leak)


def test_database_failure_is_503_without_sql(
    agent: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise sa.exc.OperationalError(
            "INSERT INTO update_events (secret) VALUES (?)",
            {"secret": 1},
            Exception("disk I/O error"),
        )

    monkeypatch.setattr(writer, "store_checkins", broken)
    response = agent.checkin([wire_event()])

    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    for leak in LEAKS:
        assert leak not in response.text


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(RuntimeError("SELECT token_hash FROM agent"), id="bug"),
        pytest.param(
            sa.exc.IntegrityError("INSERT INTO update_events VALUES (?)", {}, Exception("UNIQUE")),
            id="integrity-error",
        ),
    ],
)
def test_unexpected_failure_is_a_json_500_without_traceback_or_sql(
    engine: Engine,
    settings: Settings,
    register: Any,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
) -> None:
    agent = register()

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(writer, "store_checkins", broken)
    with TestClient(
        create_app(settings=settings, engine=engine), raise_server_exceptions=False
    ) as client:
        response = client.post(
            _checkin_url(agent.agent_id),
            json={"agent_version": "0.2.0", "events": [wire_event()]},
            headers=agent.headers,
        )

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    for leak in LEAKS:
        assert leak not in response.text


def test_unreachable_database_answers_503_on_every_route() -> None:
    engine = create_db_engine(
        "postgresql://postgres@127.0.0.1:1/nothing", settings=Settings(database_timeout_seconds=1)
    )
    with TestClient(create_app(engine=engine)) as client:
        answers = [
            client.get("/healthz"),
            client.post(REGISTER, json=registration(), headers={"Authorization": "Bearer rfe_x"}),
            client.post(
                _checkin_url(str(uuid.uuid4())),
                json={"agent_version": "1"},
                headers={"Authorization": "Bearer rfa_x"},
            ),
        ]
    engine.dispose()
    for response in answers:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        for leak in LEAKS:
            assert leak not in response.text
