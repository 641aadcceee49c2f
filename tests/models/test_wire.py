"""Validation rules of the wire event: each would let bad data in if removed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from models.vocabulary import Category, EventType, Severity, Status, kind_of, severity_for
from models.wire import (
    MAX_ERROR_MESSAGE_BYTES,
    CheckinRequest,
    Event,
    RegistrationRequest,
    clean_text,
    describe_validation_error,
    safe_error,
)
from tests.factories import registration, wire_event


def _error(**fields: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Event.model_validate(wire_event(**fields))
    return describe_validation_error(caught.value)


def test_every_event_type_has_a_category_phase_and_status() -> None:
    for event_type in EventType:
        kind = kind_of(event_type)
        assert kind.category in Category
        assert (kind.phase is not None) == event_type.value.startswith("migration_")


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (Status.FAILED, Severity.ERROR),
        (Status.WARNING, Severity.WARNING),
        (Status.SUCCESS, Severity.INFO),
    ],
)
def test_severity_follows_status(status: Status, severity: Severity) -> None:
    assert severity_for(status) is severity


def test_valid_event_is_accepted() -> None:
    event = Event.model_validate(wire_event())
    assert event.event_type is EventType.MIGRATION_EXECUTION_FAILED
    assert event.timestamp.tzinfo is UTC


def test_status_must_agree_with_event_type() -> None:
    message = _error(event_type="migration_execution_success", status="failed")
    assert "does not agree with event_type" in message


def test_unknown_event_type_is_rejected_naming_the_field() -> None:
    assert _error(event_type="migration_teleport").startswith("event_type:")


def test_failed_event_needs_an_error_message() -> None:
    assert "error_message is required" in _error(error_message="  ")


def test_naive_timestamp_is_rejected() -> None:
    assert _error(timestamp="2026-11-01T10:00:00").startswith("timestamp:")


@pytest.mark.parametrize(
    "timestamp",
    [
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        pytest.param((datetime.now(UTC) + timedelta(days=3)).isoformat(), id="3-days-ahead"),
    ],
)
def test_absurd_timestamps_are_rejected(timestamp: str) -> None:
    assert _error(timestamp=timestamp).startswith("timestamp:")


def test_long_migration_label_is_rejected() -> None:
    assert _error(migration_from="x" * 256).startswith("migration_from:")


def test_unknown_field_is_rejected() -> None:
    assert _error(colour="red").startswith("colour:")


def test_oversized_message_is_truncated_and_marked_not_rejected() -> None:
    event = Event.model_validate(wire_event(error_message="é" * MAX_ERROR_MESSAGE_BYTES))
    assert event.error_truncated is True
    assert event.error_message is not None
    assert len(event.error_message.encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert event.error_message.endswith("bytes omitted]")


def test_short_message_is_not_marked_truncated() -> None:
    assert Event.model_validate(wire_event()).error_truncated is False


def test_oversized_details_are_rejected() -> None:
    assert _error(details={"traceback": "x" * 70_000}).startswith("details:")


def test_deeply_nested_system_info_is_rejected() -> None:
    nested: dict[str, object] = {}
    node = nested
    for _ in range(20):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    assert "nested deeper" in _error(system_info=nested)


def test_nan_in_details_is_rejected() -> None:
    assert "NaN" in _error(details={"ratio": float("nan")})


def test_nul_and_lone_surrogates_are_replaced_not_rejected() -> None:
    assert clean_text("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    event = Event.model_validate(
        wire_event(error_message="bad\x00byte", details={"k\x00": "v\ud800"})
    )
    assert event.error_message == "bad\ufffdbyte"
    assert event.details == {"k\ufffd": "v\ufffd"}


def test_checkin_carries_at_most_1000_events() -> None:
    with pytest.raises(ValidationError, match="events"):
        CheckinRequest.model_validate({"agent_version": "0.2.0", "events": [{}] * 1001})


def test_registration_needs_a_hostname() -> None:
    with pytest.raises(ValidationError, match="hostname"):
        RegistrationRequest.model_validate(registration(hostname=""))


def test_error_description_stays_short_whatever_the_event_holds() -> None:
    unknown = {f"field_{i}_" + "x" * 10_000: float("nan") for i in range(50)}
    with pytest.raises(ValidationError) as caught:
        Event.model_validate({**wire_event(), **unknown})

    text = describe_validation_error(caught.value)

    assert len(text) < 2000
    assert "nan" not in text.lower()
    assert text.endswith("and 40 more errors")


def test_safe_error_drops_the_input_and_cleans_and_cuts_the_location() -> None:
    error = {
        "type": "extra_forbidden",
        "loc": ("body", 7, "\ud800\x00" + "x" * 10_000),
        "msg": "Extra inputs are not permitted",
        "input": {"secret": float("nan")},
    }
    safe = safe_error(error)

    assert set(safe) == {"type", "loc", "msg"}
    assert safe["loc"][:2] == ["body", 7]
    assert safe["loc"][2].startswith("\ufffd\ufffdxxx")
    assert len(safe["loc"][2]) < 100
    json.dumps(safe, allow_nan=False).encode("utf-8")


def test_safe_error_keeps_the_parser_reason() -> None:
    error = {"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error"}
    error["ctx"] = {"error": "Expecting value"}
    assert safe_error(error)["msg"] == "JSON decode error: Expecting value"


def test_checkin_schema_describes_each_event() -> None:
    items = CheckinRequest.model_json_schema()["properties"]["events"]["items"]
    assert "$ref" not in items or items["$ref"].endswith("/Event")
    event = items if "properties" in items else CheckinRequest.model_json_schema()["$defs"]["Event"]
    assert {"event_id", "event_type", "status", "timestamp"} <= set(event["required"])
