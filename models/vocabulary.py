"""The event vocabulary in one place: what each event type means and how severity follows."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    MIGRATION_DETECTION_SUCCESS = "migration_detection_success"
    MIGRATION_DETECTION_NOT_NEEDED = "migration_detection_not_needed"
    MIGRATION_DETECTION_FAILED = "migration_detection_failed"
    MIGRATION_EXECUTION_SUCCESS = "migration_execution_success"
    MIGRATION_EXECUTION_PARTIAL = "migration_execution_partial"
    MIGRATION_EXECUTION_FAILED = "migration_execution_failed"
    UPDATE_DISCOVERED = "update_discovered"
    UPDATE_INSTALLED = "update_installed"
    UPDATE_FAILED = "update_failed"
    UPDATE_IGNORED = "update_ignored"


class Category(StrEnum):
    MIGRATION = "migration"
    UPDATE = "update"


class Phase(StrEnum):
    DETECTION = "detection"
    EXECUTION = "execution"


class Status(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    WARNING = "warning"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class MigrationState(StrEnum):
    """An agent's migration state as the fleet overview shows it."""

    MIGRATED = "migrated"
    NOT_NEEDED = "not_needed"
    PENDING = "pending"
    FAILED = "failed"
    PARTIAL = "partial"
    NEVER_REPORTED = "never_reported"


@dataclass(frozen=True, slots=True)
class EventKind:
    category: Category
    phase: Phase | None
    status: Status


VOCABULARY: dict[EventType, EventKind] = {
    EventType.MIGRATION_DETECTION_SUCCESS: EventKind(
        Category.MIGRATION, Phase.DETECTION, Status.SUCCESS
    ),
    EventType.MIGRATION_DETECTION_NOT_NEEDED: EventKind(
        Category.MIGRATION, Phase.DETECTION, Status.SUCCESS
    ),
    EventType.MIGRATION_DETECTION_FAILED: EventKind(
        Category.MIGRATION, Phase.DETECTION, Status.FAILED
    ),
    EventType.MIGRATION_EXECUTION_SUCCESS: EventKind(
        Category.MIGRATION, Phase.EXECUTION, Status.SUCCESS
    ),
    EventType.MIGRATION_EXECUTION_PARTIAL: EventKind(
        Category.MIGRATION, Phase.EXECUTION, Status.WARNING
    ),
    EventType.MIGRATION_EXECUTION_FAILED: EventKind(
        Category.MIGRATION, Phase.EXECUTION, Status.FAILED
    ),
    EventType.UPDATE_DISCOVERED: EventKind(Category.UPDATE, None, Status.SUCCESS),
    EventType.UPDATE_INSTALLED: EventKind(Category.UPDATE, None, Status.SUCCESS),
    EventType.UPDATE_FAILED: EventKind(Category.UPDATE, None, Status.FAILED),
    EventType.UPDATE_IGNORED: EventKind(Category.UPDATE, None, Status.SUCCESS),
}

# The migration event that leaves an agent in each state; anything else keeps the state
# of the event before it (update events never change the migration state).
_STATE_AFTER: dict[EventType, MigrationState] = {
    EventType.MIGRATION_DETECTION_SUCCESS: MigrationState.PENDING,
    EventType.MIGRATION_DETECTION_NOT_NEEDED: MigrationState.NOT_NEEDED,
    EventType.MIGRATION_DETECTION_FAILED: MigrationState.FAILED,
    EventType.MIGRATION_EXECUTION_SUCCESS: MigrationState.MIGRATED,
    EventType.MIGRATION_EXECUTION_PARTIAL: MigrationState.PARTIAL,
    EventType.MIGRATION_EXECUTION_FAILED: MigrationState.FAILED,
}


def kind_of(event_type: EventType) -> EventKind:
    """Category, phase and the only status allowed for an event type."""
    return VOCABULARY[event_type]


def severity_for(status: Status) -> Severity:
    """Failed is an error, warning a warning, anything else information."""
    if status is Status.FAILED:
        return Severity.ERROR
    if status is Status.WARNING:
        return Severity.WARNING
    return Severity.INFO


def migration_state_after(event_type: EventType, *, ever_migrated: bool) -> MigrationState | None:
    """The state an agent is in after this migration event, or None for update events.

    A host that once migrated and now finds nothing to do is still `migrated`, not
    `not_needed`: the latter means the host never needed a migration at all.
    """
    state = _STATE_AFTER.get(event_type)
    if state is MigrationState.NOT_NEEDED and ever_migrated:
        return MigrationState.MIGRATED
    return state


MIGRATION_EVENT_TYPES: tuple[EventType, ...] = tuple(
    t for t, k in VOCABULARY.items() if k.category is Category.MIGRATION
)
FAILURE_EVENT_TYPES: tuple[EventType, ...] = tuple(
    t for t, k in VOCABULARY.items() if k.status is Status.FAILED
)
