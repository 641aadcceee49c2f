"""Test data factories: wire events and registrations as an agent would send them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

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
