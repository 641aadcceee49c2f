"""Schemathesis fuzzing of the published `/openapi.json`, in process against the ASGI app.

Every generated request, valid or not, with good, missing, forged or misplaced credentials,
must get an answer the document promises: no 5xx, no undocumented status code, a body and
headers matching the documented schema. The seed is fixed, so a failure replays.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.python import asgi

from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database
from models.settings import Settings
from tests.factories import registration

SEED = 20261127
CHECKIN = ("POST", "/api/v1/agents/{agent_id}/checkin")
REGISTER = ("POST", "/api/v1/agents/register")
HEALTH = ("GET", "/healthz")
# Generated cases per operation and mode. `/healthz` takes no input, so Hypothesis
# exhausts it with one case (and has nothing to make invalid).
PLAN = [
    (*CHECKIN, GenerationMode.POSITIVE, 300),
    (*CHECKIN, GenerationMode.NEGATIVE, 300),
    (*REGISTER, GenerationMode.POSITIVE, 200),
    (*REGISTER, GenerationMode.NEGATIVE, 200),
    (*HEALTH, GenerationMode.POSITIVE, 1),
]
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.positive_data_acceptance,
]


class Credentials(StrEnum):
    """Who the fuzzed request claims to be; drawn by Hypothesis along with the case."""

    GENERATED = "generated"  # whatever schemathesis made up: random, malformed or none
    NONE = "none"  # no Authorization header at all
    VALID = "valid"  # the right token (and, for a check-in, the token's own agent id)
    WRONG_KIND = "wrong_kind"  # an agent token to enrol, an enrolment token to check in
    OTHER_AGENT = "other_agent"  # a valid agent token on another agent's path


# Valid credentials get most cases, so generated bodies reach validation and storage.
CREDENTIALS = st.sampled_from([Credentials.VALID] * 4 + list(Credentials))


@dataclass
class Target:
    schema: schemathesis.BaseSchema
    enrollment_token: str
    agent_ids: tuple[str, str]
    agent_token: str

    def authorize(self, case: schemathesis.Case, credentials: Credentials) -> None:
        """Set the case's Authorization header (and agent id) for these credentials."""
        checkin = case.path == CHECKIN[1]
        own_id, other_id = self.agent_ids
        if credentials is Credentials.GENERATED:
            return
        if credentials is Credentials.NONE:
            case.headers.pop("Authorization", None)
            return
        if credentials is Credentials.OTHER_AGENT:
            token, agent_id = self.agent_token, other_id
        elif credentials is Credentials.WRONG_KIND:
            token = self.enrollment_token if checkin else self.agent_token
            agent_id = own_id
        else:
            token = self.agent_token if checkin else self.enrollment_token
            agent_id = own_id
        case.headers["Authorization"] = f"Bearer {token}"
        if checkin:
            case.path_parameters["agent_id"] = agent_id


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """The API on a fresh SQLite file, two enrolled agents, a rate limit never reached."""
    engine = create_db_engine(f"sqlite:///{tmp_path}/fuzz.db")
    upgrade_database(engine)
    app = create_app(
        settings=Settings(rate_limit_per_minute=1_000_000, rate_limit_burst=1_000_000),
        engine=engine,
    )
    with write_transaction(engine) as connection:
        enrollment = create_enrollment_token(connection, uses=100_000, ttl=timedelta(hours=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    agents = []
    with asgi.get_client(app) as client:
        for hostname in ("fuzz-own", "fuzz-other"):
            response = client.post(
                "/api/v1/agents/register",
                json=registration(hostname=hostname),
                headers={"Authorization": f"Bearer {enrollment.token}"},
            )
            assert response.status_code == 201, response.text
            agents.append(response.json())
    yield Target(
        schema=schema,
        enrollment_token=enrollment.token,
        agent_ids=(agents[0]["agent_id"], agents[1]["agent_id"]),
        agent_token=agents[0]["agent_token"],
    )
    # Schemathesis keeps an app's lifespan running for the rest of the process.
    asgi.shutdown_lifespans()
    engine.dispose()


def test_plan_generates_at_least_a_thousand_cases() -> None:
    assert sum(examples for *_, examples in PLAN) >= 1000


@pytest.mark.parametrize(
    ("method", "path", "mode", "examples"),
    PLAN,
    ids=[f"{method} {path} {mode.value}" for method, path, mode, _ in PLAN],
)
def test_fuzzed_requests_get_only_documented_answers(
    target: Target, method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    operation = target.schema[path][method]
    statuses: Counter[int] = Counter()

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), credentials=CREDENTIALS)
    def fuzz(case: schemathesis.Case, credentials: Credentials) -> None:
        target.authorize(case, credentials)
        response = case.call()
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()

    assert sum(statuses.values()) >= examples
    assert all(status < 500 for status in statuses), statuses
    # Proof that the fuzzing reached every layer: authentication, identity, validation.
    expected = {
        REGISTER[1]: {201, 401},
        CHECKIN[1]: {200, 401, 403},
        HEALTH[1]: {200},
    }[path]
    if mode is GenerationMode.NEGATIVE:
        expected.add(422)
    assert expected <= set(statuses), statuses


def test_published_schema_resolves_every_reference() -> None:
    document = create_app().openapi()
    referenced = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(document)))
    assert referenced
    assert referenced <= set(document["components"]["schemas"])
