"""The fast column conversions store exactly what SQLAlchemy's own conversions store."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from models.types import UTCDateTime, dumps_json

DATETIMES = [
    datetime(2026, 11, 1, 10, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 10, 0, 0, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5))),
]


@pytest.mark.parametrize("value", DATETIMES, ids=range(len(DATETIMES)))
def test_sqlite_timestamps_are_stored_as_sqlalchemys_datetime_text(value: datetime) -> None:
    dialect = sqlite.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert theirs is not None
    assert ours(value) == theirs(value.astimezone(UTC).replace(tzinfo=None))
    assert ours(None) is None


def test_naive_timestamps_are_still_refused_on_sqlite() -> None:
    processor = UTCDateTime().bind_processor(sqlite.dialect())
    assert processor is not None
    with pytest.raises(ValueError, match="naive"):
        processor(datetime(2026, 11, 1))  # noqa: DTZ001


ATOMS: list[Any] = ["x", "caf\u00e9 \U0001f600", '\x00\n"\\', "", 0, -1, 10**30, 1.5, 1e-7]
ATOMS += [1e16, float("nan"), float("inf"), True, False, None]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.5:
        return rng.choice(ATOMS)
    if roll < 0.75:
        # String keys only: JSON column values are parsed JSON, whose keys are strings.
        keys = ["k", "\u00fc", "1", "2.5", "true", "null"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_json_columns_read_back_as_json_dumps_would_have_written_them() -> None:
    rng = random.Random(13)
    for _ in range(3000):
        value = {"k": _random_value(rng)}
        # repr: NaN is not equal to itself
        assert repr(json.loads(dumps_json(value))) == repr(json.loads(json.dumps(value)))


def test_json_column_text_is_compact_utf8() -> None:
    assert dumps_json({"a": [1, "caf\u00e9"], "b": None}) == '{"a":[1,"caf\u00e9"],"b":null}'


def test_unserialisable_json_values_fail() -> None:
    with pytest.raises(ValueError, match="Unable to serialize unknown type"):
        dumps_json({"a": object()})
