"""Server-side faults: a database that is unreachable, fails to commit, fills up or drops
the connection.

Each answer is a 503 with Retry-After, never a 2xx for an event that was not committed and
never a 500; the agent keeps its reports in its spool, and once the database recovers one
`run --once` delivers them, each stored exactly once. (The chaos run restarts PostgreSQL
under load.)
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from agent.cli import ExitCode, Runtime
from agent.cli import main as agent_main
from agent.identity import load_identity
from agent.layout import SPOOL_FILENAME, Layout
from agent.spool import Spool, SpoolKind
from demo.layouts import Host
from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token
from models.database import create_db_engine, write_transaction
from models.schema import upgrade_database
from models.settings import Settings
from models.tables import EVENT_TABLE
from tests.factories import wire_event

SETTINGS = Settings(rate_limit_per_minute=6000, rate_limit_burst=1000, retry_after_seconds=7)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    """The API on the test's database; a bug would come back as a 500, not as an exception."""
    with TestClient(
        create_app(settings=SETTINGS, engine=engine), raise_server_exceptions=False
    ) as client:
        yield client


def agent(host: Host, *args: str, http: httpx.Client) -> tuple[int, str, str]:
    """The agent's command line, in process, talking to the API through `http`."""
    out, err = io.StringIO(), io.StringIO()
    runtime = Runtime(http=http, stdout=out, stderr=err)
    code = agent_main(["--root", str(host.root), *args], runtime)
    return code, out.getvalue(), err.getvalue()


def register(host: Host, client: TestClient, engine: Engine) -> None:
    with write_transaction(engine) as connection:
        token = create_enrollment_token(connection, uses=1, ttl=timedelta(hours=1)).token
    command = ["register", "--server", "http://testserver", "--enrollment-token", token]
    code, _, err = agent(host, *command, http=client)
    assert code == ExitCode.OK, err


def report_updates(host: Host, client: TestClient, count: int) -> list[str]:
    """`report-update` as a package hook would run it, trying the server once each time."""
    warnings = []
    for number in range(count):
        command = ["report-update", "installed", "--package", f"pkg-{number}", "--max-wait", "0"]
        code, _, err = agent(host, *command, http=client)
        assert code == ExitCode.OK, err
        warnings.append(err)
    return warnings


def queued_ids(host: Host) -> set[UUID]:
    path = Layout.at(host.root).reporting_dir / SPOOL_FILENAME
    with Spool(path, kind=SpoolKind.PRIMARY, read_only=True) as spool:
        return {UUID(e.event_id) for e in spool.pending(limit=100_000, max_bytes=2**40)}


def stored_ids(engine: Engine) -> Counter[UUID]:
    with engine.connect() as connection:
        return Counter(connection.scalars(sa.select(EVENT_TABLE.c.event_id)))


def post_checkin(host: Host, client: TestClient) -> tuple[httpx.Response, UUID]:
    """One check-in with one new event, with the agent's own credentials."""
    identity = load_identity(Layout.at(host.root))
    assert identity is not None
    event = wire_event()
    response = client.post(
        f"/api/v1/agents/{identity.agent_id}/checkin",
        json={"agent_version": "0.2.0", "events": [event]},
        headers={"Authorization": f"Bearer {identity.agent_token}"},
    )
    return response, UUID(event["event_id"])


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) == SETTINGS.retry_after_seconds
    assert response.json() == {"detail": "database unavailable, retry later"}


def assert_delivered_exactly_once(
    host: Host, client: TestClient, engine: Engine, spooled: set[UUID]
) -> None:
    """After recovery: one `run --once` delivers the spool, each event stored once."""
    code, out, err = agent(host, "run", "--once", "--max-wait", "0", http=client)
    assert code == ExitCode.OK, err
    assert f"delivered {len(spooled)} reports (accepted {len(spooled)}, duplicates 0" in out
    assert queued_ids(host) == set()
    stored = stored_ids(engine)
    assert set(stored) == spooled
    assert set(stored.values()) == {1}


class DatabaseErrors:
    """The database errors the engine meets, as (statement, driver exception) pairs."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[str | None, BaseException]] = []
        sa.event.listen(engine, "handle_error", self._record)

    def _record(self, context: sa.engine.ExceptionContext) -> None:
        self.seen.append((context.statement, context.original_exception))

    def kinds(self) -> set[str]:
        return {type(exc).__name__ for _, exc in self.seen}


class FailingCommits:
    """While armed, every COMMIT on the engine fails as a lost database would make it fail.

    The `commit` event runs just before the driver's commit, so the transaction is rolled
    back, never committed: exactly the case where a 2xx would be a lie.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failed = 0

    def _fail(self, connection: sa.Connection) -> None:
        self.failed += 1
        raise sa.exc.OperationalError("COMMIT", {}, OSError(5, "Input/output error"))

    def __enter__(self) -> FailingCommits:
        sa.event.listen(self.engine, "commit", self._fail)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "commit", self._fail)


@contextmanager
def database_unreachable(engine: Engine, request: pytest.FixtureRequest) -> Iterator[None]:
    """The database cannot be reached while inside, with every pooled connection gone.

    SQLite: its directory is moved away, as when the volume is unmounted. PostgreSQL: the
    database refuses new connections and its sessions are terminated; the cluster itself,
    which other tests use, is left alone.
    """
    database = engine.url.database
    assert database is not None
    engine.dispose()
    if engine.dialect.name == "sqlite":
        directory = Path(database).parent
        away = directory.with_name(directory.name + "-unmounted")
        directory.rename(away)
        try:
            yield
        finally:
            engine.dispose()
            away.rename(directory)
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
            {"db": database},
        )
    try:
        yield
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


# --- an unreachable database, both backends ----------------------------------------------


def test_unreachable_database_is_503_and_the_events_arrive_once_after_recovery(
    host: Host, api: TestClient, engine: Engine, request: pytest.FixtureRequest
) -> None:
    register(host, api, engine)
    errors = DatabaseErrors(engine)

    with database_unreachable(engine, request):
        warnings = report_updates(host, api, 3)
        response, event_id = post_checkin(host, api)
        health = api.get("/healthz")

    assert errors.kinds() == {"OperationalError"}
    assert_unavailable(response)
    assert health.status_code == 503
    assert all("HTTP 503" in warning and "stay queued" in warning for warning in warnings)
    assert stored_ids(engine) == Counter()
    spooled = queued_ids(host)
    assert len(spooled) == 3
    assert event_id not in spooled
    assert_delivered_exactly_once(host, api, engine, spooled)


# --- commit failures, both backends --------------------------------------------------------


def test_failed_commit_is_503_and_the_events_arrive_once_after_recovery(
    host: Host, api: TestClient, engine: Engine
) -> None:
    register(host, api, engine)

    with FailingCommits(engine) as failing:
        warnings = report_updates(host, api, 3)
        response, event_id = post_checkin(host, api)

    assert failing.failed == 4
    assert all("HTTP 503" in warning and "stay queued" in warning for warning in warnings)
    assert_unavailable(response)
    assert stored_ids(engine) == Counter()
    spooled = queued_ids(host)
    assert len(spooled) == 3
    assert event_id not in spooled
    assert_delivered_exactly_once(host, api, engine, spooled)


# --- a full disk under SQLite --------------------------------------------------------------


def _fill(directory: Path) -> Path:
    """Take every free block of the filesystem; returns the ballast to delete later."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 1):
            with pytest.raises(OSError, match="No space left on device"):
                _write_forever(fd, b"\xff" * chunk)
    finally:
        os.close(fd)
    return ballast


def _write_forever(fd: int, data: bytes) -> None:
    while True:
        os.write(fd, data)


def test_sqlite_on_a_full_disk_answers_503_and_recovers_when_space_returns(
    host: Host, tiny_filesystem: Callable[[str], Path]
) -> None:
    directory = tiny_filesystem("2m")
    engine = create_db_engine(f"sqlite:///{directory}/redflag.db", settings=SETTINGS)
    upgrade_database(engine)
    errors = DatabaseErrors(engine)
    try:
        with TestClient(
            create_app(settings=SETTINGS, engine=engine), raise_server_exceptions=False
        ) as client:
            register(host, client, engine)
            before = stored_ids(engine)
            ballast = _fill(directory)

            warnings = report_updates(host, client, 3)
            response, event_id = post_checkin(host, client)

            assert_unavailable(response)
            assert all("HTTP 503" in warning for warning in warnings)
            # The disk filled when SQLite wrote the transaction to its WAL at COMMIT, with
            # the rows already inserted in its cache: a commit that failed, not an insert.
            assert errors.kinds() == {"OperationalError"}
            assert {str(exc) for _, exc in errors.seen} == {"database or disk is full"}
            # SQLAlchemy names no statement when the COMMIT itself failed.
            assert {statement for statement, _ in errors.seen} == {None}
            assert stored_ids(engine) == before
            spooled = queued_ids(host)
            assert len(spooled) == 3
            assert event_id not in spooled

            ballast.unlink()
            assert_delivered_exactly_once(host, client, engine, spooled)
    finally:
        engine.dispose()


# --- PostgreSQL failing at COMMIT and dropping the connection ------------------------------

# A deferred constraint trigger runs at COMMIT: PostgreSQL itself fails the commit with the
# SQLSTATE of a full disk (53100, which psycopg raises as DiskFull).
_DISK_FULL_AT_COMMIT = """
CREATE FUNCTION chaos_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file "base/16384/16385": No space left on device'
        USING ERRCODE = 'disk_full';
END $$;
CREATE CONSTRAINT TRIGGER chaos_fault AFTER INSERT ON update_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chaos_fail();
"""
# The server process serving the check-in is terminated in the middle of its transaction,
# as by a crash of the backend, a failover or an administrator.
_CONNECTION_LOST = """
CREATE FUNCTION chaos_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_fault BEFORE INSERT ON update_events
    FOR EACH ROW EXECUTE FUNCTION chaos_fail();
"""


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param(_DISK_FULL_AT_COMMIT, {"DiskFull"}, id="disk-full-at-commit"),
        # The client sees the termination notice, or only the closed socket.
        pytest.param(
            _CONNECTION_LOST,
            {"AdminShutdown", "OperationalError"},
            id="connection-lost-mid-transaction",
        ),
    ],
)
def test_postgresql_failure_is_503_and_the_events_arrive_once_after_recovery(
    host: Host, api: TestClient, engine: Engine, fault: str, error: set[str]
) -> None:
    register(host, api, engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(fault)
    errors = DatabaseErrors(engine)

    warnings = report_updates(host, api, 2)
    response, event_id = post_checkin(host, api)

    assert errors.kinds()
    assert errors.kinds() <= error
    assert_unavailable(response)
    assert all("HTTP 503" in warning for warning in warnings)
    assert stored_ids(engine) == Counter()
    spooled = queued_ids(host)
    assert len(spooled) == 2
    assert event_id not in spooled

    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER chaos_fault ON update_events")
    assert_delivered_exactly_once(host, api, engine, spooled)
