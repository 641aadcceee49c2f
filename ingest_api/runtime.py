"""What one API process holds while it runs: settings, engine, rate limiter, write lock,
check-in writer, and the agent tokens it has recently proven."""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ingest_api.limits import RateLimiter
from ingest_api.service import TokenOwner
from ingest_api.writer import CheckinWriter
from models.database import write_transaction
from models.settings import Settings


class TokenCache:
    """The owners of recently proven tokens, by token hash, each for up to `ttl` seconds.

    It spares a check-in the thread hop and the query of looking its token up. A token's
    owner never changes, so the one thing that can go stale is revocation, and that is
    checked again, exactly, inside every check-in's write transaction. Bounded in size:
    the oldest entries go first. Used from the event loop's thread only.

    An entry lives a random part of the last `jitter` of `ttl` less than `ttl`: tokens
    proven together (a fleet checking in after a restart or an outage) are not all looked
    up again in the same instant. When 50 agents' entries expired together, the lookups
    held up every check-in behind them for 100-180 ms (bench/ingest.py, single events).
    """

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int = 100_000,
        jitter: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.jitter = jitter
        self.clock = clock
        self.rng = rng
        self._entries: OrderedDict[str, tuple[TokenOwner, float]] = OrderedDict()

    def get(self, token_hash: str) -> TokenOwner | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[token_hash]
            return None
        return entry[0]

    def put(self, token_hash: str, owner: TokenOwner) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(token_hash, None)
        lifetime = self.ttl * (1 - self.jitter * self.rng())
        self._entries[token_hash] = (owner, self.clock() + lifetime)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# Check-in groups written at once on PostgreSQL: one is written while the other waits on
# the network. Four measured no faster than two on 2 cores (more GIL hand-offs): 7,700
# against 8,100 events/s in batches, 600 against 770 single-event check-ins/s.
POSTGRESQL_WRITER_THREADS = 2
# PostgreSQL stores a group on one backend, one core: capped at a thousand events, the
# check-ins waiting make groups for both writers, and both cores insert. 50 agents in
# batches of 100, alternating runs: 21,400-22,800 events/s against 20,000-21,600 with
# the 5,000 SQLite's one writer is best with (one commit for more check-ins).
POSTGRESQL_MAX_EVENTS_PER_GROUP = 1000


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    rate_limiter: RateLimiter
    agent_tokens: TokenCache
    # SQLite allows one writer at a time; queueing writers here, in the process, is cheaper
    # than having them spin on the database's busy timeout.
    _write_lock: threading.Lock | None = field(default=None)
    checkin_writer: CheckinWriter = field(init=False)

    def __post_init__(self) -> None:
        if self._write_lock is not None:
            self.checkin_writer = CheckinWriter(self.write)
        else:
            self.checkin_writer = CheckinWriter(
                self.write,
                threads=POSTGRESQL_WRITER_THREADS,
                max_events_per_group=POSTGRESQL_MAX_EVENTS_PER_GROUP,
            )

    @classmethod
    def build(cls, settings: Settings, engine: Engine) -> Runtime:
        return cls(
            settings=settings,
            engine=engine,
            rate_limiter=RateLimiter(
                per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
            ),
            agent_tokens=TokenCache(ttl=settings.auth_cache_seconds),
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
