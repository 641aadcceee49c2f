"""The check-in route's plain lane answers exactly as FastAPI's handling of the route does.

A check-in with a valid token of the agent in its path (cached, or looked up and cached)
and a clean body is answered by `CheckinRoute.answer_plain_request`; anything else by
FastAPI.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

import ingest_api.routes as routes
from ingest_api.app import create_app
from models.settings import Settings
from models.tables import AGENT_TABLE
from models.vocabulary import EventType
from tests.factories import registration, wire_event
from tests.ingest_api.conftest import RegisteredAgent


@pytest.fixture
def plain_answers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per check-in body the plain lane parsed: whether it answered it."""
    seen: list[bool] = []
    parse = routes.parse_plain_checkin

    def spy(body: bytes) -> Any:
        checkin = parse(body)
        seen.append(checkin is not None)
        return checkin

    monkeypatch.setattr(routes, "parse_plain_checkin", spy)
    return seen


def _shape(response: Any) -> tuple[int, str, dict[str, Any]]:
    body = response.json()
    body.pop("server_time")
    return response.status_code, response.headers["content-type"], body


def test_a_check_in_takes_the_plain_lane_and_gets_the_answer_fastapi_gives(
    agent: RegisteredAgent, plain_answers: list[bool]
) -> None:
    first = [wire_event(), wire_event(EventType.UPDATE_INSTALLED)]
    # A string for a boolean: pydantic's lax reading takes it, the plain lane leaves it.
    second = [wire_event(error_truncated="false"), wire_event(EventType.UPDATE_INSTALLED)]

    through_plain = agent.checkin(first)
    assert plain_answers == [True]  # the token looked up by the lane itself, then cached
    through_fastapi = agent.checkin(second)
    assert plain_answers == [True, False]

    assert _shape(through_plain) == _shape(through_fastapi)
    assert through_plain.json()["server_time"].endswith("Z")
    replay = agent.checkin(first)
    assert plain_answers == [True, False, True]
    assert (replay.json()["accepted"], replay.json()["duplicates"]) == (0, 2)


def test_an_unknown_token_gets_fastapis_401_from_the_plain_lane(
    agent: RegisteredAgent, plain_answers: list[bool]
) -> None:
    response = agent.client.post(
        f"/api/v1/agents/{agent.agent_id}/checkin",
        json={"agent_version": "0.2.0", "events": [wire_event()]},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert (response.status_code, response.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert plain_answers == []  # refused before the body was read


def test_a_bad_event_is_answered_by_fastapi_with_the_rest_stored(
    agent: RegisteredAgent, plain_answers: list[bool]
) -> None:
    agent.checkin([])
    response = agent.checkin([wire_event(), {"event_id": "nope"}])
    assert plain_answers == [True, False]
    body = response.json()
    assert (response.status_code, body["accepted"], len(body["rejected"])) == (200, 1, 1)


@pytest.mark.parametrize(
    ("path_id", "headers", "status"),
    [
        ("hex", {}, 200),
        ("other", {}, 403),
        ("own", {"Content-Type": "text/plain"}, 422),
        ("own", {"Authorization": "Basic abc"}, 401),
        ("own", {"Authorization": "Bearer"}, 401),
    ],
)
def test_requests_the_plain_lane_does_not_know_are_answered_by_fastapi(
    register: Any, plain_answers: list[bool], path_id: str, headers: dict[str, str], status: int
) -> None:
    agent, other = register(), register(hostname="web-02")
    assert agent.checkin([]).status_code == 200
    agent_id = {
        "own": agent.agent_id,
        "hex": agent.agent_id.replace("-", ""),
        "other": other.agent_id,
    }
    response = agent.client.post(
        f"/api/v1/agents/{agent_id[path_id]}/checkin",
        content=b'{"agent_version": "0.2.0", "events": []}',
        headers={**agent.headers, "Content-Type": "application/json", **headers},
    )
    assert response.status_code == status, response.text
    assert plain_answers == [True]  # the first check-in only


@pytest.fixture
def strict_client(engine: Engine) -> Iterator[TestClient]:
    settings = Settings(rate_limit_per_minute=1, rate_limit_burst=2)
    with TestClient(create_app(settings=settings, engine=engine)) as client:
        yield client


def test_the_rate_limit_holds_in_the_plain_lane(
    strict_client: TestClient, enrollment_token: Any, plain_answers: list[bool]
) -> None:
    registered = strict_client.post(
        "/api/v1/agents/register",
        json=registration(),
        headers={"Authorization": f"Bearer {enrollment_token()}"},
    ).json()
    agent = RegisteredAgent(registered["agent_id"], registered["agent_token"], strict_client)
    assert agent.checkin([wire_event()]).status_code == 200
    assert agent.checkin([wire_event()]).status_code == 200
    refused = agent.checkin([wire_event()])
    assert plain_answers == [True, True, True]
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1


def test_an_empty_check_in_with_system_info_takes_the_plain_lane(
    agent: RegisteredAgent, plain_answers: list[bool], engine: Engine
) -> None:
    assert agent.checkin([]).status_code == 200
    response = agent.checkin([], system_info={"hostname": "web-01", "free_disk_bytes": 7})
    assert plain_answers == [True, True]
    assert (response.status_code, response.json()["accepted"]) == (200, 0)
    with engine.connect() as connection:
        stored = connection.scalar(
            sa.select(AGENT_TABLE.c.system_info).where(
                AGENT_TABLE.c.id == uuid.UUID(agent.agent_id)
            )
        )
    assert stored == {"hostname": "web-01", "free_disk_bytes": 7}
