"""The events the benchmarks send: a realistic, deterministic mix, so a replay is exact.

The same (seed, agent, batch) always gives the same events, in this process or in the load
generator's, which is what lets the raw insert ceiling use the very rows the API stores and
lets the duplicate replay resend exactly what was sent before.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from models.vocabulary import EventType, kind_of

# Roughly what a fleet in the middle of a rollout reports: mostly updates and successful
# migrations, about one event in six a failure carrying an error message to fingerprint.
_MIX: tuple[tuple[EventType, int], ...] = (
    (EventType.UPDATE_DISCOVERED, 28),
    (EventType.UPDATE_INSTALLED, 22),
    (EventType.UPDATE_IGNORED, 3),
    (EventType.UPDATE_FAILED, 5),
    (EventType.MIGRATION_DETECTION_NOT_NEEDED, 10),
    (EventType.MIGRATION_DETECTION_SUCCESS, 8),
    (EventType.MIGRATION_DETECTION_FAILED, 2),
    (EventType.MIGRATION_EXECUTION_SUCCESS, 9),
    (EventType.MIGRATION_EXECUTION_PARTIAL, 5),
    (EventType.MIGRATION_EXECUTION_FAILED, 8),
)
_TYPES = [event_type for event_type, _ in _MIX]
_WEIGHTS = [weight for _, weight in _MIX]

_ERRORS = (
    "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied: "
    "'/var/lib/redflag/agent/last_scan.json'",
    "write /etc/redflag/agent/config.json.tmp-{n}: [Errno 28] No space left on device "
    "({n} bytes free on /dev/sda1)",
    "checksum mismatch for /var/lib/redflag/agent/state-{n}.db: expected "
    "9f86d081884c7d659a2feaa0c55ad015, got 3c59dc048e8850243be8079a5c74d079",
    "config v{v} at /etc/aggregator/config.json is not valid JSON: Expecting value: "
    "line {n} column 5 (char {n})",
    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process {n} (apt); "
    "connecting to http://deb.debian.org/debian/dists/bookworm failed after {v} retries",
    "validation failed after migration: server_url 'https://redflag-{n}.corp.example.org:8443' "
    "unreachable from 10.{v}.{v}.{n}",
)
_PACKAGES = ("openssl", "curl", "linux-image-amd64", "systemd", "python3.11", "nginx", "sudo")
_MIGRATION_STEPS = ("backup", "copy_config", "convert_config", "copy_state", "validate")
# An agent checks in every minute or so with what happened since its last check-in, in
# the order it happened; batch b of every agent covers the same window, and the windows of
# a day's worth of batches end at `base_time` (further batch numbers wrap around).
WINDOW_SECONDS = 60
WINDOWS_PER_DAY = 24 * 3600 // WINDOW_SECONDS


@dataclass(frozen=True, slots=True)
class Workload:
    """A deterministic source of wire events; `base_time` bounds every timestamp."""

    seed: str
    base_time: datetime

    def events(self, *, agent: int, batch: int, size: int, hostname: str) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:{agent}:{batch}")
        types = rng.choices(_TYPES, weights=_WEIGHTS, k=size)
        window_start = self.base_time - timedelta(
            seconds=WINDOW_SECONDS * (WINDOWS_PER_DAY - batch % WINDOWS_PER_DAY)
        )
        offsets = sorted(rng.uniform(0, WINDOW_SECONDS) for _ in types)
        return [
            self._event(rng, event_type, hostname, window_start + timedelta(seconds=offset))
            for event_type, offset in zip(types, offsets, strict=True)
        ]

    def body(self, *, agent: int, batch: int, size: int, hostname: str) -> bytes:
        """A check-in body, serialised once, as an agent would send it."""
        events = self.events(agent=agent, batch=batch, size=size, hostname=hostname)
        return checkin_body(events)

    def _event(
        self, rng: random.Random, event_type: EventType, hostname: str, when: datetime
    ) -> dict[str, Any]:
        status = kind_of(event_type).status.value
        n = rng.randrange(1, 100_000)
        failed = status == "failed"
        migration = event_type.value.startswith("migration")
        if failed:
            details: dict[str, Any] = {
                "failed_step": rng.choice(_MIGRATION_STEPS),
                "errno": rng.choice((13, 28, 5)),
                "exception_type": rng.choice(("PermissionError", "OSError", "ValueError")),
                "backup_path": f"/var/lib/redflag/agent/backup-{n}",
                "traceback": 'Traceback (most recent call last):\n  File "agent/execution.py", '
                f"line {n % 400}, in run\n    step()\nOSError: failed",
            }
        elif migration:
            details = {
                "steps": [{"name": s, "ok": True} for s in _MIGRATION_STEPS],
                "backup_path": f"/var/lib/redflag/agent/backup-{n}",
            }
        else:
            details = {"package": rng.choice(_PACKAGES), "version": f"{n % 9}.{n % 97}.{n % 13}"}
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "event_type": event_type.value,
            "status": status,
            "error_message": rng.choice(_ERRORS).format(n=n, v=n % 7) if failed else None,
            "migration_from": "0.1.18 (config v3, /etc/aggregator)" if migration else None,
            "migration_to": "0.2.0 (config v5, /etc/redflag/agent)" if migration else None,
            "timestamp": when.isoformat(),
            "system_info": {
                "hostname": hostname,
                "os_name": "Debian GNU/Linux",
                "os_version": "12",
                "architecture": "x86_64",
                "agent_version": "0.2.0",
                "free_disk_bytes": n * 1_048_576,
                "uid": 0,
            },
            "details": details,
        }


def checkin_body(events: list[dict[str, Any]], agent_version: str = "0.2.0") -> bytes:
    return json.dumps(
        {"agent_version": agent_version, "events": events}, separators=(",", ":")
    ).encode()


def hostname_for(agent: int) -> str:
    return f"bench-host-{agent:05d}"
