"""Turns detection and execution outcomes into wire events that fit the server's limits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from agent.detection import Clock, Detection, DetectionOutcome, Failure, utc_now
from agent.execution import Execution, ExecutionOutcome
from agent.layout import Layout
from models.vocabulary import Category, EventType, kind_of
from models.wire import MAX_DETAILS_BYTES, MAX_MIGRATION_LABEL_CHARS, Event

_DETECTION_TYPES = {
    DetectionOutcome.NEEDED: EventType.MIGRATION_DETECTION_SUCCESS,
    DetectionOutcome.NOT_NEEDED: EventType.MIGRATION_DETECTION_NOT_NEEDED,
    DetectionOutcome.FAILED: EventType.MIGRATION_DETECTION_FAILED,
}
_EXECUTION_TYPES = {
    ExecutionOutcome.SUCCESS: EventType.MIGRATION_EXECUTION_SUCCESS,
    ExecutionOutcome.PARTIAL: EventType.MIGRATION_EXECUTION_PARTIAL,
    ExecutionOutcome.FAILED: EventType.MIGRATION_EXECUTION_FAILED,
}
# Leave room under the server's limit for the JSON encoding differences of the two sides.
_DETAILS_BUDGET = MAX_DETAILS_BYTES - 1024


def new_event(
    event_type: EventType,
    *,
    error_message: str | None,
    migration_from: str | None,
    migration_to: str | None,
    system_info: dict[str, Any],
    details: dict[str, Any],
    clock: Clock = utc_now,
) -> Event:
    """A new event with a fresh id; the id stays with it through every retry."""
    return Event(
        event_id=uuid.uuid4(),
        event_type=event_type,
        status=kind_of(event_type).status,
        error_message=error_message,
        migration_from=_label(migration_from),
        migration_to=_label(migration_to),
        timestamp=clock(),
        system_info=system_info,
        details=fit_details(details),
    )


def detection_event(
    layout: Layout,
    detection: Detection,
    *,
    system_info: dict[str, Any],
    extra: dict[str, Any] | None = None,
    clock: Clock = utc_now,
) -> Event:
    details: dict[str, Any] = {"phase": "detection", **detection.summary(layout)}
    if detection.failure is not None:
        details.update(_failure_details(detection.failure))
    details.update(extra or {})
    return new_event(
        _DETECTION_TYPES[detection.outcome],
        error_message=detection.failure.message if detection.failure else None,
        migration_from=detection.migration_from,
        migration_to=detection.migration_to,
        system_info=system_info,
        details=details,
        clock=clock,
    )


def execution_event(
    execution: Execution,
    *,
    system_info: dict[str, Any],
    extra: dict[str, Any] | None = None,
    clock: Clock = utc_now,
) -> Event:
    details: dict[str, Any] = {"phase": "execution", **execution.details()}
    details.update(extra or {})
    return new_event(
        _EXECUTION_TYPES[execution.outcome],
        error_message=execution.message,
        migration_from=execution.migration_from,
        migration_to=execution.migration_to,
        system_info=system_info,
        details=details,
        clock=clock,
    )


def update_event(
    event_type: EventType,
    *,
    package: str,
    from_version: str | None = None,
    to_version: str | None = None,
    package_manager: str | None = None,
    error_message: str | None = None,
    system_info: dict[str, Any],
    extra: dict[str, Any] | None = None,
    clock: Clock = utc_now,
) -> Event:
    """A regular update event (discovered, installed, failed, ignored) for one package."""
    if kind_of(event_type).category is not Category.UPDATE:
        raise ValueError(f"{event_type.value} is not an update event")
    details: dict[str, Any] = {"package": package}
    optional = {
        "from_version": from_version,
        "to_version": to_version,
        "package_manager": package_manager,
    }
    details.update({key: value for key, value in optional.items() if value})
    details.update(extra or {})
    return new_event(
        event_type,
        error_message=error_message,
        migration_from=None,
        migration_to=None,
        system_info=system_info,
        details=details,
        clock=clock,
    )


def _failure_details(failure: Failure) -> dict[str, Any]:
    return {
        "path": failure.path,
        "errno": failure.errno,
        "errno_name": failure.errno_name,
        "exception_type": failure.exception_type,
        "traceback": failure.traceback,
    }


def _label(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_MIGRATION_LABEL_CHARS:
        return text
    return text[: MAX_MIGRATION_LABEL_CHARS - 3] + "..."


def _size(details: dict[str, Any]) -> int:
    text = json.dumps(details, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a file name that is not UTF-8 must be measured, not crash the report
    return len(text.encode("utf-8", "surrogatepass"))


def _shorter_traceback(details: dict[str, Any]) -> None:
    if isinstance(details.get("traceback"), str):
        details["traceback"] = "...\n" + details["traceback"][-2000:]


def _fewer_items(details: dict[str, Any]) -> None:
    for key in ("warnings", "security_findings", "notes"):
        if isinstance(details.get(key), list) and len(details[key]) > 5:
            details[key] = [*details[key][:5], f"... and {len(details[key]) - 5} more"]
    rollback = details.get("rollback")
    if isinstance(rollback, dict) and isinstance(rollback.get("errors"), list):
        rollback["errors"] = rollback["errors"][:5]


def _drop_extras(details: dict[str, Any]) -> None:
    for key in ("traceback", "inventory", "rewritten_settings"):
        details.pop(key, None)


_REDUCERS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _shorter_traceback,
    _fewer_items,
    _drop_extras,
)


def fit_details(details: dict[str, Any]) -> dict[str, Any]:
    """Details within the server's size limit, shedding the least useful parts first.

    The server would reject an oversized event outright; a report with a shorter
    traceback is worth far more than no report.
    """
    if _size(details) <= _DETAILS_BUDGET:
        return details
    fitted: dict[str, Any] = json.loads(json.dumps(details))
    for reduce in _REDUCERS:
        reduce(fitted)
        if _size(fitted) <= _DETAILS_BUDGET:
            break
    else:
        fitted = {k: fitted[k] for k in ("phase", "failed_step", "errno", "path") if k in fitted}
        fitted["truncated"] = True
    fitted["details_trimmed"] = True
    return fitted
