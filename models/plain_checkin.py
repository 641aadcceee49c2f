"""The common check-in, checked straight from its bytes: the ingest API's plain lane.

Nearly every check-in is plain: valid events whose text needs no cleaning. msgspec decodes
such a body into structs in one pass of C and keeps each event's system_info and details
as the JSON text the agent sent (`msgspec.Raw`), checked here and stored as it is
(`JSONText`): no dictionaries are built, walked or serialised again. The checks written in
Python are the general path's own (`models.wire`). Where this lane cannot vouch that the
general path (parse the JSON, validate a `CheckinRequest`, then each event as an `Event`)
would give the same values, it leaves the body to that path, so an odd body is validated,
and answered, exactly as it always was.

Server-side only: the agent validates with `models.wire` alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
import pydantic_core
from pydantic import AwareDatetime, TypeAdapter

from models.types import JSONText
from models.vocabulary import EventType, Status
from models.wire import (
    AGENT_VERSION_LENGTH,
    MAX_DETAILS_BYTES,
    MAX_EVENTS_PER_CHECKIN,
    MAX_JSON_DEPTH,
    MAX_MIGRATION_LABEL_CHARS,
    MAX_SYSTEM_INFO_BYTES,
    agree_with_vocabulary,
    optional_system_info,
    plausible_time,
)

_Label = Annotated[str, msgspec.Meta(max_length=MAX_MIGRATION_LABEL_CHARS)]
_AgentVersion = Annotated[
    str,
    msgspec.Meta(
        min_length=AGENT_VERSION_LENGTH.min_length, max_length=AGENT_VERSION_LENGTH.max_length
    ),
]
_EMPTY_OBJECT = msgspec.Raw(b"{}")
# Stands for "not sent" (msgspec gives missing fields their default object): no JSON value
# is empty.
_ABSENT = msgspec.Raw(b"")


class _WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event as sent. msgspec's checks of these types are pydantic's, or stricter (no
    strings for booleans, no braced UUIDs): whatever it accepts, `models.wire.Event` accepts
    with the same value. The timestamp stays text here, for pydantic-core to parse as the
    general path does (msgspec rounds digits beyond the microsecond; pydantic cuts them)."""

    event_id: UUID
    event_type: EventType
    status: Status
    timestamp: str
    error_message: str | None = None
    error_truncated: bool = False
    migration_from: _Label | None = None
    migration_to: _Label | None = None
    system_info: msgspec.Raw = _EMPTY_OBJECT
    details: msgspec.Raw = _EMPTY_OBJECT


class _WireCheckin(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    agent_version: _AgentVersion
    system_info: msgspec.Raw = _ABSENT
    events: Annotated[list[_WireEvent], msgspec.Meta(max_length=MAX_EVENTS_PER_CHECKIN)] = []


class PlainEvent(msgspec.Struct, gc=False):
    """A checked event of a plain check-in, with what storing it reads (`ReportedEvent`):
    its time in UTC, its JSON columns as the text to store."""

    event_id: UUID
    event_type: EventType
    status: Status
    error_message: str | None
    error_truncated: bool
    migration_from: str | None
    migration_to: str | None
    timestamp: datetime
    system_info: JSONText
    details: JSONText


class PlainCheckin(msgspec.Struct, gc=False):
    """A check-in whose every event is valid, as `parse_plain_checkin` returns it."""

    agent_version: str
    system_info: dict[str, Any] | None
    events: list[PlainEvent]


_DECODER = msgspec.json.Decoder(_WireCheckin)
_TIMES = TypeAdapter(list[AwareDatetime])
# Digits as "0" and "E" as "e": a JSON text holds a number in exponent form only if "0e"
# is in its translation (or a string does, which only costs the event the general path).
_EXPONENT_VIEW = bytes.maketrans(b"123456789E", b"000000000e")


def parse_plain_checkin(body: bytes) -> PlainCheckin | None:
    """The check-in in a JSON body, with exactly the values the general path gives, if
    every event is valid and no text needs cleaning; None for anything else, which the
    caller validates the general way to learn what is wrong with which event.

    No text needs cleaning: a body without a NUL escape cannot hold a NUL (JSON has no raw
    control characters in strings), msgspec refuses lone surrogates and invalid UTF-8 in
    the fields it decodes, and `_json_text` checks the JSON it keeps as text.
    """
    if b"\\u0000" in body:
        return None
    try:
        wire = _DECODER.decode(body)
        system_info = _envelope_system_info(wire.system_info)
        times = _TIMES.validate_python([event.timestamp for event in wire.events])
    except ValueError:  # msgspec's and pydantic's validation errors are ones
        return None
    events = []
    for event, sent_at in zip(wire.events, times, strict=True):
        checked = _checked_event(event, sent_at)
        if checked is None:
            return None
        events.append(checked)
    return PlainCheckin(wire.agent_version, system_info, events)


def _envelope_system_info(raw: msgspec.Raw) -> dict[str, Any] | None:
    """The check-in's own system_info (the agent's row keeps it as JSONB), parsed as the
    general path parses it; ValueError for anything but an object that passes its check."""
    data = bytes(raw)
    if raw is _ABSENT or data == b"null":
        return None
    value = pydantic_core.from_json(data)
    if not isinstance(value, dict):
        raise ValueError("system_info is not an object")
    return optional_system_info(value)


def _checked_event(event: _WireEvent, sent_at: datetime) -> PlainEvent | None:
    """The event with `models.wire.Event`'s checks made, or None if any would fail or change
    a value in a way this lane does not."""
    system_info = _json_text(event.system_info, MAX_SYSTEM_INFO_BYTES)
    details = _json_text(event.details, MAX_DETAILS_BYTES)
    if system_info is None or details is None:
        return None
    try:
        utc = plausible_time(sent_at)
        agree_with_vocabulary(event)
    except ValueError:
        return None
    return PlainEvent(
        event.event_id,
        event.event_type,
        event.status,
        event.error_message,
        event.error_truncated,
        event.migration_from,
        event.migration_to,
        utc,
        system_info,
        details,
    )


def _json_text(raw: msgspec.Raw, max_bytes: int) -> JSONText | None:
    """The JSON text of an object-valued field, if the general path's check
    (`models.wire.json_object_check`) certainly passes its value unchanged; else None.

    The text is valid JSON (msgspec checked it while skipping it: no NaN, no lone
    surrogate escapes); what is left to prove holds of the value the general path parses:
    - an object, not another value;
    - no number in exponent form: that is how a float beyond the double range (1e400)
      reaches the general path, which refuses infinity, and the only way a number's
      serialisation grows ("1e5" is "100000.0");
    - then the value's compact serialisation is no longer than this text (whitespace,
      escapes, repeated keys and other numbers only shrink), so three quarters of the
      limit bound its size, and fewer brackets than the depth limit bound its depth;
    - valid UTF-8, which msgspec does not check in text it skips.
    """
    data = bytes(raw)
    if not (
        data[:1] == b"{"
        and 4 * len(data) <= 3 * max_bytes
        and data.count(b"{") + data.count(b"[") < MAX_JSON_DEPTH
        and b"0e" not in data.translate(_EXPONENT_VIEW)
    ):
        return None
    if data.isascii():
        return JSONText(data.decode("ascii"))
    try:
        return JSONText(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None
