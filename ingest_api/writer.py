"""The check-in writer: one thread per API process stores check-ins, all those waiting
at a moment in one transaction (group commit).

A request thread per write, each taking SQLite's one write lock in turn, spends most of
its time queueing: for the lock, and for the GIL again after every statement that lets go
of it while other requests validate. One writer with few statements per group keeps the
database busy while the event loop validates the next check-ins, and one commit serves
them all. A check-in is answered only after the commit of its group, so no event is ever
acknowledged before it is stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from models.store import Checkin, InactiveAgent, StoreResult, store_checkins

log = logging.getLogger(__name__)

# A group stops growing at this many events, so that one transaction stays short and a
# check-in waits for at most a few thousand others.
MAX_EVENTS_PER_GROUP = 5000


@dataclass(frozen=True, slots=True)
class _Job:
    checkin: Checkin
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[StoreResult]

    def settle(self, outcome: StoreResult | BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, outcome)


def _settle(future: asyncio.Future[StoreResult], outcome: StoreResult | BaseException) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class CheckinWriter:
    """Stores check-ins handed over by `store`, in groups, on its own threads.

    `transaction` opens the write transaction a group runs in (the runtime's, which also
    waits for SQLite's in-process write lock). If a group fails as a whole (the database
    is unreachable, full or locked past its timeout, or a foreign writer raced it) every
    check-in in it gets that exception and nothing of the group is stored.

    SQLite has one writer at a time, so one thread. PostgreSQL takes several transactions
    at once: with more threads a group is written while the next waits on the network,
    and `store_checkins` locks agents in id order, so two groups cannot deadlock.
    """

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Connection]],
        *,
        threads: int = 1,
        max_events_per_group: int = MAX_EVENTS_PER_GROUP,
    ) -> None:
        self._transaction = transaction
        self._thread_count = threads
        self._max_events = max_events_per_group
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name=f"checkin-writer-{n}", daemon=True)
            for n in range(self._thread_count)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Store what is queued, then end the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    async def store(self, checkin: Checkin) -> StoreResult:
        """The check-in's result once its group is committed; raises InactiveAgent, or
        whatever made the group fail."""
        if not self._threads:
            raise RuntimeError("the check-in writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreResult] = loop.create_future()
        self._jobs.put(_Job(checkin, loop, future))
        return await future

    def _run(self) -> None:
        for group in self._groups():
            self._write(group)

    def _groups(self) -> Iterator[list[_Job]]:
        while (job := self._jobs.get()) is not None:
            group = [job]
            events = len(job.checkin.events)
            while events < self._max_events:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    yield group
                    return
                group.append(job)
                events += len(job.checkin.events)
            yield group

    def _write(self, group: list[_Job]) -> None:
        outcomes: list[StoreResult | InactiveAgent]
        try:
            with self._transaction() as connection:
                outcomes = store_checkins(
                    connection, [job.checkin for job in group], refuse_revoked=True
                )
        except Exception as exc:
            for job in group:
                job.settle(exc)
            return
        for job, outcome in zip(group, outcomes, strict=True):
            job.settle(outcome)
