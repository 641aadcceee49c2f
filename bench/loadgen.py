"""The load generator: simulated agents in their own process, so the client's CPU is measured
apart from the server's and the harness never runs its own event loop beside the server.

It speaks just enough HTTP/1.1 over keep-alive connections (asyncio streams on uvloop when
present), with every request body serialised before the clock starts: on a 2-core machine a
general-purpose client would otherwise take a core away from the server it measures.

Protocol with the harness (`bench.ingest`): one line of JSON spec on stdin; it prepares,
prints `ready`, waits for `go`, runs, and prints one line of JSON results.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.workload import Workload

CHECKIN_PATH = "/api/v1/agents/{agent_id}/checkin"


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; requests on it are strictly sequential."""

    # uvicorn closes a keep-alive connection idle for 5 s; one idle longer than this is not
    # reused, so a request never races the server's close.
    MAX_IDLE_SECONDS = 3.0

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = time.perf_counter()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is not None and time.perf_counter() - self.last_used > self.MAX_IDLE_SECONDS:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(data)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = _content_length(head)
            body = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        if b"connection: close" in head.lower():
            self.close()
        self.last_used = time.perf_counter()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    start = lowered.find(b"content-length:")
    if start < 0:
        raise HttpError("response without content-length")
    end = lowered.find(b"\r\n", start)
    return int(lowered[start + 15 : end])


def request_bytes(host: str, port: int, path: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Tally:
    """What the server answered, summed over a run."""

    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    latencies: list[float] = field(default_factory=list)

    def record(self, status: int, body: bytes, latency: float) -> None:
        self.requests += 1
        self.latencies.append(latency)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status != 200:
            self.errors += 1
            self.first_error = self.first_error or f"{status}: {body[:200]!r}"
            return
        answer = json.loads(body)
        self.accepted += answer["accepted"]
        self.duplicates += answer["duplicates"]
        self.rejected += len(answer["rejected"])

    def failure(self, message: str) -> None:
        self.requests += 1
        self.errors += 1
        self.statuses["network"] = self.statuses.get("network", 0) + 1
        self.first_error = self.first_error or message

    def summary(self, elapsed: float, cpu: float, warmup: Tally | None = None) -> dict[str, Any]:
        """Figures of the measured window; the warm-up only adds to what was stored."""
        ordered = sorted(self.latencies)
        return {
            "warmup_accepted": warmup.accepted if warmup else 0,
            "warmup_errors": warmup.errors if warmup else 0,
            "requests": self.requests,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
            "statuses": self.statuses,
            "first_error": self.first_error,
            "elapsed": elapsed,
            "client_cpu_seconds": cpu,
            "p50_ms": _percentile(ordered, 0.50) * 1000,
            "p90_ms": _percentile(ordered, 0.90) * 1000,
            "p99_ms": _percentile(ordered, 0.99) * 1000,
            "max_ms": (ordered[-1] if ordered else 0.0) * 1000,
        }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class SingleEventBodies:
    """Single-event check-ins made on the fly from a template: only the event id changes.

    The id has a fixed length, so the pre-built head (with its Content-Length) stays right
    and making a request costs one bytes concatenation.
    """

    def __init__(self, spec: dict[str, Any], workload: Workload) -> None:
        self.templates: list[tuple[bytes, bytes]] = []
        for agent in spec["agents"]:
            sample = workload.events(
                agent=agent["index"], batch=1_000_000, size=1, hostname=agent["hostname"]
            )
            old_id = sample[0]["event_id"].encode()
            body = json.dumps(
                {"agent_version": "0.2.0", "events": sample}, separators=(",", ":")
            ).encode()
            path = CHECKIN_PATH.format(agent_id=agent["id"])
            data = request_bytes(spec["host"], spec["port"], path, agent["token"], body)
            prefix, _, suffix = data.partition(old_id)
            self.templates.append((prefix, suffix))
        self.run_bits = uuid.uuid4().int >> 64 << 64
        self.counter = 0

    def next(self, agent_slot: int) -> bytes:
        self.counter += 1
        event_id = str(uuid.UUID(int=self.run_bits | self.counter, version=4)).encode()
        prefix, suffix = self.templates[agent_slot % len(self.templates)]
        return prefix + event_id + suffix


async def run_batches(spec: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """Closed loop: each agent on its own connection sends its batches back to back."""
    host, port = spec["host"], spec["port"]
    plans: list[list[bytes]] = []
    for agent in spec["agents"]:
        path = CHECKIN_PATH.format(agent_id=agent["id"])
        bodies = [
            workload.body(
                agent=agent["index"], batch=b, size=spec["batch_size"], hostname=agent["hostname"]
            )
            for b in range(spec["first_batch"], spec["first_batch"] + spec["batches_per_agent"])
        ]
        plans.append([request_bytes(host, port, path, agent["token"], b) for b in bodies])
    await _handshake()
    tally = Tally()
    deadline = time.perf_counter() + spec["deadline"]

    async def agent_loop(requests: list[bytes]) -> None:
        connection = Connection(host, port)
        for data in requests:
            if time.perf_counter() > deadline:
                break
            started = time.perf_counter()
            try:
                status, body = await connection.request(data)
            except HttpError as exc:
                tally.failure(str(exc))
                continue
            tally.record(status, body, time.perf_counter() - started)
        connection.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(agent_loop(requests) for requests in plans))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = tally.summary(elapsed, cpu)
    result["deadline_hit"] = time.perf_counter() > deadline
    return result


async def run_closed(spec: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """Closed loop of single-event check-ins: `concurrency` connections, no think time."""
    host, port = spec["host"], spec["port"]
    bodies = SingleEventBodies(spec, workload)
    await _handshake()
    warm_until = time.perf_counter() + spec["warmup"]
    stop_at = warm_until + spec["duration"]
    tally, warm = Tally(), Tally()

    async def loop(slot: int) -> None:
        connection = Connection(host, port)
        while (now := time.perf_counter()) < stop_at:
            counting = tally if now >= warm_until else warm
            try:
                status, body = await connection.request(bodies.next(slot))
            except HttpError as exc:
                counting.failure(str(exc))
                continue
            counting.record(status, body, time.perf_counter() - now)
        connection.close()

    tasks = [asyncio.create_task(loop(slot)) for slot in range(spec["concurrency"])]
    await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*tasks)
    # Requests in flight at the end completed after stop_at; counting them over the time
    # to the last answer keeps the rate honest.
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return tally.summary(elapsed, cpu, warmup=warm)


async def run_open(spec: dict[str, Any], workload: Workload) -> dict[str, Any]:
    """Open loop: requests start on a fixed schedule whatever the server's pace.

    Latency runs from the scheduled start, so time spent queueing for a connection or in
    the server's backlog is counted (no coordinated omission).
    """
    host, port = spec["host"], spec["port"]
    bodies = SingleEventBodies(spec, workload)
    rate, warmup, duration = spec["rate"], spec["warmup"], spec["duration"]
    idle: list[Connection] = []
    opened = 0
    tally, warm = Tally(), Tally()
    pending: set[asyncio.Task[None]] = set()
    await _handshake()

    async def one(index: int, scheduled: float, counting: Tally) -> None:
        nonlocal opened
        if idle:
            connection = idle.pop()
        else:
            connection = Connection(host, port)
            opened += 1
        try:
            status, body = await connection.request(bodies.next(index))
        except HttpError as exc:
            counting.failure(str(exc))
            return
        counting.record(status, body, time.perf_counter() - scheduled)
        idle.append(connection)

    start = time.perf_counter()
    total = int(rate * (warmup + duration))
    warm_count = int(rate * warmup)
    cpu0 = t0 = 0.0
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if index == warm_count:
            cpu0, t0 = time.process_time(), time.perf_counter()
        task = asyncio.create_task(one(index, scheduled, tally if index >= warm_count else warm))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=spec["drain_timeout"])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for task in pending:
        task.cancel()
        tally.failure("no answer before the drain timeout")
    for connection in idle:
        connection.close()
    result = tally.summary(elapsed, cpu, warmup=warm)
    result["target_rate"] = rate
    result["connections_opened"] = opened
    return result


async def _handshake() -> None:
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit("load generator: expected `go` from the harness")


_MODES = {"batch": run_batches, "closed": run_closed, "open": run_open}


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    workload = Workload(seed=spec["seed"], base_time=datetime.fromisoformat(spec["base_time"]))
    runner = _MODES[spec["mode"]]
    try:
        import uvloop  # in uvicorn[standard]; the plain asyncio loop works too, only slower
    except ImportError:
        result = asyncio.run(runner(spec, workload))
    else:
        result = uvloop.run(runner(spec, workload))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
