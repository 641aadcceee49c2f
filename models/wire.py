"""Wire schemas of the v1 HTTP contract, shared by the ingest API and the agent.

Only pydantic here: the agent imports this module on every managed host.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol, Self
from uuid import UUID

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StringConstraints,
    field_validator,
    model_validator,
)

from models.vocabulary import EventType, Status, kind_of

MAX_EVENTS_PER_CHECKIN = 1000
MAX_ERROR_MESSAGE_BYTES = 64 * 1024
MAX_MIGRATION_LABEL_CHARS = 255
MAX_SYSTEM_INFO_BYTES = 16 * 1024
MAX_DETAILS_BYTES = 64 * 1024
MAX_METADATA_BYTES = 8 * 1024
MAX_JSON_DEPTH = 8
# Bounds on what a validation error sends back, whatever the input held.
MAX_REPORTED_ERRORS = 10
MAX_ERROR_PART_CHARS = 80
TRUNCATION_MARKER = "\n[truncated: {omitted} bytes omitted]"
# Events older than this cannot come from a RedFlag agent; newer than the server's clock
# plus this skew cannot be true either. Both are bounds against absurd input, not policy.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(days=1)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Text that every database can store: no NUL, no lone surrogates.

    PostgreSQL refuses both in text and JSONB; they are replaced (U+FFFD), not rejected,
    so that an event is never lost for a stray byte.
    """
    if value.isascii() and "\x00" not in value:
        # The common case, checked without copying (isascii is a flag lookup).
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _LONE_SURROGATE.sub("\ufffd", value)
    return value


def _clean_json(value: Any, *, depth: int, max_depth: int) -> Any:
    if depth > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {
            clean_text(str(k)): _clean_json(v, depth=depth + 1, max_depth=max_depth)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_clean_json(v, depth=depth + 1, max_depth=max_depth) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("NaN and infinity are not JSON")
    return value


def plain_json(
    value: dict[str, Any], max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> bytes | None:
    """value's JSON (pydantic-core's compact serialisation) if value certainly passes the
    JSON column checks unchanged, else None: nothing to clean
    (no NUL, no lone surrogate, no NaN or infinity), no deeper than max_depth, no larger
    than max_bytes.

    One pass of pydantic-core's serializer instead of a walk in Python, which was most of
    the cost of validating an event. Fewer brackets than max_depth bound the depth
    whatever the shape; three quarters of the limit leave room for the one byte by which
    json.dumps may write a float longer than pydantic-core ("1e-07" for "1e-7"), as
    every such float takes three bytes at least. Brackets or "NaN" inside strings only
    send a value the long way. Object keys are strings, as parsed JSON has them.
    """
    try:
        data = pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError:  # a lone surrogate
        return None
    plain = (
        4 * len(data) <= 3 * max_bytes
        and data.count(b"{") + data.count(b"[") < max_depth
        and b"\\u0000" not in data
        and b"NaN" not in data
        and b"Infinity" not in data
    )
    return data if plain else None


def json_object_check(
    max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The check of a JSON object column: cleaned text, bounded depth and size."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if plain_json(value, max_bytes, max_depth) is not None:
            return value
        cleaned: dict[str, Any] = _clean_json(value, depth=1, max_depth=max_depth)
        size = len(json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")).encode())
        if size > max_bytes:
            raise ValueError(f"is {size} bytes of JSON, more than the limit of {max_bytes}")
        return cleaned

    return check


def bounded_json(max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> AfterValidator:
    """`json_object_check` as a validator of an annotated type."""
    return AfterValidator(json_object_check(max_bytes, max_depth))


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cut text to at most max_bytes of UTF-8 (marker included), on a character boundary."""
    if len(text) <= max_bytes and text.isascii():
        return text, False
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text, False
    marker_room = len(TRUNCATION_MARKER.format(omitted=len(data)).encode())
    head = data[: max_bytes - marker_room].decode("utf-8", "ignore")
    omitted = len(data) - len(head.encode("utf-8"))
    return head + TRUNCATION_MARKER.format(omitted=omitted), True


CleanStr = Annotated[str, AfterValidator(clean_text)]
# Lengths of labels; a model that cleans text applies them to the cleaned text (pydantic-core
# cannot measure text holding a lone surrogate), one that needs no cleaning to str itself.
LABEL_LENGTH = StringConstraints(max_length=MAX_MIGRATION_LABEL_CHARS)
AGENT_VERSION_LENGTH = StringConstraints(min_length=1, max_length=64)
Metadata = Annotated[dict[str, Any], bounded_json(MAX_METADATA_BYTES)]
_check_system_info = json_object_check(MAX_SYSTEM_INFO_BYTES)
_check_details = json_object_check(MAX_DETAILS_BYTES)


class _Strict(BaseModel):
    # Unknown fields are an agent bug worth hearing about, not something to drop quietly.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def plausible_time(value: datetime) -> datetime:
    """The time in UTC, if an agent can have reported it; ValueError otherwise."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if utc < EARLIEST_EVENT_TIME:
        raise ValueError(f"is before {EARLIEST_EVENT_TIME:%Y-%m-%d}")
    # Plain seconds: no datetimes made for a check that runs for every event.
    if utc.timestamp() > time.time() + MAX_CLOCK_SKEW.total_seconds():
        raise ValueError("is more than a day ahead of the server's clock")
    return utc


class Outcome(Protocol):
    """What `agree_with_vocabulary` reads of an event and may correct."""

    event_type: EventType
    status: Status
    error_message: str | None
    error_truncated: bool


class ReportedEvent(Protocol):
    """An event's values as the server stores them: an `Event`, or an event of the ingest
    API's plain lane (`models.plain_checkin.PlainEvent`, whose JSON columns are text)."""

    @property
    def event_id(self) -> UUID: ...
    @property
    def event_type(self) -> EventType: ...
    @property
    def status(self) -> Status: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def error_truncated(self) -> bool: ...
    @property
    def migration_from(self) -> str | None: ...
    @property
    def migration_to(self) -> str | None: ...
    @property
    def timestamp(self) -> datetime: ...
    # An object, or its JSON already written (`models.types.JSONText`).
    @property
    def system_info(self) -> Any: ...
    @property
    def details(self) -> Any: ...


def agree_with_vocabulary(event: Outcome) -> None:
    """Check the status against the event type and cut an overlong error message, in place."""
    expected = kind_of(event.event_type).status
    if event.status is not expected:
        raise ValueError(
            f"status {event.status.value!r} does not agree with event_type "
            f"{event.event_type.value!r}, which must be {expected.value!r}"
        )
    if event.status is Status.FAILED and not (event.error_message or "").strip():
        raise ValueError("error_message is required when status is 'failed'")
    if event.error_message is not None:
        event.error_message, cut = truncate_utf8(event.error_message, MAX_ERROR_MESSAGE_BYTES)
        event.error_truncated = event.error_truncated or cut


def _clean_optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


class Event(_Strict):
    """One outcome an agent reports: a migration step or a regular update event."""

    event_id: UUID
    event_type: EventType
    status: Status
    error_message: str | None = None
    error_truncated: bool = False
    migration_from: Annotated[CleanStr, LABEL_LENGTH] | None = None
    migration_to: Annotated[CleanStr, LABEL_LENGTH] | None = None
    timestamp: AwareDatetime
    system_info: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

    _clean = field_validator("error_message")(_clean_optional)
    _system_info = field_validator("system_info")(_check_system_info)
    _details = field_validator("details")(_check_details)
    _time = field_validator("timestamp")(plausible_time)

    @model_validator(mode="after")
    def _agree_with_vocabulary(self) -> Self:
        agree_with_vocabulary(self)
        return self


# Any value is accepted here and validated later as an Event on its own, so one bad event
# does not sink the batch; the published schema still describes each item as an Event.
RawEvent = Annotated[
    Any,
    GetPydanticSchema(
        get_pydantic_json_schema=lambda _schema, handler: handler(Event.__pydantic_core_schema__)
    ),
]


def optional_system_info(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The check of a check-in's own system_info, which may be absent."""
    return None if value is None else _check_system_info(value)


class CheckinRequest(_Strict):
    """The check-in envelope. Events stay raw here: each is validated on its own."""

    agent_version: Annotated[CleanStr, AGENT_VERSION_LENGTH]
    system_info: dict[str, Any] | None = None
    events: list[RawEvent] = Field(default_factory=list, max_length=MAX_EVENTS_PER_CHECKIN)

    _system_info = field_validator("system_info")(optional_system_info)


class RejectedEvent(BaseModel):
    index: int
    event_id: UUID | None
    error: str


class CheckinResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]
    check_in_interval_seconds: int
    server_time: AwareDatetime


class RegistrationRequest(_Strict):
    hostname: Annotated[CleanStr, StringConstraints(min_length=1, max_length=255)]
    os_type: Annotated[CleanStr, StringConstraints(min_length=1, max_length=64)]
    os_version: Annotated[CleanStr, StringConstraints(max_length=128)]
    os_architecture: Annotated[CleanStr, StringConstraints(max_length=64)]
    agent_version: Annotated[CleanStr, StringConstraints(min_length=1, max_length=64)]
    machine_id: Annotated[CleanStr, StringConstraints(max_length=128)] | None = None
    metadata: Metadata | None = None


class RegistrationResponse(BaseModel):
    agent_id: UUID
    agent_token: str
    check_in_interval_seconds: int


def safe_error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error fit to send back: its type, location and message, never its input.

    Echoing the input would put hostile values (lone surrogates, NaN, megabytes of text)
    straight into a JSON response; a location can hold a field name taken from the input,
    so it is cleaned and cut short too.
    """
    message = clean_text(str(error.get("msg", "")))
    reason = (error.get("ctx") or {}).get("error")
    if isinstance(reason, str) and reason not in message:
        message = f"{message}: {clean_text(reason[:MAX_ERROR_PART_CHARS])}"
    return {
        "type": str(error.get("type", "")),
        "loc": [_location_part(part) for part in error.get("loc", ())],
        "msg": message,
    }


def _location_part(part: Any) -> str | int:
    if isinstance(part, int):
        return part
    text = str(part)
    if len(text) > MAX_ERROR_PART_CHARS:
        text = text[:MAX_ERROR_PART_CHARS] + "..."
    return clean_text(text)


def describe_validation_error(exc: Any) -> str:
    """One line naming each bad field (the first few), from a pydantic ValidationError."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for error in map(safe_error, errors[:MAX_REPORTED_ERRORS]):
        location = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{location}: {error['msg']}")
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_REPORTED_ERRORS} more errors")
    return "; ".join(parts)
