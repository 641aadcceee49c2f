"""Delivery of spooled reports: batching, backoff with jitter, Retry-After and the check-in loop.

At-least-once: an event leaves the spool only once the server acknowledged it (accepted
or duplicate); the server deduplicates by event id, so a resend after a crash is harmless.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent import AGENT_VERSION
from agent.client import (
    AuthenticationError,
    IngestClient,
    PayloadTooLargeError,
    RequestRejectedError,
    RetryableError,
)
from agent.identity import Identity
from agent.spool import QueuedEvent, Spool
from models.wire import MAX_EVENTS_PER_CHECKIN

log = logging.getLogger(__name__)

# The server refuses bodies over 2 MiB by default; half of that leaves room for the
# envelope and for a server configured tighter than the default.
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024
MIN_INTERVAL_SECONDS = 30
MAX_INTERVAL_SECONDS = 3600
DEFAULT_SPLAY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_delay: float = 1.0
    max_delay: float = 300.0


class Backoff:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After.

    Full jitter spreads a fleet that lost its server at the same moment, so that it does
    not come back as one wave.
    """

    def __init__(self, policy: RetryPolicy | None = None, rng: random.Random | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self.policy.max_delay, self.policy.base_delay * 2**self.failures)
        self.failures += 1
        jittered = self.rng.uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class DeliveryResult:
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    remaining: int = 0
    error: str | None = None
    # Set when delivery stopped on a failure worth retrying: the wait it asked for.
    retry_delay: float | None = None
    auth_failed: bool = False
    interval_seconds: int | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.remaining == 0


@dataclass
class Deliverer:
    """Sends what a spool holds to the server for one identity."""

    client: IngestClient
    identity: Identity
    system_info: Callable[[], dict[str, Any]]
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    # Shared by the check-in loop across cycles, so that a long outage backs off further
    # and further instead of starting over at one second each time.
    backoff: Backoff = field(default_factory=Backoff)
    max_batch_events: int = MAX_EVENTS_PER_CHECKIN
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES

    def deliver(self, spool: Spool, *, max_wait: float, heartbeat: bool = False) -> DeliveryResult:
        """Empty the spool, retrying while the waits fit in `max_wait` seconds.

        With `heartbeat`, check in even when nothing is queued (the server's last-seen).
        """
        result = DeliveryResult()
        deadline = self.monotonic() + max_wait
        checked_in = False
        while True:
            batch = spool.pending(limit=self.max_batch_events, max_bytes=self.max_batch_bytes)
            if not batch and (checked_in or not heartbeat):
                break
            try:
                self._send(spool, batch, result)
            except RetryableError as exc:
                delay = self.backoff.next_delay(exc.retry_after)
                self._record_error(spool, str(exc))
                if self.monotonic() + delay > deadline:
                    result.error, result.retry_delay = str(exc), delay
                    break
                log.info("%s; retrying in %.1f s", exc, delay)
                self.sleep(delay)
                continue
            except (AuthenticationError, RequestRejectedError) as exc:
                result.error = str(exc)
                result.auth_failed = isinstance(exc, AuthenticationError)
                self._record_error(spool, str(exc))
                break
            checked_in = True
            self.backoff.reset()
        result.remaining = spool.counts().queued
        return result

    def _send(self, spool: Spool, batch: list[QueuedEvent], result: DeliveryResult) -> None:
        """One check-in; a 413 halves the batch until each part fits or one event is left."""
        result.requests += 1
        try:
            response = self.client.checkin(
                self.identity.agent_id, self.identity.agent_token, self._envelope(batch)
            )
        except PayloadTooLargeError as exc:
            if len(batch) <= 1:
                for event in batch:
                    spool.reject(event.event_id, f"too large for the server: {exc}")
                    result.rejected += 1
                return
            middle = len(batch) // 2
            log.info("server refused %d events as too large; splitting", len(batch))
            self._send(spool, batch[:middle], result)
            self._send(spool, batch[middle:], result)
            return
        refused: dict[str, str] = {}
        for item in response.rejected:
            if 0 <= item.index < len(batch):
                refused[batch[item.index].event_id] = item.error
        for event_id, reason in refused.items():
            spool.reject(event_id, reason)
        # Everything sent and not rejected is acknowledged: accepted now or a duplicate
        # of an earlier copy the server already keeps.
        spool.acknowledge([e.event_id for e in batch if e.event_id not in refused])
        result.accepted += response.accepted
        result.duplicates += response.duplicates
        result.rejected += len(refused)
        result.interval_seconds = response.check_in_interval_seconds
        spool.put(
            "last_checkin",
            {
                "at": datetime.now(UTC).isoformat(),
                "server_time": response.server_time.isoformat(),
                "server": self.client.server_url,
                "sent": len(batch),
                "accepted": response.accepted,
                "duplicates": response.duplicates,
                "rejected": len(refused),
            },
        )
        spool.put("check_in_interval_seconds", response.check_in_interval_seconds)
        spool.put("last_error", None)

    @staticmethod
    def _record_error(spool: Spool, message: str) -> None:
        spool.put("last_error", {"at": datetime.now(UTC).isoformat(), "error": message})

    def _envelope(self, batch: list[QueuedEvent]) -> bytes:
        # The spooled bodies are already JSON: splice them in rather than re-encode.
        head = json.dumps(
            {"agent_version": AGENT_VERSION, "system_info": self.system_info()},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        events = ",".join(event.body for event in batch)
        return f'{head[:-1]},"events":[{events}]}}'.encode("utf-8", "surrogatepass")


def clamp_interval(seconds: int | None, default: int) -> int:
    value = default if seconds is None else seconds
    return max(MIN_INTERVAL_SECONDS, min(MAX_INTERVAL_SECONDS, value))


@dataclass
class CheckinLoop:
    """The `run` loop: splay, check in, wait the server's interval (or the backoff), repeat."""

    deliver_once: Callable[[], DeliveryResult]
    stop: threading.Event
    rng: random.Random = field(default_factory=random.Random)
    default_interval: int = 300
    splay_seconds: float = DEFAULT_SPLAY_SECONDS
    on_result: Callable[[DeliveryResult], None] = lambda result: None

    def run(self) -> None:
        # Splay first, so a fleet that reboots together does not check in together.
        delay = self.rng.uniform(0, self.splay_seconds)
        interval = self.default_interval
        while not self.stop.wait(delay):
            try:
                result = self.deliver_once()
            except Exception as exc:  # a service outlives one bad cycle; the next may work
                log.error("check-in cycle failed: %s: %s", type(exc).__name__, exc)
                log.debug("check-in cycle failure", exc_info=True)
                result = DeliveryResult(error=f"{type(exc).__name__}: {exc}")
            self.on_result(result)
            interval = clamp_interval(result.interval_seconds or interval, self.default_interval)
            if result.retry_delay is not None:
                delay = result.retry_delay
            else:
                delay = interval + self.rng.uniform(0, self.splay_seconds)
