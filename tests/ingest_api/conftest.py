"""Fixtures for the ingest API: an app on the test's database, enrolment and agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token
from models.database import write_transaction
from models.settings import Settings
from tests.factories import registration


@pytest.fixture
def settings() -> Settings:
    return Settings(rate_limit_per_minute=6000, rate_limit_burst=1000)


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings=settings, engine=engine)) as test_client:
        yield test_client


@pytest.fixture
def enrollment_token(engine: Engine) -> Callable[..., str]:
    def make(uses: int = 1, ttl: timedelta = timedelta(hours=1)) -> str:
        with write_transaction(engine) as connection:
            return create_enrollment_token(connection, uses=uses, ttl=ttl).token

    return make


@dataclass
class RegisteredAgent:
    agent_id: str
    token: str
    client: TestClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def checkin(self, events: list[Any], **body: Any) -> Any:
        return self.client.post(
            f"/api/v1/agents/{self.agent_id}/checkin",
            json={"agent_version": "0.2.0", "events": events, **body},
            headers=self.headers,
        )


@pytest.fixture
def register(
    client: TestClient, enrollment_token: Callable[..., str]
) -> Callable[..., RegisteredAgent]:
    def make(**overrides: Any) -> RegisteredAgent:
        response = client.post(
            "/api/v1/agents/register",
            json=registration(**overrides),
            headers={"Authorization": f"Bearer {enrollment_token()}"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return RegisteredAgent(body["agent_id"], body["agent_token"], client)

    return make


@pytest.fixture
def agent(register: Callable[..., RegisteredAgent]) -> RegisteredAgent:
    return register()
