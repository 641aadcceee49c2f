"""What one API process holds while it runs: settings, engine, rate limiter, write lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ingest_api.limits import RateLimiter
from models.database import write_transaction
from models.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    rate_limiter: RateLimiter
    # SQLite allows one writer at a time; queueing writers here, in the process, is cheaper
    # than having them spin on the database's busy timeout.
    _write_lock: threading.Lock | None = field(default=None)

    @classmethod
    def build(cls, settings: Settings, engine: Engine) -> Runtime:
        return cls(
            settings=settings,
            engine=engine,
            rate_limiter=RateLimiter(
                per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
            ),
            _write_lock=threading.Lock() if engine.dialect.name == "sqlite" else None,
        )

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on success; waits at most the database timeout."""
        lock = self._write_lock
        if lock is not None and not lock.acquire(timeout=self.settings.database_timeout_seconds):
            raise PoolTimeoutError("timed out waiting for the SQLite write lock")
        try:
            with write_transaction(self.engine) as connection:
                yield connection
        finally:
            if lock is not None:
                lock.release()
