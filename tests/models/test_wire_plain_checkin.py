"""`parse_plain_checkin` gives exactly what the general path gives, or leaves the body to it.

The general path is what the API always did: parse the JSON, validate the envelope as a
`CheckinRequest`, then each event as an `Event`. Every body here, valid or odd, must either
be refused by the plain path (None) or come out of both with the same values and no event
rejected; and plain, valid check-ins must take the plain path.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from ingest_api.routes import parse_json_body, validate_events
from models.vocabulary import EventType
from models.wire import MAX_ERROR_MESSAGE_BYTES, CheckinRequest, parse_plain_checkin
from tests.factories import wire_event

NOW = datetime.now(UTC)

# Odd values for any field, JSON-ready; some are valid for some fields.
_ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "x",
    0,
    1,
    -1,
    1.5,
    True,
    False,
    "true",
    "no",
    [],
    {},
    {"a": 1},
    [1, 2],
    "nul\x00inside",
    "lone\ud800surrogate",
    "caf\u00e9 \U0001f600",
    "x" * 300,
    "y" * (MAX_ERROR_MESSAGE_BYTES + 10),
    "\u00e9" * (MAX_ERROR_MESSAGE_BYTES // 2 + 3),
    "2026-11-27T10:00:00Z",
    "2026-11-27T10:00:00",
    "2026-11-27 10:00:00+05:30",
    "1999-12-31T23:59:59Z",
    "9999-12-31T23:59:59+14:00",
    (NOW + timedelta(days=2)).isoformat(),
    (NOW - timedelta(minutes=5)).isoformat(),
    1_700_000_000,
    1.7e9,
    "12345678-1234-5678-1234-567812345678",
    "12345678123456781234567812345678",
    "{12345678-1234-5678-1234-567812345678}",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "12345678-1234-5678-1234-56781234567G",
    "migration_execution_failed",
    "update_installed",
    "success",
    "failed",
    "warning",
    "FAILED",
    {"deep": [[[[[[[[[1]]]]]]]]]},
    {"n": float("nan")},
    {"n": float("inf")},
    {"big": "z" * 70_000},
    {"k\x00": "v"},
    {"k": "\ud800"},
    {"steps": [{"name": s, "ok": True} for s in "abcdefghij"]},
]
_FIELDS = [
    "event_id",
    "event_type",
    "status",
    "error_message",
    "error_truncated",
    "migration_from",
    "migration_to",
    "timestamp",
    "system_info",
    "details",
]


def _general(body: bytes) -> Any:
    """What the API's general path makes of a body: its values, or why it refused it."""
    try:
        parsed = parse_json_body(body)
    except ValueError:
        return "unparseable"
    try:
        envelope = CheckinRequest.model_validate(parsed)
    except ValidationError:
        return "bad envelope"
    valid, rejected = validate_events(envelope.events)
    return (
        envelope.agent_version,
        envelope.system_info,
        [event.model_dump() for event in valid],
        len(rejected),
    )


def _plain(body: bytes) -> Any:
    checkin = parse_plain_checkin(body)
    if checkin is None:
        return None
    return (
        checkin.agent_version,
        checkin.system_info,
        [event.model_dump() for event in checkin.events],
        0,
    )


def _body(events: list[Any], **envelope: Any) -> bytes:
    document = {"agent_version": "0.2.0", "events": events, **envelope}
    # ensure_ascii, as agents send it: NUL and lone surrogates go as \u escapes.
    return json.dumps(document).encode()


def _assert_agree(body: bytes) -> bool:
    plain = _plain(body)
    if plain is not None:
        assert plain == _general(body), body[:300]
    return plain is not None


def test_a_plain_check_in_takes_the_plain_path_with_the_same_values() -> None:
    events = [wire_event(t) for t in EventType]
    events.append(
        wire_event(
            EventType.UPDATE_FAILED, error_message="  x  ", timestamp="2026-01-01T00:00:00+02:00"
        )
    )
    body = _body(events, system_info={"hostname": "web-01"})
    assert _assert_agree(body)
    assert _plain(body)[2][-1]["timestamp"] == datetime(2025, 12, 31, 22, tzinfo=UTC)


@pytest.mark.parametrize("seed", range(30))
def test_odd_events_are_left_to_the_general_path_or_agree_with_it(seed: int) -> None:
    rng = random.Random(seed)
    plain_taken = 0
    for _ in range(60):
        events = [wire_event(rng.choice(list(EventType))) for _ in range(rng.randrange(1, 4))]
        for event in events:
            for _ in range(rng.randrange(0, 3)):
                field = rng.choice(_FIELDS)
                if rng.random() < 0.1:
                    event.pop(field, None)
                else:
                    event[field] = rng.choice(_ODD_VALUES)
            if rng.random() < 0.05:
                event["unexpected"] = 1
        plain_taken += _assert_agree(_body(events))
    assert plain_taken > 0  # the mutations leave some bodies valid


@pytest.mark.parametrize(
    "envelope",
    [
        {"agent_version": ""},
        {"agent_version": "v\x00"},
        {"agent_version": "v\ud800"},
        {"agent_version": "x" * 65},
        {"agent_version": 2},
        {"system_info": None},
        {"system_info": {"n": float("nan")}},
        {"system_info": {"k": "\x00"}},
        {"system_info": {"big": "z" * 20_000}},
        {"system_info": []},
        {"extra": 1},
    ],
)
def test_odd_envelopes_are_left_to_the_general_path_or_agree_with_it(
    envelope: dict[str, Any],
) -> None:
    _assert_agree(_body([wire_event()], **envelope))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"null",
        b'{"agent_version":"0.2.0","events":[]}',
        b'{"agent_version":"0.2.0","agent_version":"0.3.0","events":[]}',
        b'{"agent_version":"0.2.0","events":[' + b"1," * 1000 + b"1]}",
        b"\xef\xbb\xbf" + _body([wire_event()]),
        _body([wire_event()]) + b" x",
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": 1e400, '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": 1, "a": 2, '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\\u0000", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\\ud83d\\ude00", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\\udc00", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": NaN, '),
    ],
)
def test_odd_bodies_are_left_to_the_general_path_or_agree_with_it(body: bytes) -> None:
    _assert_agree(body)


def test_a_failed_event_without_a_message_is_left_to_the_general_path() -> None:
    body = _body([wire_event(EventType.UPDATE_FAILED, error_message="   ")])
    assert parse_plain_checkin(body) is None
    assert _general(body)[3] == 1
