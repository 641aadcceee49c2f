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

import msgspec
import pytest
from pydantic import ValidationError

from ingest_api.routes import parse_json_body, validate_events
from models.plain_checkin import parse_plain_checkin
from models.vocabulary import EventType
from models.wire import MAX_ERROR_MESSAGE_BYTES, CheckinRequest
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
    "2026-11-27T10:00:00.1234567Z",
    "2026-11-27T10:00:00.9999999+01:00",
    "2026-11-27t10:00:00z",
    "2026-11-27T10:00Z",
    "0001-01-01T00:00:00+01:00",
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
    {"f": 1e-7, "g": 1e300, "h": 12345678901234567890123, "i": -0.0},
    {"nested": {"list": [1, {"x": "\u00e9\u2028"}]}, "": ""},
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
    events = []
    for event in checkin.events:
        values = msgspec.structs.asdict(event)
        # Kept as the JSON text sent; the general path keeps the objects it parsed.
        values.update(system_info=json.loads(event.system_info), details=json.loads(event.details))
        events.append(values)
    return (checkin.agent_version, checkin.system_info, events, 0)


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
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": 1E400, '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": 1e5, '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\xff\xfe", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\xc3\xa9", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": \n {\t"a" :\r\n1 , '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\\ud800", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": "\\u00e9\\/", '),
        _body([wire_event()]).replace(b'"details": {', b'"details": {"a": 1}, "x": {'),
        _body([wire_event()]).replace(
            b'"agent_version"', b'"system_info": 10e400, "agent_version"'
        ),
        _body([wire_event()]).replace(b'"agent_version"', b'"system_info": null, "agent_version"'),
        _body([wire_event()]).replace(
            b'"agent_version"', b'"system_info": {"a": 1e5}, "agent_version"'
        ),
        _body([wire_event()]).replace(
            b'"timestamp": "', b'"timestamp": "2026-01-01T00:00:00Z", "timestamp": "'
        ),
    ],
)
def test_odd_bodies_are_left_to_the_general_path_or_agree_with_it(body: bytes) -> None:
    _assert_agree(body)


def test_a_failed_event_without_a_message_is_left_to_the_general_path() -> None:
    body = _body([wire_event(EventType.UPDATE_FAILED, error_message="   ")])
    assert parse_plain_checkin(body) is None
    assert _general(body)[3] == 1


def _with_details(text: bytes) -> bytes:
    return _body([wire_event(details="DETAILS")]).replace(b'"DETAILS"', text)


@pytest.mark.parametrize(
    ("details", "plain"),
    [
        (b'{"a": "\xc3\xa9"}', True),  # UTF-8 as sent, unescaped
        (b'\n {\t"a" :\r\n[1, 2.5] }', True),  # whitespace anywhere JSON allows it
        (b'{"a": "x", "a": "y"}', True),  # a repeated key: the last one, on both paths
        (b'{"a": 1e5}', False),  # exponent form: its serialisation may be longer
        (b'{"a": 1E400}', False),  # beyond a double: infinity, which the general path refuses
        (b'{"a": "\xff"}', False),  # not UTF-8
        (b"[1]", False),  # not an object
    ],
)
def test_json_kept_as_text_is_vouched_for_or_left_to_the_general_path(
    details: bytes, plain: bool
) -> None:
    body = _with_details(details)
    assert _assert_agree(body) is plain
    checkin = parse_plain_checkin(body)
    if checkin is not None:
        assert checkin.events[0].details.encode() == details.strip()
