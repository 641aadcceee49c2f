"""Request bodies parse to exactly what the standard library's JSON parser gives."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ingest_api.routes import parse_json_body

ODD_BODIES = [
    b'{"a":1,"a":2}',
    b'"\\ud800"',
    b'"\\ud800\\u0041"',
    b"\xef\xbb\xbf{}",
    b'"\xed\xa0\x80"',
    b"18446744073709551616",
    b"-123456789012345678901234567890",
    b"1e400",
    b'{"a":NaN,"b":-Infinity}',
    b"[" * 5000 + b"]" * 5000,
    b'"\\u0000"',
    b"5e-324",
    b"2.4703282292062328e-324",
    b"1" * 4301,
    b"[1,]",
    b'"a\x01b"',
    b'"\xff"',
    b"",
    b'{"a":1} x',
    '{"text":"caf\u00e9 \U0001f600"}'.encode(),
    '{"utf16":1}'.encode("utf-16"),
]


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(parse(body))
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, None


@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
def test_odd_bodies_parse_as_the_standard_library_parses_them(body: bytes) -> None:
    assert _outcome(parse_json_body, body) == _outcome(json.loads, body)


def test_random_documents_parse_identically() -> None:
    rng = random.Random(8)
    pieces = ["0", "-0", "1.5", "-2e-7", "1E+300", "123456789012345678901", "true", "null"]
    pieces += ['"x"', '"\\u00e9\\n\\t\\\\"', '"\\ud83d\\ude00"', '"\u00fc"', "[]", "{}"]

    def document(depth: int) -> str:
        if depth > 4 or rng.random() < 0.4:
            return rng.choice(pieces)
        if rng.random() < 0.5:
            return "[" + ",".join(document(depth + 1) for _ in range(rng.randrange(4))) + "]"
        items = (f'"k{rng.randrange(3)}": {document(depth + 1)}' for _ in range(rng.randrange(4)))
        return "{" + ", ".join(items) + "}"

    for _ in range(2000):
        body = document(0).encode()
        assert _outcome(parse_json_body, body) == _outcome(json.loads, body), body
