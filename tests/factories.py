"""Test data factories: wire events and registrations as an agent would send them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from models.store import NEW_AGENT_SUMMARY
from models.vocabulary import EventType, kind_of


def wire_event(
    event_type: EventType | str = EventType.MIGRATION_EXECUTION_FAILED, **overrides: Any
) -> dict[str, Any]:
    """A valid event as JSON-ready dict; overrides replace or add fields."""
    known = event_type in {t.value for t in EventType}
    status = kind_of(EventType(event_type)).status.value if known else "failed"
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": str(event_type),
        "status": status,
        "error_message": (
            "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied"
            if status == "failed"
            else None
        ),
        "migration_from": "0.1.18 (config v0, /etc/aggregator)",
        "migration_to": "0.2.0 (config v5, /etc/redflag/agent)",
        "timestamp": datetime.now(UTC).isoformat(),
        "system_info": {"hostname": "web-01", "os_name": "Debian", "os_version": "12"},
        "details": {"failed_step": "copy_state", "errno": 13},
    }
    event.update(overrides)
    return event


def registration(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hostname": "web-01",
        "os_type": "linux",
        "os_version": "Debian 12",
        "os_architecture": "x86_64",
        "agent_version": "0.2.0",
        "machine_id": uuid.uuid4().hex,
    }
    body.update(overrides)
    return body


# --- Fleets for the analytics and export tests -------------------------------------------

LEGACY_LAYOUT = "0.1.18 (config v0, /etc/aggregator)"
CONFIG_V3_LAYOUT = "0.1.20 (config v3, /etc/redflag/agent)"
CURRENT_LAYOUT = "0.2.0 (config v5, /etc/redflag/agent)"


def agent_row(**overrides: Any) -> dict[str, Any]:
    """An `agent` table row for Core inserts: a registered host that never checked in."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "hostname": "web-01",
        "os_type": "linux",
        "os_version": "Debian 12",
        "os_architecture": "x86_64",
        "agent_version": "0.2.0",
        "machine_id": uuid.uuid4().hex,
        "host_metadata": {},
        "token_hash": uuid.uuid4().hex + uuid.uuid4().hex,
        "enrollment_token_id": None,
        "revoked": False,
        "revoked_at": None,
        "created_at": datetime.now(UTC),
        "last_seen_at": None,
        "system_info": {},
        **NEW_AGENT_SUMMARY,
    }
    row.update(overrides)
    return row


# One scenario per host: (hostname, os_version, arch, agent_version, revoked,
# check-ins as (age of the check-in, [(event type, age, error message, from, to)])).
# Hosts that never checked in have no check-ins. Ages are before `now`.
_H = 3600
_FIXTURE_FLEET: tuple[tuple[str, str, str, str, bool, list[tuple[int, list[Any]]]], ...] = (
    ("mig-ok-01", "Debian 12", "x86_64", "0.2.0", False, [
        (120, [("migration_detection_success", 5 * _H, None, LEGACY_LAYOUT, CURRENT_LAYOUT),
               ("migration_execution_success", 5 * _H - 60, None, LEGACY_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("mig-retry-02", "Ubuntu 22.04", "x86_64", "0.2.0", False, [
        (3 * 24 * _H - 60, [
            ("migration_detection_success", 3 * 24 * _H, None, CONFIG_V3_LAYOUT, CURRENT_LAYOUT),
            ("migration_execution_failed", 3 * 24 * _H - 30,
             "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied",
             CONFIG_V3_LAYOUT, CURRENT_LAYOUT)]),
        (60, [("migration_detection_success", 2 * _H, None, CONFIG_V3_LAYOUT, CURRENT_LAYOUT),
              ("migration_execution_success", 2 * _H - 60, None, CONFIG_V3_LAYOUT, CURRENT_LAYOUT),
              ("migration_detection_not_needed", _H, None, None, None),
              ("update_installed", 30 * 60, None, None, None)]),
    ]),
    ("clean-03", "Rocky 9", "aarch64", "0.2.0", False, [
        (180, [("migration_detection_not_needed", 6 * _H, None, None, None),
               ("update_discovered", 5 * _H, None, None, None)]),
    ]),
    ("pending-04", "Debian 12", "x86_64", "0.1.18", False, [
        (240, [("migration_detection_success", 20 * 60, None, LEGACY_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("fail-exec-05", "Debian 12", "x86_64", "0.1.18", False, [
        (300, [("migration_detection_success", 50 * 60, None, LEGACY_LAYOUT, CURRENT_LAYOUT),
               ("migration_execution_failed", 49 * 60,
                "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied",
                LEGACY_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("fail-exec-06", "Ubuntu 22.04", "x86_64", "0.1.18", False, [
        (2 * _H, [("migration_detection_success", 3 * _H, None, CONFIG_V3_LAYOUT, CURRENT_LAYOUT),
                  ("migration_execution_failed", 3 * _H - 20,
                   "copy /var/lib/aggregator/cache/packages.db: [Errno 13] Permission denied",
                   CONFIG_V3_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("fail-detect-07", "Rocky 9", "x86_64", "0.1.18", False, [
        (600, [("migration_detection_failed", 10 * _H,
                "corrupt config /etc/aggregator/config.json: Expecting value: line 3 column 5",
                LEGACY_LAYOUT, None)]),
    ]),
    ("partial-08", "Debian 12", "x86_64", "0.2.0", False, [
        (360, [("migration_detection_success", 40 * 60, None, LEGACY_LAYOUT, CURRENT_LAYOUT),
               ("migration_execution_partial", 39 * 60,
                "could not tighten permissions on /etc/redflag/agent/config.json: "
                "[Errno 1] Operation not permitted",
                LEGACY_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("updates-only-09", "Ubuntu 22.04", "x86_64", "0.1.18", False, [
        (420, [("update_discovered", 2 * 24 * _H, None, None, None),
               ("update_failed", 25 * _H, "apt-get install openssl exited with status 100",
                None, None),
               ("update_failed", 3 * _H, "apt-get install openssl exited with status 101",
                None, None),
               ("update_installed", _H, None, None, None)]),
    ]),
    ("silent-10", "Debian 12", "x86_64", "0.1.18", False, []),
    ("stale-ok-11", "Debian 12", "x86_64", "0.2.0", False, [
        (25 * _H, [("migration_detection_success", 26 * _H, None, LEGACY_LAYOUT, CURRENT_LAYOUT),
                   ("migration_execution_success", 26 * _H - 60, None,
                    LEGACY_LAYOUT, CURRENT_LAYOUT)]),
    ]),
    ("revoked-12", "Debian 12", "x86_64", "0.1.18", True, [
        (4 * 24 * _H, [("migration_detection_failed", 4 * 24 * _H,
                        "unknown config version 9 in /etc/aggregator/config.json",
                        LEGACY_LAYOUT, None)]),
    ]),
)  # fmt: skip


def seed_fixture_fleet(engine: Any, *, now: datetime) -> dict[str, uuid.UUID]:
    """Twelve hosts covering every migration state, stale, silent and revoked agents.

    Agents are inserted as registered rows; their events go through the ingest path
    (`models.store.store_events`), which maintains each agent's migration summary.
    Returns hostname -> agent id.
    """
    from datetime import timedelta

    import sqlalchemy as sa

    from models.database import write_transaction
    from models.store import store_events
    from models.tables import AGENT_TABLE
    from models.wire import Event

    ids = {scenario[0]: uuid.uuid4() for scenario in _FIXTURE_FLEET}
    # One transaction for the whole fleet: a commit per check-in costs a disk flush each
    # on PostgreSQL, and store_events works inside its caller's transaction anyway.
    with write_transaction(engine) as connection:
        connection.execute(
            sa.insert(AGENT_TABLE),
            [
                agent_row(
                    id=ids[hostname],
                    hostname=hostname,
                    os_version=os_version,
                    os_architecture=arch,
                    agent_version=version,
                    revoked=revoked,
                    revoked_at=now if revoked else None,
                    created_at=now - timedelta(days=30),
                )
                for hostname, os_version, arch, version, revoked, _ in _FIXTURE_FLEET
            ],
        )
        for hostname, os_version, _, version, _, check_ins in _FIXTURE_FLEET:
            for check_in_age, specs in check_ins:
                events = [
                    Event.model_validate(
                        wire_event(
                            event_type,
                            error_message=message,
                            migration_from=migration_from,
                            migration_to=migration_to,
                            timestamp=(now - timedelta(seconds=age)).isoformat(),
                            system_info={"hostname": hostname, "os_version": os_version},
                            details={"failed_step": "copy_state"} if message else {},
                        )
                    )
                    for event_type, age, message, migration_from, migration_to in specs
                ]
                store_events(
                    connection,
                    agent_id=ids[hostname],
                    events=events,
                    received_at=now - timedelta(seconds=check_in_age),
                    agent_version=version,
                )
    return ids


# Failure messages of the bulk fleet: host-specific parts vary, fingerprints do not.
_BULK_MESSAGES: dict[str, tuple[str, ...]] = {
    "migration_detection_failed": (
        "corrupt config /etc/aggregator/config.json: Expecting value: line {n} column {m}",
        "unknown config version {n} in /etc/aggregator/config.json",
    ),
    "migration_execution_failed": (
        "copy /var/lib/aggregator/state/{n}.json: [Errno 13] Permission denied",
        "write /etc/redflag/agent/config.json.tmp: [Errno 28] No space left on device",
        "checksum mismatch for /var/lib/redflag/agent/cache/{n}.bin after copy",
    ),
    "migration_execution_partial": (
        "could not tighten permissions on /etc/redflag/agent/config.json: [Errno 1]",
        "legacy directory /var/lib/aggregator left behind: [Errno 16] Device busy",
    ),
    "update_failed": (
        "apt-get install pkg{n} exited with status {m}",
        "download https://mirror{n}.example.org/pool/p{m}.deb: 404 Not Found",
        "dnf: transaction check error: file /usr/lib/x{n} conflicts",
    ),
}
_BULK_TYPES: tuple[tuple[str, int], ...] = (
    ("update_discovered", 30),
    ("update_installed", 25),
    ("update_ignored", 5),
    ("update_failed", 8),
    ("migration_detection_success", 8),
    ("migration_detection_not_needed", 8),
    ("migration_detection_failed", 3),
    ("migration_execution_success", 7),
    ("migration_execution_partial", 2),
    ("migration_execution_failed", 4),
)


def bulk_agent_rows(count: int, *, now: datetime, seed: int = 0) -> list[dict[str, Any]]:
    """`count` agent rows with varied OS, versions, check-ins and migration summaries."""
    import random
    from datetime import timedelta

    rng = random.Random(seed)
    states = ("migrated", "not_needed", "pending", "failed", "partial", "never_reported")
    rows = []
    for index in range(count):
        state = rng.choices(states, weights=(50, 15, 5, 12, 5, 13))[0]
        seen = None if rng.random() < 0.03 else now - timedelta(seconds=rng.randint(0, 4 * _H))
        rows.append(
            agent_row(
                hostname=f"host-{index:05d}",
                os_version=rng.choice(("Debian 12", "Ubuntu 22.04", "Ubuntu 24.04", "Rocky 9")),
                os_architecture=rng.choice(("x86_64", "x86_64", "aarch64")),
                agent_version=rng.choice(("0.1.18", "0.1.20", "0.2.0")),
                created_at=now - timedelta(days=40),
                last_seen_at=seen,
                migration_state=state,
                migration_state_at=None if state == "never_reported" else seen,
                ever_migrated=state == "migrated",
            )
        )
    return rows


def bulk_event_rows(
    agent_ids: list[uuid.UUID], count: int, *, now: datetime, days: int = 30, seed: int = 0
) -> list[dict[str, Any]]:
    """`count` `update_events` rows for Core executemany, spread over the last `days`."""
    import random
    from datetime import timedelta

    from models.fingerprint import fingerprint
    from models.vocabulary import EventType, Status, kind_of, severity_for

    rng = random.Random(seed)
    types, weights = zip(*_BULK_TYPES, strict=True)
    fingerprints = {
        template: fingerprint(event_type, template.format(n=1, m=2))
        for event_type, templates in _BULK_MESSAGES.items()
        for template in templates
    }
    span = days * 24 * 3600
    paths = (
        (LEGACY_LAYOUT, CURRENT_LAYOUT),
        (CONFIG_V3_LAYOUT, CURRENT_LAYOUT),
        (LEGACY_LAYOUT, CONFIG_V3_LAYOUT),
    )
    rows = []
    for _ in range(count):
        event_type = EventType(rng.choices(types, weights=weights)[0])
        kind = kind_of(event_type)
        occurred = now - timedelta(seconds=rng.random() * span)
        message = None
        template = None
        if kind.status is not Status.SUCCESS:
            template = rng.choice(_BULK_MESSAGES[event_type.value])
            message = template.format(n=rng.randint(1, 999), m=rng.randint(1, 99))
        migration = kind.category.value == "migration"
        migration_from, migration_to = rng.choice(paths) if migration else (None, None)
        rows.append(
            {
                "agent_id": rng.choice(agent_ids),
                "event_id": uuid.uuid4(),
                "event_type": event_type.value,
                "category": kind.category.value,
                "phase": kind.phase.value if kind.phase else None,
                "status": kind.status.value,
                "severity": severity_for(kind.status).value,
                "error_message": message,
                "error_truncated": False,
                "fingerprint": fingerprints[template] if template else None,
                "migration_from": migration_from,
                "migration_to": migration_to,
                "occurred_at": occurred,
                "received_at": occurred + timedelta(seconds=rng.randint(1, 600)),
                "system_info": {"os_name": "Debian", "free_disk_mb": rng.randint(10, 90000)},
                "details": {"failed_step": "copy_state", "errno": 13} if message else {},
            }
        )
    # Events arrive roughly in time order; so inserted, the time indexes grow at one end.
    rows.sort(key=lambda row: row["occurred_at"])
    return rows
