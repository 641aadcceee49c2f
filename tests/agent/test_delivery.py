"""Delivery: acknowledgements, backoff, Retry-After, 413 splitting, and the check-in loop."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from agent.client import IngestClient
from agent.delivery import Backoff, CheckinLoop, Deliverer, DeliveryResult, RetryPolicy
from agent.identity import Identity
from agent.spool import Spool, SpoolKind
from tests.agent.sandbox import FakeClock
from tests.agent.sandbox import sample_event as event

AGENT_ID = uuid.UUID("8d5c2f0e-8f4e-4b8b-9b7e-1f2f4b5a6c7d")
Handler = Callable[[httpx.Request, dict[str, Any]], httpx.Response]


class FakeServer:
    """Records every check-in and answers with a script of responses, then with success."""

    def __init__(self, *script: Handler) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.stored: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.script:
            return self.script.pop(0)(request, body)
        return self.accept(request, body)

    def accept(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        accepted = duplicates = 0
        for item in body["events"]:
            if item["event_id"] in self.stored:
                duplicates += 1
            else:
                accepted += 1
            self.stored[item["event_id"]] = self.stored.get(item["event_id"], 0) + 1
        return httpx.Response(200, json=verdict(accepted=accepted, duplicates=duplicates))

    @property
    def sent_ids(self) -> list[str]:
        return [item["event_id"] for body in self.requests for item in body["events"]]


def verdict(**fields: Any) -> dict[str, Any]:
    return {
        "accepted": 0,
        "duplicates": 0,
        "rejected": [],
        "check_in_interval_seconds": 300,
        "server_time": datetime.now(UTC).isoformat(),
        **fields,
    }


def status(code: int, **headers: str) -> Handler:
    return lambda request, body: httpx.Response(code, json={"detail": "no"}, headers=headers)


def network_error(request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


@pytest.fixture
def spool() -> Spool:
    return Spool(None, kind=SpoolKind.MEMORY)


def deliverer(server: FakeServer, clock: FakeClock, **options: Any) -> Deliverer:
    http = httpx.Client(transport=httpx.MockTransport(server))
    identity = Identity(
        server_url="https://redflag.example.org", agent_id=AGENT_ID, agent_token="tok"
    )
    return Deliverer(
        IngestClient(identity.server_url, http=http, now=clock.now),
        identity,
        system_info=lambda: {"hostname": "web-01"},
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        backoff=Backoff(rng=random.Random(4)),
        **options,
    )


def queue(spool: Spool, count: int) -> list[str]:
    events = [event(f"e{i}") for i in range(count)]
    for item in events:
        spool.add(item)
    return [str(item.event_id) for item in events]


def test_acknowledged_events_leave_the_spool(spool: Spool, clock: FakeClock) -> None:
    sent = queue(spool, 3)
    server = FakeServer()

    result = deliverer(server, clock).deliver(spool, max_wait=0)

    assert result.complete
    assert (result.accepted, result.requests) == (3, 1)
    assert server.sent_ids == sent
    assert spool.counts().queued == 0
    assert spool.get("last_checkin")["accepted"] == 3
    assert spool.get("check_in_interval_seconds") == 300


def test_envelope_carries_agent_version_system_info_and_events(
    spool: Spool, clock: FakeClock
) -> None:
    queue(spool, 1)
    server = FakeServer()

    deliverer(server, clock).deliver(spool, max_wait=0)

    [body] = server.requests
    assert body["agent_version"] == "0.2.0"
    assert body["system_info"] == {"hostname": "web-01"}
    assert body["events"][0]["event_type"] == "migration_execution_failed"


def test_duplicates_count_as_acknowledged(spool: Spool, clock: FakeClock) -> None:
    queue(spool, 2)
    server = FakeServer(lambda r, b: httpx.Response(200, json=verdict(duplicates=2)))

    result = deliverer(server, clock).deliver(spool, max_wait=0)

    assert result.duplicates == 2
    assert spool.counts().queued == 0


def test_events_the_server_rejects_are_kept_apart_with_its_reason(
    spool: Spool, clock: FakeClock
) -> None:
    sent = queue(spool, 3)
    reject_second = verdict(
        accepted=2,
        rejected=[{"index": 1, "event_id": sent[1], "error": "timestamp: is in the future"}],
    )
    server = FakeServer(lambda r, b: httpx.Response(200, json=reject_second))

    result = deliverer(server, clock).deliver(spool, max_wait=0)

    assert result.rejected == 1
    assert spool.counts().queued == 0
    [rejected] = spool.rejected()
    assert (rejected.event_id, rejected.reason) == (sent[1], "timestamp: is in the future")


def test_batches_hold_at_most_1000_events(spool: Spool, clock: FakeClock) -> None:
    template = event()
    sent = []
    for _ in range(2500):
        copy = template.model_copy(update={"event_id": uuid.uuid4()})
        spool.add(copy)
        sent.append(str(copy.event_id))
    server = FakeServer()

    result = deliverer(server, clock).deliver(spool, max_wait=0)

    assert [len(body["events"]) for body in server.requests] == [1000, 1000, 500]
    assert server.sent_ids == sent
    assert result.accepted == 2500


def test_batches_stay_under_the_byte_budget(spool: Spool, clock: FakeClock) -> None:
    for _ in range(6):
        spool.add(event("z" * 4000))
    server = FakeServer()

    deliverer(server, clock, max_batch_bytes=10_000).deliver(spool, max_wait=0)

    assert all(len(body["events"]) <= 2 for body in server.requests)
    assert len(server.sent_ids) == 6


def test_429_with_retry_after_delays_the_next_attempt_by_at_least_that(
    spool: Spool, clock: FakeClock
) -> None:
    queue(spool, 1)
    server = FakeServer(status(429, **{"Retry-After": "17"}))

    result = deliverer(server, clock).deliver(spool, max_wait=600)

    assert result.complete
    assert len(server.requests) == 2
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] >= 17


def test_429_without_retry_after_waits_a_minute(spool: Spool, clock: FakeClock) -> None:
    queue(spool, 1)
    server = FakeServer(status(429))

    deliverer(server, clock).deliver(spool, max_wait=600)

    assert clock.sleeps[0] >= 60


def test_503_with_retry_after_is_honoured(spool: Spool, clock: FakeClock) -> None:
    queue(spool, 1)
    server = FakeServer(status(503, **{"Retry-After": "9"}))

    result = deliverer(server, clock).deliver(spool, max_wait=600)

    assert result.complete
    assert clock.sleeps[0] >= 9


def test_network_errors_back_off_exponentially_with_full_jitter(
    spool: Spool, clock: FakeClock
) -> None:
    queue(spool, 1)
    server = FakeServer(*[network_error] * 6)

    result = deliverer(server, clock).deliver(spool, max_wait=10_000)

    assert result.complete
    assert len(clock.sleeps) == 6
    for attempt, slept in enumerate(clock.sleeps):
        assert 0 <= slept <= 2**attempt
    # Jitter: the waits are not simply the ceilings.
    assert clock.sleeps != [2.0**n for n in range(6)]


def test_backoff_is_capped_and_resets_after_success() -> None:
    backoff = Backoff(RetryPolicy(base_delay=1, max_delay=30), random.Random(1))
    delays = [backoff.next_delay() for _ in range(20)]
    assert max(delays) <= 30
    backoff.reset()
    assert backoff.next_delay() <= 1
    assert backoff.next_delay(retry_after=45) >= 45


def test_giving_up_keeps_events_and_says_how_long_to_wait(spool: Spool, clock: FakeClock) -> None:
    queue(spool, 2)
    server = FakeServer(status(429, **{"Retry-After": "120"}))

    result = deliverer(server, clock).deliver(spool, max_wait=30)

    assert not result.complete
    assert result.retry_delay is not None
    assert result.retry_delay >= 120
    assert result.remaining == 2
    assert clock.sleeps == []
    assert "HTTP 429" in (spool.get("last_error") or {}).get("error", "")


@pytest.mark.parametrize("code", [400, 404, 409, 422])
def test_client_errors_are_never_retried(spool: Spool, clock: FakeClock, code: int) -> None:
    queue(spool, 2)
    server = FakeServer(*[status(code)] * 5)

    result = deliverer(server, clock).deliver(spool, max_wait=10_000)

    assert len(server.requests) == 1
    assert clock.sleeps == []
    assert result.error is not None
    assert not result.auth_failed
    assert spool.counts().queued == 2


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failure_is_reported_not_retried(spool: Spool, clock: FakeClock, code: int) -> None:
    queue(spool, 1)
    server = FakeServer(*[status(code)] * 5)

    result = deliverer(server, clock).deliver(spool, max_wait=10_000)

    assert len(server.requests) == 1
    assert result.auth_failed
    assert spool.counts().queued == 1


def test_413_splits_the_batch_until_it_fits(spool: Spool, clock: FakeClock) -> None:
    sent = queue(spool, 7)
    server = FakeServer()

    def limited(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if len(body["events"]) > 2:
            server.requests.append(body)
            return httpx.Response(413, json={"detail": "request body too large"})
        return server(request)

    http = httpx.Client(transport=httpx.MockTransport(limited))
    sender = deliverer(server, clock)
    sender.client = IngestClient("https://redflag.example.org", http=http)

    result = sender.deliver(spool, max_wait=0)

    assert result.complete
    assert sorted(server.stored) == sorted(sent)
    assert all(count == 1 for count in server.stored.values())
    assert clock.sleeps == []


def test_a_single_event_too_large_for_the_server_is_set_apart(
    spool: Spool, clock: FakeClock
) -> None:
    [sent] = queue(spool, 1)
    server = FakeServer(*[status(413)] * 5)

    result = deliverer(server, clock).deliver(spool, max_wait=10_000)

    assert len(server.requests) == 1
    assert result.rejected == 1
    [rejected] = spool.rejected()
    assert rejected.event_id == sent
    assert rejected.reason.startswith("too large for the server")


def test_heartbeat_checks_in_with_nothing_queued(spool: Spool, clock: FakeClock) -> None:
    server = FakeServer()

    result = deliverer(server, clock).deliver(spool, max_wait=0, heartbeat=True)

    assert result.requests == 1
    assert server.requests[0]["events"] == []
    assert deliverer(server, clock).deliver(spool, max_wait=0).requests == 0


# --- the loop ------------------------------------------------------------------------------


class StopAfter(threading.Event):
    """A stop event that records each wait; the loop ends at the wait after `waits`."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.remaining = waits
        self.waited: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout or 0.0)
        self.remaining -= 1
        return self.remaining < 0


def test_loop_splays_then_follows_the_server_interval() -> None:
    results = iter([DeliveryResult(interval_seconds=120), DeliveryResult(interval_seconds=90)])
    stop = StopAfter(2)
    loop = CheckinLoop(
        deliver_once=lambda: next(results), stop=stop, rng=random.Random(2), splay_seconds=30
    )

    loop.run()

    first, second, third = stop.waited[:3]
    assert 0 <= first <= 30
    assert 120 <= second <= 150
    assert 90 <= third <= 120


def test_loop_waits_the_backoff_after_a_failure_and_clamps_silly_intervals() -> None:
    results = iter(
        [
            DeliveryResult(error="down", retry_delay=7.5),
            DeliveryResult(interval_seconds=5),
            DeliveryResult(interval_seconds=10**6),
        ]
    )
    stop = StopAfter(3)
    loop = CheckinLoop(
        deliver_once=lambda: next(results), stop=stop, rng=random.Random(3), splay_seconds=0
    )

    loop.run()

    assert stop.waited[1:] == [7.5, 30, 3600]


def test_loop_survives_a_cycle_that_raises() -> None:
    calls: list[int] = []

    def deliver_once() -> DeliveryResult:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk on fire")
        return DeliveryResult(interval_seconds=60)

    stop = StopAfter(2)
    CheckinLoop(deliver_once=deliver_once, stop=stop, splay_seconds=0).run()

    assert len(calls) == 2
    assert stop.waited[1] == 300  # the default interval after a failed cycle
