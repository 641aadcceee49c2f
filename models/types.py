"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pydantic_core
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime in, an aware UTC datetime out, on every backend.

    SQLite has no time zones and hands back naive values; storing UTC and marking it on
    the way out keeps every datetime in the program aware.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_sqlite_text(value: datetime | None) -> str | None:
            utc = self.process_bind_param(value, dialect)
            # The very text SQLAlchemy's SQLite DATETIME writes ("2026-11-01 10:00:00.000000"),
            # made by datetime's C formatter: about five times faster on a hot path that
            # stores two timestamps per event.
            return None if utc is None else utc.isoformat(" ", "microseconds")

        return to_sqlite_text

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON on SQLite, JSONB on PostgreSQL, declared once: the agent's JSON columns.
PortableJSON: sa.types.TypeEngine[Any] = sa.JSON().with_variant(JSONB(), "postgresql")
# An event's system_info and details: JSON on both. Nothing queries inside them; they are
# stored, shown and exported whole. PostgreSQL's `json` keeps the text as written
# (`dumps_json`'s, or an agent's own, `JSONText`) after checking it is JSON, where jsonb parsed it
# into a tree at every insert and printed it back at every read: at a million events that
# was a third of PostgreSQL's work in an export and part of its work at ingest.
PayloadJSON: sa.types.TypeEngine[Any] = sa.JSON()


class JSONText(str):
    """A JSON column's value as JSON text already, checked: stored as it is, not as a
    string (`dumps_json`). The ingest API's plain lane keeps an event's system_info and
    details as the agent sent them (`models.plain_checkin`)."""

    __slots__ = ()


def dumps_json(value: Any) -> str:
    """The text of a JSON column value, for the engines' JSON columns: pydantic-core's
    compact UTF-8 serialisation (about half the cost of `json.dumps`), or a `JSONText`'s
    own. Rows written by `json.dumps` before (ASCII, ", " and ": ") read back the same.
    """
    if type(value) is JSONText:
        return str.__str__(value)
    return pydantic_core.to_json(value).decode()


def enum_column_type(enum: type[StrEnum], length: int = 32) -> sa.Enum:
    """An enum stored as VARCHAR: new values need no type migration and no CHECK rewrite."""
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )
