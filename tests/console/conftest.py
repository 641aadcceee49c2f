"""Console fixtures: a seeded fleet per module and backend, and AppTest runs against it."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import streamlit as st
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from models import analytics
from models.database import write_transaction
from models.store import store_events
from models.tables import AGENT_TABLE, EVENT_TABLE
from models.wire import Event
from tests.factories import CURRENT_LAYOUT, agent_row, seed_fixture_fleet, wire_event

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "console" / "app.py"

# Text an agent could send that would run or render if it reached Markdown or HTML.
HTML_ATTACK = "<img src=x onerror=alert(1)>"
LINK_ATTACK = "[click](javascript:alert(1))"
BOLD_ATTACK = "**bold**"
HOSTILE_HOST = f"{HTML_ATTACK}{BOLD_ATTACK}"
HOSTILE_MESSAGE = (
    f"copy /var/lib/aggregator/x.json failed {HTML_ATTACK} see {LINK_ATTACK} and {BOLD_ATTACK}\n"
    "second line: rollback complete"
)
HOSTILE_STEP = f"{LINK_ATTACK} copy_state"
HOSTILE_BACKUP = f"/var/backups/{HTML_ATTACK}"
HOSTILE_TEXTS = (HTML_ATTACK, LINK_ATTACK, BOLD_ATTACK)


@dataclass(frozen=True)
class SeededFleet:
    url: str
    now: datetime
    ids: dict[str, uuid.UUID]
    hostile_id: uuid.UUID
    hostile_event_pk: int

    def event_pk(self, hostname: str, event_type: str) -> int:
        """The newest event of one type on one host."""
        engine = analytics.engine_for(self.url)
        query = (
            sa.select(sa.func.max(EVENT_TABLE.c.id))
            .where(EVENT_TABLE.c.agent_id == self.ids[hostname])
            .where(EVENT_TABLE.c.event_type == event_type)
        )
        with engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


def seed_hostile_host(engine: Engine, *, now: datetime) -> tuple[uuid.UUID, int]:
    """A host whose every agent-sent string is an attack on Markdown or HTML rendering.

    It failed its migration (so it shows in the KPIs, groups and host lists) and sent an
    update event too. Returns its agent id and the primary key of its failure event.
    """
    agent_id = uuid.uuid4()
    system_info = {
        "hostname": HOSTILE_HOST,
        "os_version": BOLD_ATTACK,
        LINK_ATTACK: HTML_ATTACK,
    }
    with write_transaction(engine) as connection:
        connection.execute(
            sa.insert(AGENT_TABLE),
            [
                agent_row(
                    id=agent_id,
                    hostname=HOSTILE_HOST,
                    os_type="linux",
                    os_version=BOLD_ATTACK,
                    agent_version=LINK_ATTACK,
                    created_at=now - timedelta(days=2),
                    system_info=system_info,
                )
            ],
        )
        events = [
            Event.model_validate(
                wire_event(
                    "migration_execution_failed",
                    error_message=HOSTILE_MESSAGE,
                    migration_from=f"<b>legacy</b> {LINK_ATTACK}",
                    migration_to=CURRENT_LAYOUT,
                    timestamp=(now - timedelta(minutes=30)).isoformat(),
                    system_info=system_info,
                    details={
                        "failed_step": HOSTILE_STEP,
                        "backup_path": HOSTILE_BACKUP,
                        "errno": 13,
                        "errno_name": "EACCES",
                        "steps": [
                            {"name": "backup", "status": "done"},
                            {"name": HOSTILE_STEP, "status": "failed", "error": HTML_ATTACK},
                            {"name": "validate", "status": "skipped", "reason": BOLD_ATTACK},
                        ],
                        "traceback": f"Traceback (most recent call last):\n  {HTML_ATTACK}",
                    },
                )
            ),
            Event.model_validate(
                wire_event(
                    "update_installed",
                    timestamp=(now - timedelta(minutes=20)).isoformat(),
                    system_info=system_info,
                    details={"package": LINK_ATTACK},
                )
            ),
        ]
        store_events(
            connection,
            agent_id=agent_id,
            events=events,
            received_at=now - timedelta(minutes=2),
            agent_version=LINK_ATTACK,
        )
        pk = connection.execute(
            sa.select(sa.func.min(EVENT_TABLE.c.id)).where(EVENT_TABLE.c.agent_id == agent_id)
        ).scalar_one()
    return agent_id, int(pk)


@pytest.fixture(scope="module")
def fleet(module_engine: Engine) -> SeededFleet:
    """The factories' twelve-host fleet plus one hostile host, on each backend.

    Seeded "now" (per module, not per session), so that the hosts the factories mean to be
    fresh are still fresh, not stale, while the module's tests run.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    ids = seed_fixture_fleet(module_engine, now=now)
    hostile_id, hostile_pk = seed_hostile_host(module_engine, now=now)
    return SeededFleet(
        url=module_engine.url.render_as_string(hide_password=False),
        now=now,
        ids=ids,
        hostile_id=hostile_id,
        hostile_event_pk=hostile_pk,
    )


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches() -> Iterator[None]:
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    analytics.dispose_cached_engines()


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the console at a database and choose its login (`auth`, other settings)."""

    def configure(url: str, *, auth: str = "none", **settings: str) -> None:
        # The repository's .streamlit/config.toml (127.0.0.1) applies, as with the CLI.
        monkeypatch.chdir(REPO)
        monkeypatch.setenv("REDFLAG_DATABASE_URL", url)
        monkeypatch.setenv("REDFLAG_CONSOLE_AUTH", auth)
        for name, value in settings.items():
            monkeypatch.setenv(f"REDFLAG_CONSOLE_{name.upper()}", value)

    return configure


@pytest.fixture
def console(fleet: SeededFleet, console_env: Callable[..., None]) -> Callable[..., AppTest]:
    """Open a console page on the seeded fleet without login; query params deep-link."""
    console_env(fleet.url)

    def open_page(page: str | None = None, **query: Any) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        for name, value in query.items():
            at.query_params[name] = value
        if page is not None:
            at.switch_page(page)
        at.run()
        assert not at.exception, at.exception
        return at

    return open_page


@pytest.fixture(scope="session", autouse=True)
def _scan_for_components_once() -> Iterator[None]:
    """Let AppTest scan the installed packages for Streamlit components once per session.

    Each new AppTest scans the metadata of every installed distribution (about a second
    here); the answer cannot change during a test run, so the first one is reused.
    """
    from streamlit.components.v2 import manifest_scanner

    original = manifest_scanner.scan_component_manifests
    first = functools.cache(original)
    manifest_scanner.scan_component_manifests = lambda max_workers=None: first()
    yield
    manifest_scanner.scan_component_manifests = original
