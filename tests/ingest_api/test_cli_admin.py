"""`redflag-server enroll` and `agents` as an operator uses them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ingest_api.cli import main
from tests.factories import registration


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_enroll_create_prints_the_token_alone_on_the_last_line(
    db_url: str, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys, "--database-url", db_url, "enroll", "create", "--uses", "2", "--expires-in", "1h"
    )
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert token.startswith("rfe_")
    assert "2 use(s)" in out

    response = client.post(
        "/api/v1/agents/register", json=registration(), headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201


def test_agents_list_and_revoke(
    db_url: str, register: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = register(hostname="db-07")

    code, out, _ = _run(capsys, "--database-url", db_url, "agents", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(a["id"], a["hostname"], a["revoked"]) for a in listed] == [
        (agent.agent_id, "db-07", False)
    ]

    code, out, _ = _run(capsys, "--database-url", db_url, "agents", "revoke", agent.agent_id)
    assert code == 0
    assert agent.checkin([]).status_code == 401

    code, out, _ = _run(capsys, "--database-url", db_url, "agents", "list")
    assert "db-07" in out
    assert "revoked" in out


def test_revoking_an_unknown_agent_is_one_line(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys, "--database-url", db_url, "agents", "revoke", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    )
    assert code == 1
    assert err == "redflag-server: error: no agent with id 7c9e6679-7425-40de-944b-e07fc1f90ae7\n"


def test_commands_refuse_a_database_without_schema(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "--database-url", empty_db_url, "enroll", "create")
    assert code == 1
    assert "run `redflag-server db upgrade` first" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["enroll", "create", "--uses", "0"], "expected a positive whole number"),
        (["enroll", "create", "--expires-in", "soon"], "invalid duration 'soon'"),
        (["agents", "revoke", "not-a-uuid"], "is not an agent id"),
        (["serve", "--port", "70000"], "out of range"),
    ],
)
def test_argument_mistakes_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err
