"""The fast path of JSON column validation gives exactly what the full cleaning path gives."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from models.wire import MAX_JSON_DEPTH, _clean_json, bounded_json, clean_text, truncate_utf8

_ATOMS: list[Any] = [
    "plain",
    "",
    "caf\u00e9",
    "nul\x00inside",
    "lone\ud800surrogate",
    "back\\u0000slash",
    "[[[[[[[[[[",
    "x" * 40,
    0,
    -7,
    10**30,
    1.5,
    1e-07,
    2.5e16,
    float("nan"),
    float("inf"),
    True,
    False,
    None,
    (1, 2),
]


def _random_json(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > MAX_JSON_DEPTH + 2 or roll < 0.45:
        return rng.choice(_ATOMS)
    if roll < 0.75:
        return {
            rng.choice(["k", "key\x00", "k\ud800", "\u00fc", "{[", "NaN"]): _random_json(
                rng, depth + 1
            )
            for _ in range(rng.randrange(0, 4))
        }
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def _full_path(value: dict[str, Any], max_bytes: int) -> Any:
    """The validator as it was before the fast path: always clean, then measure."""
    cleaned = _clean_json(value, depth=1, max_depth=MAX_JSON_DEPTH)
    size = len(json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_bytes:
        raise ValueError(f"is {size} bytes of JSON, more than the limit of {max_bytes}")
    return cleaned


def _outcome(check: Any, value: dict[str, Any], max_bytes: int) -> tuple[str, Any]:
    try:
        result = check(value, max_bytes)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", json.dumps(result, sort_keys=True, default=repr)


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_agrees_with_full_cleaning(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        value = {f"f{i}": _random_json(rng, 2) for i in range(rng.randrange(0, 5))}
        max_bytes = rng.choice([10, 30, 60, 90, 10_000])
        validator = bounded_json(max_bytes).func

        def fast(v: dict[str, Any], _limit: int, validator: Any = validator) -> Any:
            return validator(v)

        expected = _outcome(_full_path, value, max_bytes)
        assert _outcome(fast, value, max_bytes) == expected, value


def test_clean_json_object_is_returned_as_is() -> None:
    value = {"hostname": "web-01", "steps": [{"name": "copy", "ok": True}], "free": 1.5}
    assert bounded_json(1000).func(value) is value


def test_depth_limit_counts_the_leaves() -> None:
    check = bounded_json(10_000).func
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = {"x": nested}
    assert check(nested) == nested
    with pytest.raises(ValueError, match="nested deeper"):
        check({"x": nested})
    assert check({"x": [{}] * 2}) == {"x": [{}, {}]}


def test_ascii_text_passes_unchanged_and_odd_text_is_still_cleaned() -> None:
    text = "copy /var/lib/aggregator: [Errno 13] Permission denied"
    assert clean_text(text) is text
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("\u00e9\ud800") == "\u00e9\ufffd"
    assert truncate_utf8(text, 1000) == (text, False)
    cut, truncated = truncate_utf8("x" * 100, 60)
    assert truncated
    assert len(cut.encode()) <= 60
