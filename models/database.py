"""The one engine factory: SQLite tuned for concurrent readers, PostgreSQL with pooling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlmodel import Session

from models.settings import Settings
from models.types import dumps_json

log = logging.getLogger(__name__)


class DatabaseURLError(ValueError):
    """The database URL cannot be used; the message is fit for one line of CLI output."""


def normalise_url(url: str) -> str:
    """Accept the URL shapes operators paste (`postgres://`, bare `postgresql://`)."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_db_engine(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """An engine for `url` (default: the settings' database URL), tuned for its backend."""
    settings = settings or Settings()
    raw = normalise_url(url or settings.database_url)
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise DatabaseURLError(f"malformed database URL: {raw!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, settings)
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            parsed,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
            pool_timeout=settings.database_timeout_seconds,
            pool_pre_ping=True,
            # The connection used last, as on SQLite: warm caches in the server process
            # behind it, and statements psycopg has prepared on it.
            pool_use_lifo=True,
            connect_args={"connect_timeout": max(1, int(settings.database_timeout_seconds))},
            json_serializer=dumps_json,
        )
    raise DatabaseURLError(
        f"unsupported database {backend!r} in {parsed.render_as_string(hide_password=True)}: "
        "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    )


def _sqlite_engine(url: sa.URL, settings: Settings) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = Path(database).expanduser().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseURLError(
                f"cannot create the directory for the SQLite database {directory}: {exc.strerror}"
            ) from None
    busy_ms = int(settings.database_timeout_seconds * 1000)
    # A file database gets a pool of connections, each with its own page cache: handing
    # out the one used last keeps the check-in writer on a warm cache instead of cycling
    # through every connection the API ever opened (28% more events/s in bench/ingest.py).
    in_memory = _in_memory(url)
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": settings.database_timeout_seconds},
        json_serializer=dumps_json,
        **({} if in_memory else {"pool_use_lifo": True}),
    )

    @sa.event.listens_for(engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, say when a transaction begins, so that
        # writers can take the write lock up front (see write_transaction).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # Ingest inserts into six indexes of a growing table: a 16 MiB page cache (the
        # default is 2 MiB) keeps their hot pages. The API checkpoints the WAL on a thread
        # of its own (`WalCheckpoints`); the automatic checkpoint in a commit, at 50,000
        # WAL pages (200 MiB, default 1,000), is the safety net for other writers and for
        # a WAL that a steady stream of commits never lets start over (see there).
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _in_memory(url: sa.URL) -> bool:
    """Whether a SQLite URL names an in-memory database."""
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


_WRITE_OPTION = "redflag_write"
SQLITE_CACHE_KIB = 16 * 1024
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 50_000


class WalCheckpoints:
    """Checkpoints of a SQLite database's WAL on a thread of their own.

    SQLite checkpoints in the commit that takes the WAL past `wal_autocheckpoint` pages:
    that commit copies the WAL into the database and syncs both while every check-in
    queued behind it waits. Under single-event check-ins at half load that put p99 at
    106-120 ms, against 23-25 ms with no checkpoint in the window (bench/ingest.py). Here
    a PASSIVE checkpoint runs every `interval` seconds on a connection of its own; it takes
    no write lock, so commits go on meanwhile. Durability is unchanged: a commit is in the
    WAL either way.

    SQLite starts the WAL over from its beginning only in a commit that finds it wholly
    checkpointed. Under a steady stream of commits a PASSIVE checkpoint never catches up
    with the last of them, so the WAL grows until the automatic checkpoint, which has
    little left to copy but still syncs in the commit (13-19 ms on the benchmark
    machine's disk). At 10,000 pages that came every 0.85 s under 1,000 single-event
    check-ins a second; at `SQLITE_WAL_AUTOCHECKPOINT_PAGES` (50,000) every 2 s or so:
    p99 15-23 ms against 24-30 ms, and batches 26,300-27,000 events/s against
    23,200-24,200. Any pause in the commits lets the WAL start over long before.

    `start` does nothing for PostgreSQL or an in-memory SQLite database.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.25) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        url = self._engine.url
        if url.get_backend_name() != "sqlite" or _in_memory(url):
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the WAL, frames checkpointed).

        On a connection of its own, not from the pool: a pooled connection handed back
        here would be the next the check-in writer gets (last in, first out), with a page
        cache that missed every write since this thread last had it.
        """
        if self._connection is None:
            self._connection = self._engine.raw_connection()
            self._connection.detach()
        cursor = self._connection.cursor()
        try:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            busy, frames, done = cursor.fetchone()
        finally:
            cursor.close()
        return busy, frames, done

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self._interval):
                try:
                    self.checkpoint()
                except Exception as exc:  # the next commit checkpoints by itself if need be
                    log.warning(
                        "WAL checkpoint failed, retrying in %.2f s: %s", self._interval, exc
                    )
        finally:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


@contextmanager
def write_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction meant to write, committed on success.

    On SQLite it begins with BEGIN IMMEDIATE: the write lock is taken (waiting up to the
    busy timeout) before anything is read, so a read transaction never has to upgrade to
    a write one, which is what makes SQLite answer "database is locked" at once.
    """
    with engine.connect() as connection:
        connection = connection.execution_options(**{_WRITE_OPTION: True})
        with connection.begin():
            yield connection


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def describe_url(engine: Engine) -> str:
    """The engine's URL with any password hidden, for logs and CLI output."""
    return engine.url.render_as_string(hide_password=True)
