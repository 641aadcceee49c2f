"""Tables and detail fields shaped for display: values kept, vocabulary badged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from console import views
from models.analytics import empty_events_frame

WHEN = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def _events(*rows: dict[str, object]) -> pd.DataFrame:
    frame = empty_events_frame()
    return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).astype(frame.dtypes)


def test_events_table_badges_kind_and_status_and_leaves_out_json() -> None:
    frame = _events(
        {
            "event_pk": 7, "event_id": "e", "agent_id": "a", "hostname": "web-01",
            "agent_version": "0.2.0", "occurred_at": WHEN, "received_at": WHEN,
            "category": "migration", "event_type": "migration_execution_failed",
            "phase": "execution", "status": "failed", "severity": "error",
            "error_message": "boom", "error_truncated": False, "fingerprint": "f",
            "migration_from": "a", "migration_to": "b", "system_info": {}, "details": {},
        },
        {
            "event_pk": 6, "event_id": "e2", "agent_id": "a", "hostname": "web-01",
            "agent_version": "0.2.0", "occurred_at": WHEN, "received_at": WHEN,
            "category": "update", "event_type": "update_installed", "phase": None,
            "status": "success", "severity": "info", "error_message": None,
            "error_truncated": False, "fingerprint": None, "migration_from": None,
            "migration_to": None, "system_info": {}, "details": {},
        },
    )  # fmt: skip

    table = views.events_table(frame)

    assert list(table["kind"]) == ["◆ migration", "● update"]
    assert list(table["status"]) == ["✖ failed", "✔ success"]
    assert list(table["event_pk"]) == [7, 6]
    assert "system_info" not in table
    assert "details" not in table
    css = views.style_events(table).to_html().split("</style>")[0]
    assert views.MIGRATION_ROW in css
    assert "_row0_col0" in css  # the migration row is tinted
    assert "_row1_col0" not in css  # the update row is not


def test_execution_steps_become_rows_with_their_outcome() -> None:
    details = {
        "failed_step": "copy_state",
        "steps": [
            {"name": "backup", "status": "done", "started_at": "t0", "finished_at": "t1"},
            {"name": "copy_state", "status": "failed", "error": "[Errno 13] Permission denied"},
            {"name": "validate", "status": "skipped", "reason": "an earlier step failed"},
        ],
    }

    steps = views.steps_frame(details)

    assert steps.to_dict("records") == [
        {"step": "backup", "status": "done", "started_at": "t0", "finished_at": "t1",
         "reason": "", "error": ""},
        {"step": "copy_state", "status": "failed", "started_at": "", "finished_at": "",
         "reason": "", "error": "[Errno 13] Permission denied"},
        {"step": "validate", "status": "skipped", "started_at": "", "finished_at": "",
         "reason": "an earlier step failed", "error": ""},
    ]  # fmt: skip


def test_detection_steps_and_a_lone_failed_step_are_listed_too() -> None:
    detection = views.steps_frame(
        {"steps_needed": ["directory_migration", "config_migration"],
         "steps_recorded_done": ["directory_migration"]}
    )  # fmt: skip
    assert detection.to_dict("records") == [
        {"step": "directory_migration", "status": "done earlier"},
        {"step": "config_migration", "status": "needed"},
    ]
    lone = views.steps_frame({"failed_step": "copy_state"})
    assert lone.to_dict("records") == [{"step": "copy_state", "status": "failed"}]
    assert views.steps_frame({}).empty
    assert views.steps_frame(None).empty


def test_event_fields_show_where_and_when_and_skip_what_is_missing() -> None:
    event = {
        "hostname": "web-01", "agent_id": "a1", "occurred_at": WHEN, "received_at": WHEN,
        "category": "migration", "event_type": "migration_execution_failed",
        "status": "failed", "severity": "error", "migration_from": None,
        "details": {"failed_step": "copy_state", "backup_path": "/var/backups/x",
                    "errno": 13, "errno_name": "EACCES"},
    }  # fmt: skip

    fields = dict(views.event_fields(event).itertuples(index=False))

    assert fields["Host"] == "web-01"
    assert fields["Occurred at"] == "2026-11-27 08:00:00 UTC"
    assert fields["Backup path"] == "/var/backups/x"
    assert fields["Failed step"] == "copy_state"
    assert fields["Errno"] == "13 (EACCES)"
    assert fields["Status"] == "✖ failed"
    assert "Migration from" not in fields


def test_expander_headings_use_only_the_vocabulary() -> None:
    row = {"event_type": "migration_execution_failed", "status": "failed", "occurred_at": WHEN}
    assert views.event_heading(row) == (
        "2026-11-27 08:00:00 · Migration execution failed · :red[failed]"
    )
    hostile = {"event_type": "**x**", "status": "[y](javascript:z)", "occurred_at": "<img>"}
    assert views.event_heading(hostile) == "Unknown event type"


def test_group_hosts_say_which_hosts_still_fail_that_way() -> None:
    hosts = pd.DataFrame(
        {
            "hostname": ["a", "b"], "events": [2, 1], "first_event_at": [WHEN, WHEN],
            "last_event_at": [WHEN, WHEN], "migration_state": ["failed", "migrated"],
            "last_seen_at": [WHEN, WHEN], "os_type": ["linux", "linux"],
            "os_version": ["Debian 12", "Rocky 9"], "agent_version": ["0.2.0", "0.2.0"],
            "sample_message": ["m", "m"], "agent_id": ["1", "2"],
            "last_fingerprint": ["fp", None],
        }
    )  # fmt: skip

    migration = views.group_hosts_table(hosts, migration_group="fp")
    update = views.group_hosts_table(hosts, migration_group=None)

    assert list(migration["still_failing"]) == [True, False]
    assert list(migration["state_now"]) == ["✖ failed", "✔ migrated"]
    assert "still_failing" not in update


def test_ages_read_in_the_largest_whole_unit() -> None:
    assert views.age_text(WHEN - timedelta(seconds=42), now=WHEN) == "42 s ago"
    assert views.age_text(WHEN - timedelta(minutes=12, seconds=5), now=WHEN) == "12 min ago"
    assert views.age_text(WHEN - timedelta(hours=3), now=WHEN) == "3 h ago"
    assert views.age_text(WHEN - timedelta(days=2, hours=5), now=WHEN) == "2 d ago"
    assert views.age_text(None, now=WHEN) == "never"
