"""Shared fixtures: each database test runs on a fresh SQLite file and a fresh PostgreSQL db."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from models.database import create_db_engine
from models.schema import upgrade_database

PG_ADMIN_URL = os.environ.get(
    "REDFLAG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        return str(exc.orig).splitlines()[0]
    return None


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the maintenance database, for CREATE/DROP DATABASE."""
    reason = _postgres_reachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and cannot be reached: {reason}")
        pytest.skip(f"PostgreSQL not reachable: {reason}")
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: Engine) -> Iterator[str]:
    """A database upgraded once per run; each test copies it, which is much faster."""
    name = f"redflag_tmpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with postgres_admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_db_engine(_pg_url(name))
    upgrade_database(engine)
    engine.dispose()
    yield name
    _drop_pg_database(postgres_admin, name)


def _pg_url(name: str) -> str:
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_db_url(backend: str, request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """The URL of a new, empty database on the test's backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/redflag.db"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    name = f"redflag_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield _pg_url(name)
    _drop_pg_database(admin, name)


@contextmanager
def _migrated_database(
    backend: str, request: pytest.FixtureRequest, directory: object
) -> Iterator[str]:
    """A new database already at the newest schema, dropped afterwards; yields its URL."""
    if backend == "sqlite":
        url = f"sqlite:///{directory}/redflag.db"
        engine = create_db_engine(url)
        upgrade_database(engine)
        engine.dispose()
        yield url
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    template: str = request.getfixturevalue("postgres_template")
    name = f"redflag_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield _pg_url(name)
    _drop_pg_database(admin, name)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """The URL of a new database already at the newest schema."""
    with _migrated_database(backend, request, tmp_path) as url:
        yield url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def module_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """An engine on one migrated database shared by a module's tests, on each backend.

    For large parametrized suites whose cases each keep to their own rows (their own
    agent), where a fresh database per case would cost more than the case itself.
    """
    directory = tmp_path_factory.mktemp("module_db")
    with _migrated_database(str(request.param), request, directory) as url:
        engine = create_db_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh, migrated database (SQLite file or PostgreSQL)."""
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()
