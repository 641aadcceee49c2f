"""The chaos harness in miniature: server and agent kills and an outage lose nothing.

The full run is `make chaos` (bench/chaos.py); this one is small enough for the suite and
leaves PostgreSQL itself alone, since other tests use it.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from bench.chaos import ChaosOptions, run_chaos


@pytest.mark.slow
def test_every_spooled_event_is_stored_exactly_once_through_kills_and_an_outage(
    backend: str, request: pytest.FixtureRequest
) -> None:
    options = ChaosOptions(
        agents=3,
        shared_hosts=1,
        server_kills=5,
        agent_kills=5,
        spool_kills=1,
        outages=1,
        outage_seconds=3,
        pg_restarts=0,
        backend=backend,
        duration=8,
        drain_timeout=30,
        seed=20261127,
        pace=(0.05, 0.3),
        agent_max_wait=2,
    )
    if backend == "postgresql":
        admin: Engine = request.getfixturevalue("postgres_admin")
        options.pg_admin_url = admin.url.render_as_string(hide_password=False)

    result = run_chaos(options)

    assert result.ok, result.render()
    assert result.spooled > 0
    assert result.stored == result.spooled
    assert result.missing == result.duplicated == result.unexpected == []
    assert result.wrong_answers == 0
    assert (result.processes, result.server_kills, result.agent_kills) == (4, 5, 6)
    assert len(result.outages) == 1
    # Something was in flight when things died, or the run proved little.
    assert result.server_kills_in_flight + result.agent_kill_phases["R"] > 0
