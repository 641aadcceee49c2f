"""A corpus of hostile requests: each gets a clear 4xx (or a 200 listing the bad events),
never a 5xx, and the database afterwards holds exactly what was valid, stored verbatim.

The cases share one database per backend and one agent, and compare row counts before
and after each request; a fresh database per case would cost more than the case itself.
Framing tricks that a test client cannot express (chunked bodies, a lying Content-Length)
go through raw sockets to a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import gc
import http.client
import json
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from ingest_api.app import create_app
from ingest_api.service import create_enrollment_token
from models.database import write_transaction
from models.settings import Settings
from models.tables import AGENT_TABLE, EVENT_TABLE
from models.vocabulary import EventType
from tests.factories import registration, wire_event

LIMIT = 2 * 1024 * 1024
MiB = 1024 * 1024
SETTINGS = Settings(max_body_bytes=LIMIT, rate_limit_per_minute=60_000, rate_limit_burst=10_000)
REPLACEMENT = "\ufffd"

# Text that is data, not markup: the API stores it verbatim, and escaping it is the
# console's job.
HOSTILE_TEXT = {
    "html-script": "<script>alert(document.cookie)</script>",
    "html-img-onerror": '<img src=x onerror="alert(1)">',
    "markdown": "[click](javascript:alert(1)) **bold** `code` # heading\n| a | b |",
    "sql-injection": "'; DROP TABLE update_events; --",
    "sql-tautology": "' OR '1'='1' /*",
    "path-traversal": "../../../../etc/passwd",
    "windows-traversal": "..\\..\\..\\windows\\system32\\config\\sam",
    "ansi-escapes": "\x1b[31mred\x1b[0m \x1b]0;owned\x07 \x1b[2J\x1b[H",
    "bidi-override": "invoice\u202egpj.exe\u202c",
    "bidi-isolates": "\u2066admin\u2069 \u2067shadow\u2069",
    "zero-width": "pass\u200bword\ufeff\u200d",
    "formula-equals": '=HYPERLINK("http://evil.example","open")',
    "formula-plus": "+cmd|' /C calc'!A0",
    "formula-minus": "-2+3+cmd|' /C calc'!A0",
    "formula-at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "crlf-injection": "ok\r\nSet-Cookie: session=evil",
    "template-injection": "{{7*7}} ${7*7} <%= 7*7 %>",
    "astral-and-rtl": "\U0001d573\U0001d594 \U0001f525 \ufdfd \u05e9\u05dc\u05d5\u05dd",
    "json-in-text": '{"status": "success", "__proto__": {"admin": true}}',
}


def _json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode()


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def _envelope(*raw_events: bytes, agent_version: str = "0.2.0") -> bytes:
    return b'{"agent_version": %s, "events": [%s]}' % (
        _json(agent_version),
        b", ".join(raw_events),
    )


@dataclass
class Corpus:
    """The API under test, its database and one enrolled agent."""

    client: TestClient
    engine: Engine
    agent_id: str
    agent_token: str
    enrollment_token: str

    @property
    def checkin_url(self) -> str:
        return f"/api/v1/agents/{self.agent_id}/checkin"

    def headers(self, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.agent_token}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    def checkin(self, body: bytes, content_type: str | None = "application/json") -> Any:
        return self.client.post(self.checkin_url, content=body, headers=self.headers(content_type))

    def register(self, body: bytes, content_type: str = "application/json") -> Any:
        headers = {"Authorization": f"Bearer {self.enrollment_token}", "Content-Type": content_type}
        return self.client.post("/api/v1/agents/register", content=body, headers=headers)

    def count(self, table: sa.Table) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )

    def event_row(self, event_id: str) -> dict[str, Any]:
        query = sa.select(EVENT_TABLE).where(
            EVENT_TABLE.c.agent_id == uuid.UUID(self.agent_id),
            EVENT_TABLE.c.event_id == uuid.UUID(event_id),
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query).mappings().one())

    def agent_row(self, agent_id: str | None = None) -> dict[str, Any]:
        query = sa.select(AGENT_TABLE).where(
            AGENT_TABLE.c.id == uuid.UUID(agent_id or self.agent_id)
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query).mappings().one())


@pytest.fixture(scope="module")
def corpus(module_engine: Engine) -> Iterator[Corpus]:
    with write_transaction(module_engine) as connection:
        enrollment = create_enrollment_token(connection, uses=10_000, ttl=timedelta(hours=2))
    with TestClient(create_app(settings=SETTINGS, engine=module_engine)) as client:
        response = client.post(
            "/api/v1/agents/register",
            json=registration(hostname="corpus-host"),
            headers={"Authorization": f"Bearer {enrollment.token}"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        yield Corpus(client, module_engine, body["agent_id"], body["agent_token"], enrollment.token)


def assert_clear_refusal(response: Any, status: int) -> None:
    """A 4xx whose JSON `detail` says what is wrong, with nothing of the server's insides."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if isinstance(detail, str):
        assert detail.strip()
    else:
        assert detail
        assert all(error["msg"].strip() for error in detail)
    for leak in ("Traceback", 'File "', "sqlalchemy", "psycopg", "sqlite3"):
        assert leak not in response.text
    assert len(response.content) < 8 * 1024, "an error answer must not echo the input"


@pytest.fixture
def unchanged(corpus: Corpus) -> Iterator[None]:
    """The request under test must leave the database exactly as it was."""
    before = (corpus.count(EVENT_TABLE), corpus.count(AGENT_TABLE), corpus.agent_row())
    yield
    assert (corpus.count(EVENT_TABLE), corpus.count(AGENT_TABLE), corpus.agent_row()) == before


# --- Malformed check-in envelopes: 422, and nothing stored or touched ---------------------

MALFORMED_ENVELOPES = [
    pytest.param(b"", id="empty-body"),
    pytest.param(b" \r\n\t ", id="whitespace-body"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"[]", id="json-array"),
    pytest.param(b'[{"agent_version": "0.2.0"}]', id="envelope-inside-array"),
    pytest.param(b'"agent_version"', id="json-string"),
    pytest.param(b"42", id="json-number"),
    pytest.param(b"true", id="json-true"),
    pytest.param(b"{", id="truncated-json"),
    pytest.param(b'{"agent_version": "0.2.0"} trailing', id="trailing-garbage"),
    pytest.param(b"{'agent_version': '0.2.0'}", id="single-quoted-json"),
    pytest.param(b'{"agent_version": "0.2.0",}', id="trailing-comma"),
    pytest.param(b'{"agent_version": "0.2.\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"agent_version": "0.2.\x00"}', id="raw-nul-in-string"),
    pytest.param(b'{"agent_version": "0.2.0"}\x00', id="raw-nul-after-json"),
    pytest.param(b"\x00" * 64, id="raw-nul-body"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="array-nested-100k-levels"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="object-nested-100k-levels"),
    pytest.param(
        _json({"agent_version": "0.2.0", "system_info": _nested(500)}),
        id="system-info-nested-500-levels",
    ),
    pytest.param(b'{"agent_version": NaN}', id="nan-as-version"),
    pytest.param(b'{"agent_version": "0.2.0", "system_info": {"x": NaN}}', id="nan-literal"),
    pytest.param(
        b'{"agent_version": "0.2.0", "system_info": {"x": Infinity}}', id="infinity-literal"
    ),
    pytest.param(
        b'{"agent_version": "0.2.0", "system_info": {"x": -Infinity}}', id="minus-infinity"
    ),
    pytest.param(b'{"agent_version": "0.2.0", "system_info": {"x": 1e400}}', id="float-1e400"),
    pytest.param(
        b'{"agent_version": "0.2.0", "system_info": {"x": %s}}' % (b"9" * 5000),
        id="integer-of-5000-digits",
    ),
    pytest.param(_json({"agent_version": "0.2.0", "agent_id": "x"}), id="unknown-field"),
    pytest.param(
        b'{"agent_version": "0.2.0", "\\ud800\\u0000": 1}', id="unknown-field-named-surrogate"
    ),
    pytest.param(_json({"agent_version": "0.2.0", "x" * 100_000: 1}), id="unknown-field-100k-name"),
    pytest.param(
        _json({"agent_version": "0.2.0", **{f"extra_{i}": i for i in range(10_000)}}),
        id="ten-thousand-unknown-fields",
    ),
    pytest.param(_json({"events": []}), id="missing-agent-version"),
    pytest.param(_json({"agent_version": ""}), id="empty-agent-version"),
    pytest.param(_json({"agent_version": "v" * 65}), id="agent-version-too-long"),
    pytest.param(_json({"agent_version": 2**70}), id="agent-version-huge-int"),
    pytest.param(_json({"agent_version": None}), id="agent-version-null"),
    pytest.param(_json({"agent_version": ["0.2.0"]}), id="agent-version-array"),
    pytest.param(_json({"agent_version": {"v": 1}}), id="agent-version-object"),
    pytest.param(_json({"agent_version": True}), id="agent-version-bool"),
    pytest.param(_json({"agent_version": "0.2.0", "system_info": "x"}), id="system-info-string"),
    pytest.param(_json({"agent_version": "0.2.0", "system_info": [1]}), id="system-info-array"),
    pytest.param(_json({"agent_version": "0.2.0", "system_info": 7}), id="system-info-number"),
    pytest.param(
        _json({"agent_version": "0.2.0", "system_info": {"x": "y" * 20_000}}),
        id="system-info-over-16-kib",
    ),
    pytest.param(_json({"agent_version": "0.2.0", "events": "x"}), id="events-string"),
    pytest.param(_json({"agent_version": "0.2.0", "events": {}}), id="events-object"),
    pytest.param(_json({"agent_version": "0.2.0", "events": 1}), id="events-number"),
    pytest.param(_json({"agent_version": "0.2.0", "events": None}), id="events-null"),
    pytest.param(_json({"agent_version": "0.2.0", "events": [{}] * 1001}), id="1001-events"),
    pytest.param(b'{"agent_version": "0.2.0", "agent_version": 7}', id="duplicate-key-last-is-bad"),
]


@pytest.mark.parametrize("body", MALFORMED_ENVELOPES)
@pytest.mark.usefixtures("unchanged")
def test_malformed_checkin_envelope_is_422_and_changes_nothing(corpus: Corpus, body: bytes) -> None:
    assert_clear_refusal(corpus.checkin(body), 422)


WRONG_CONTENT_TYPES = [
    pytest.param(None, id="no-content-type"),
    pytest.param("text/plain", id="text-plain"),
    pytest.param("text/html; charset=utf-8", id="text-html"),
    pytest.param("application/x-www-form-urlencoded", id="form-urlencoded"),
    pytest.param("multipart/form-data; boundary=xyz", id="multipart"),
    pytest.param("application/xml", id="xml"),
    pytest.param("application/octet-stream", id="octet-stream"),
    pytest.param("../../etc/passwd", id="nonsense-content-type"),
]


@pytest.mark.parametrize("content_type", WRONG_CONTENT_TYPES)
@pytest.mark.usefixtures("unchanged")
def test_json_under_another_content_type_is_422_naming_the_content_type(
    corpus: Corpus, content_type: str | None
) -> None:
    response = corpus.checkin(_envelope(_json(wire_event())), content_type=content_type)
    assert_clear_refusal(response, 422)
    assert "application/json" in response.json()["detail"][0]["msg"]


@pytest.mark.usefixtures("unchanged")
def test_invalid_utf8_under_another_content_type_is_422(corpus: Corpus) -> None:
    assert_clear_refusal(corpus.checkin(b"\xff\xfe\x00garbage", content_type="text/plain"), 422)


@pytest.mark.usefixtures("unchanged")
def test_error_answer_stays_small_and_names_only_the_first_errors(corpus: Corpus) -> None:
    body = _json({"agent_version": "0.2.0", **{f"extra_{i}": i for i in range(10_000)}})
    detail = corpus.checkin(body).json()["detail"]
    assert len(detail) == 11
    assert detail[-1]["msg"] == "9990 more not shown"
    assert all("input" not in error for error in detail)


# --- Ids that are not UUIDs ------------------------------------------------------------------

NON_UUID_AGENT_IDS = [
    pytest.param("not-a-uuid", 422, id="word"),
    pytest.param("1", 422, id="number"),
    pytest.param("00000000-0000-0000-0000-00000000000g", 422, id="bad-hex-digit"),
    pytest.param("%27%20OR%20%271%27%3D%271", 422, id="sql-tautology"),
    pytest.param("%3Cscript%3Ealert(1)%3C%2Fscript%3E", 404, id="html-with-slash"),
    pytest.param("..%2F..%2F..%2Fetc%2Fpasswd", 404, id="encoded-path-traversal"),
    pytest.param("%2e%2e", 422, id="encoded-dot-dot"),
    pytest.param("%00", 422, id="nul"),
    pytest.param("%E2%80%AE" + "a" * 32, 422, id="bidi-override"),
    pytest.param("x" * 10_000, 422, id="ten-thousand-chars"),
]


@pytest.mark.parametrize(("agent_id", "status"), NON_UUID_AGENT_IDS)
@pytest.mark.usefixtures("unchanged")
def test_checkin_path_with_non_uuid_agent_id_is_refused(
    corpus: Corpus, agent_id: str, status: int
) -> None:
    response = corpus.client.post(
        f"/api/v1/agents/{agent_id}/checkin",
        content=_envelope(_json(wire_event())),
        headers=corpus.headers(),
    )
    assert_clear_refusal(response, status)


# --- Bad events in a good envelope: listed in `rejected`, the good event is kept ------------


def _event(**overrides: Any) -> bytes:
    return _json(wire_event(**overrides))


def _event_without(field: str) -> bytes:
    event = wire_event()
    del event[field]
    return _json(event)


def _raw_event(field: str, raw_value: bytes) -> bytes:
    """An event whose `field` is raw JSON text (NaN, 1e400...) that json.dumps cannot write."""
    event = wire_event()
    event[field] = "@@RAW@@"
    return _json(event).replace(b'"@@RAW@@"', raw_value)


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


BAD_EVENTS = [
    # event_id
    pytest.param(_event(event_id="not-a-uuid"), "event_id", id="event-id-word"),
    pytest.param(_event(event_id=""), "event_id", id="event-id-empty"),
    pytest.param(_event(event_id=123), "event_id", id="event-id-number"),
    pytest.param(_event(event_id=None), "event_id", id="event-id-null"),
    pytest.param(_event(event_id=[str(uuid.uuid4())]), "event_id", id="event-id-array"),
    pytest.param(_event(event_id="' OR '1'='1"), "event_id", id="event-id-sql"),
    pytest.param(_event(event_id="../../etc/passwd"), "event_id", id="event-id-traversal"),
    pytest.param(_event(event_id="g" * 36), "event_id", id="event-id-bad-hex"),
    pytest.param(_event_without("event_id"), "event_id", id="event-id-missing"),
    # event_type and status
    pytest.param(_event(event_type="rm -rf /"), "event_type", id="event-type-unknown"),
    pytest.param(_event(event_type="<script>"), "event_type", id="event-type-html"),
    pytest.param(
        _event(event_type="MIGRATION_EXECUTION_FAILED"), "event_type", id="event-type-upper"
    ),
    pytest.param(_event(event_type=1), "event_type", id="event-type-number"),
    pytest.param(_event(event_type=None), "event_type", id="event-type-null"),
    pytest.param(_event(status="FAILED"), "status", id="status-upper"),
    pytest.param(_event(status="ok"), "status", id="status-unknown"),
    pytest.param(_event(status=0), "status", id="status-number"),
    pytest.param(_event(status="success"), "does not agree", id="status-disagrees-with-type"),
    # error_message
    pytest.param(_event(error_message=None), "error_message", id="failed-without-message"),
    pytest.param(_event(error_message=" \n\t"), "error_message", id="failed-blank-message"),
    pytest.param(_event(error_message=42), "error_message", id="message-number"),
    pytest.param(_event(error_message=["a"]), "error_message", id="message-array"),
    pytest.param(_event(error_message={"a": 1}), "error_message", id="message-object"),
    # migration labels
    pytest.param(_event(migration_from="v" * 256), "migration_from", id="label-too-long"),
    pytest.param(_event(migration_from=0.1), "migration_from", id="label-number"),
    pytest.param(_event(migration_to={"v": 5}), "migration_to", id="label-object"),
    # timestamps
    pytest.param(_event(timestamp="2026-11-01T10:00:00"), "timestamp", id="ts-naive"),
    pytest.param(_event(timestamp="0001-01-01T00:00:00Z"), "timestamp", id="ts-year-1"),
    pytest.param(_event(timestamp="1970-01-01T00:00:00Z"), "timestamp", id="ts-epoch"),
    pytest.param(_event(timestamp="9999-12-31T23:59:59Z"), "timestamp", id="ts-year-9999"),
    pytest.param(_event(timestamp="9999-12-31T23:59:59-23:59"), "timestamp", id="ts-overflows-utc"),
    pytest.param(
        _event(timestamp="0001-01-01T00:00:00+23:59"), "timestamp", id="ts-underflows-utc"
    ),
    pytest.param(_event(timestamp="+275760-09-13T00:00:00Z"), "timestamp", id="ts-js-max"),
    pytest.param(_event(timestamp="2026-02-30T10:00:00Z"), "timestamp", id="ts-feb-30"),
    pytest.param(_event(timestamp="2026-11-01T25:00:00Z"), "timestamp", id="ts-hour-25"),
    pytest.param(_event(timestamp=_at(timedelta(days=2))), "timestamp", id="ts-future"),
    pytest.param(_event(timestamp="yesterday"), "timestamp", id="ts-word"),
    pytest.param(_event(timestamp=""), "timestamp", id="ts-empty"),
    pytest.param(_event(timestamp=1e20), "timestamp", id="ts-1e20"),
    pytest.param(_event(timestamp=2**70), "timestamp", id="ts-2-pow-70"),
    pytest.param(_event(timestamp=None), "timestamp", id="ts-null"),
    pytest.param(_raw_event("timestamp", b"NaN"), "timestamp", id="ts-nan"),
    # JSON objects
    pytest.param(_event(system_info="x"), "system_info", id="system-info-string"),
    pytest.param(_event(system_info=[1, 2]), "system_info", id="system-info-array"),
    pytest.param(_event(system_info=_nested(9)), "system_info", id="system-info-9-levels"),
    pytest.param(_event(details=_nested(500)), "details", id="details-500-levels"),
    pytest.param(_event(details={"x": "y" * 70_000}), "details", id="details-over-64-kib"),
    pytest.param(_event(details=7), "details", id="details-number"),
    pytest.param(_raw_event("details", b'{"x": NaN}'), "details", id="details-nan"),
    pytest.param(_raw_event("details", b'{"x": Infinity}'), "details", id="details-infinity"),
    pytest.param(_raw_event("details", b'{"x": 1e400}'), "details", id="details-1e400"),
    pytest.param(_raw_event("system_info", b"[-Infinity]"), "system_info", id="sysinfo-inf"),
    # other fields
    pytest.param(_event(error_truncated="maybe"), "error_truncated", id="truncated-word"),
    pytest.param(_event(error_truncated=2**70), "error_truncated", id="truncated-2-pow-70"),
    pytest.param(_raw_event("error_truncated", b"NaN"), "error_truncated", id="truncated-nan"),
    pytest.param(_event(severity="info"), "severity", id="unknown-field"),
    pytest.param(_event(agent_id=str(uuid.uuid4())), "agent_id", id="unknown-field-agent-id"),
    pytest.param(b'{"\\ud800": 1}', "event", id="unknown-field-named-surrogate"),
    # not an event at all
    pytest.param(b'"an event"', "event", id="string"),
    pytest.param(b"12", "event", id="number"),
    pytest.param(b"null", "event", id="null"),
    pytest.param(b"[]", "event", id="array"),
    pytest.param(b"{}", "event_id", id="empty-object"),
]


@pytest.mark.parametrize(("bad", "named"), BAD_EVENTS)
def test_bad_event_is_rejected_by_name_and_the_good_one_is_stored(
    corpus: Corpus, bad: bytes, named: str
) -> None:
    good = wire_event()
    events_before = corpus.count(EVENT_TABLE)

    response = corpus.checkin(_envelope(bad, _json(good)))

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    [rejected] = body["rejected"]
    assert rejected["index"] == 0
    assert named in rejected["error"]
    assert corpus.count(EVENT_TABLE) == events_before + 1
    assert corpus.event_row(good["event_id"])["error_message"] == good["error_message"]


def test_rejected_event_reason_is_short_whatever_the_event_holds(corpus: Corpus) -> None:
    bad = _json({f"field_{i}_" + "x" * 1000: i for i in range(500)})

    response = corpus.checkin(_envelope(bad))

    [rejected] = response.json()["rejected"]
    assert len(rejected["error"]) < 2000
    assert rejected["error"].endswith("more errors")


# --- Hostile text: accepted and stored exactly as sent ---------------------------------------


@pytest.mark.parametrize("text", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_text_in_every_event_text_field_is_stored_verbatim(
    corpus: Corpus, text: str
) -> None:
    event = wire_event(
        EventType.MIGRATION_EXECUTION_FAILED,
        error_message=text,
        migration_from=text,
        migration_to=text,
        system_info={text: text, "hostname": text},
        details={text: text, "steps": [{"name": text, "outcome": text}]},
    )

    response = corpus.checkin(_envelope(_json(event)))

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    row = corpus.event_row(event["event_id"])
    assert row["error_message"] == text
    assert (row["migration_from"], row["migration_to"]) == (text, text)
    assert row["system_info"] == event["system_info"]
    assert row["details"] == event["details"]


@pytest.mark.parametrize("text", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_text_in_every_registration_field_is_stored_verbatim(
    corpus: Corpus, text: str
) -> None:
    body = registration(
        hostname=text,
        os_type=text,
        os_version=text,
        os_architecture=text,
        agent_version=text,
        machine_id=text,
        metadata={text: text},
    )

    response = corpus.register(_json(body))

    assert response.status_code == 201, response.text
    row = corpus.agent_row(response.json()["agent_id"])
    fields = ("hostname", "os_type", "os_version", "os_architecture", "agent_version")
    assert {field: row[field] for field in fields} == dict.fromkeys(fields, text)
    assert row["machine_id"] == text
    assert row["host_metadata"] == {text: text}


@pytest.mark.parametrize("text", HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_hostile_agent_version_and_system_info_in_checkin_are_stored_verbatim(
    corpus: Corpus, text: str
) -> None:
    body = _json({"agent_version": text[:64], "system_info": {text: text}, "events": []})

    assert corpus.checkin(body).status_code == 200

    row = corpus.agent_row()
    assert (row["agent_version"], row["system_info"]) == (text[:64], {text: text})


# --- Characters no database can store: replaced, never rejected, never a 500 --------------

UNSTORABLE = {"nul": "\u0000", "lone-surrogate": "\ud800", "lone-low-surrogate": "\udfff"}
EVENT_TEXT_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "error_message": lambda s: {"error_message": f"a{s}b"},
    "migration_from": lambda s: {"migration_from": f"a{s}b"},
    "migration_to": lambda s: {"migration_to": f"a{s}b"},
    "details-value": lambda s: {"details": {"k": f"a{s}b"}},
    "details-key": lambda s: {"details": {f"a{s}b": 1}},
    "system-info-value": lambda s: {"system_info": {"k": [f"a{s}b"]}},
    "system-info-key": lambda s: {"system_info": {f"a{s}b": 1}},
}


@pytest.mark.parametrize("char", UNSTORABLE.values(), ids=UNSTORABLE.keys())
@pytest.mark.parametrize("field", EVENT_TEXT_FIELDS)
def test_nul_bytes_and_lone_surrogates_in_every_text_field_are_replaced_never_500(
    corpus: Corpus, field: str, char: str
) -> None:
    event = wire_event(**EVENT_TEXT_FIELDS[field](char))
    # json.dumps writes both as \u escapes, which is how a JSON client would send them.
    response = corpus.checkin(_envelope(_json(event)))

    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    stored = json.dumps(corpus.event_row(event["event_id"]), default=str, ensure_ascii=False)
    assert f"a{REPLACEMENT}b" in stored
    assert char not in stored


@pytest.mark.parametrize("char", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_nul_bytes_and_lone_surrogates_in_registration_are_replaced(
    corpus: Corpus, char: str
) -> None:
    body = registration(hostname=f"a{char}b", metadata={f"k{char}": f"v{char}"})

    response = corpus.register(_json(body))

    assert response.status_code == 201, response.text
    row = corpus.agent_row(response.json()["agent_id"])
    assert row["hostname"] == f"a{REPLACEMENT}b"
    assert row["host_metadata"] == {f"k{REPLACEMENT}": f"v{REPLACEMENT}"}


def test_surrogate_encoded_as_utf8_bytes_is_replaced_like_an_escaped_one(corpus: Corpus) -> None:
    # Python's JSON decoder lets CESU-style bytes through as a lone surrogate.
    body = b'{"agent_version": "0.2.0-\xed\xa0\x80", "events": []}'

    assert corpus.checkin(body).status_code == 200

    assert corpus.agent_row()["agent_version"] == f"0.2.0-{REPLACEMENT}"


# --- Odd but valid JSON ----------------------------------------------------------------------


def test_duplicate_keys_keep_the_last_value(corpus: Corpus) -> None:
    event = wire_event()
    raw = _json(event)[:-1] + b', "error_message": "the last copy wins"}'

    response = corpus.checkin(_envelope(raw, agent_version="0.9.9"))

    assert response.json()["accepted"] == 1
    assert corpus.event_row(event["event_id"])["error_message"] == "the last copy wins"


def test_huge_integers_in_json_objects_round_trip(corpus: Corpus) -> None:
    numbers = {"two_pow_70": 2**70, "minus": -(2**70), "ratio": 0.25, "tiny": 5e-324}
    event = wire_event(details=numbers, system_info={"free_disk_bytes": 2**70})

    assert corpus.checkin(_envelope(_json(event))).json()["accepted"] == 1

    row = corpus.event_row(event["event_id"])
    assert row["details"] == numbers
    assert row["system_info"] == {"free_disk_bytes": 2**70}


def test_oversized_error_message_is_truncated_and_stored(corpus: Corpus) -> None:
    event = wire_event(error_message="<b>" + "x" * 200_000)

    assert corpus.checkin(_envelope(_json(event))).json()["accepted"] == 1

    row = corpus.event_row(event["event_id"])
    assert row["error_truncated"] is True
    assert row["error_message"].startswith("<b>xxx")
    assert len(row["error_message"].encode()) <= 64 * 1024


def test_body_exactly_at_the_limit_is_read_and_accepted(corpus: Corpus) -> None:
    event = wire_event()
    envelope = _envelope(_json(event))
    body = envelope + b" " * (LIMIT - len(envelope))
    assert len(body) == LIMIT

    assert corpus.checkin(body).json()["accepted"] == 1


def test_utf8_byte_order_mark_is_tolerated(corpus: Corpus) -> None:
    event = wire_event()
    assert corpus.checkin(b"\xef\xbb\xbf" + _envelope(_json(event))).json()["accepted"] == 1


# --- Oversized bodies: 413, counted on the bytes received ------------------------------------


def _oversized_envelope(size: int) -> bytes:
    return _envelope(_json(wire_event(error_message="x" * size)))


@pytest.mark.usefixtures("unchanged")
def test_body_over_the_limit_is_413(corpus: Corpus) -> None:
    assert_clear_refusal(corpus.checkin(_oversized_envelope(LIMIT)), 413)


@pytest.mark.usefixtures("unchanged")
def test_chunked_body_over_the_limit_is_413(corpus: Corpus) -> None:
    body = _oversized_envelope(3 * LIMIT)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = corpus.client.post(corpus.checkin_url, content=chunks(), headers=corpus.headers())
    assert_clear_refusal(response, 413)


@pytest.mark.usefixtures("unchanged")
def test_oversized_registration_is_413(corpus: Corpus) -> None:
    body = _json(registration(metadata={"x": "y" * LIMIT}))
    assert_clear_refusal(corpus.register(body), 413)


# --- Malformed registrations: 422, no agent created ------------------------------------------

MALFORMED_REGISTRATIONS = [
    pytest.param(b"", id="empty-body"),
    pytest.param(b"[]", id="json-array"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b'"web-01"', id="json-string"),
    pytest.param(b'{"hostname": "web-01"', id="truncated-json"),
    pytest.param(b'{"hostname": "\xff"}', id="invalid-utf8"),
    pytest.param(b'{"hostname": NaN}', id="nan-hostname"),
    pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, id="nested-100k-levels"),
    pytest.param(_json(registration(hostname="")), id="empty-hostname"),
    pytest.param(_json(registration(hostname="h" * 256)), id="hostname-too-long"),
    pytest.param(_json(registration(hostname=None)), id="hostname-null"),
    pytest.param(_json(registration(hostname=["web-01"])), id="hostname-array"),
    pytest.param(_json(registration(os_type=7)), id="os-type-number"),
    pytest.param(_json(registration(agent_version={"v": 1})), id="agent-version-object"),
    pytest.param(_json(registration(machine_id=2**70)), id="machine-id-huge-int"),
    pytest.param(_json(registration(metadata="x")), id="metadata-string"),
    pytest.param(_json(registration(metadata=_nested(9))), id="metadata-9-levels"),
    pytest.param(_json(registration(metadata={"x": "y" * 10_000})), id="metadata-over-8-kib"),
    pytest.param(
        _json(registration())[:-1] + b', "metadata": {"n": NaN}}',
        id="metadata-nan",
    ),
    pytest.param(_json(registration(agent_token="rfa_mine")), id="unknown-field"),
    pytest.param(_json({"hostname": "web-01"}), id="missing-fields"),
]


@pytest.mark.parametrize("body", MALFORMED_REGISTRATIONS)
@pytest.mark.usefixtures("unchanged")
def test_malformed_registration_is_422_and_creates_no_agent(corpus: Corpus, body: bytes) -> None:
    assert_clear_refusal(corpus.register(body), 422)


@pytest.mark.usefixtures("unchanged")
def test_registration_as_a_form_is_422(corpus: Corpus) -> None:
    body = b"hostname=web-01&os_type=linux&agent_version=1"
    response = corpus.register(body, content_type="application/x-www-form-urlencoded")
    assert_clear_refusal(response, 422)


# --- Framing through a real server: chunked bodies and lying Content-Length --------------


@dataclass
class LiveServer:
    port: int
    corpus: Corpus

    def exchange(
        self, head: str, body: bytes, *, then_close: bool = False, timeout: float = 10.0
    ) -> http.client.HTTPResponse | None:
        """Send raw bytes and read the first response; None when the server sends none."""
        request = (
            f"POST {self.corpus.checkin_url} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.corpus.agent_token}\r\n"
            f"Content-Type: application/json\r\n{head}\r\n"
        ).encode() + body
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        with connection:
            connection.sendall(request)
            if then_close:
                connection.shutdown(socket.SHUT_WR)
            response = http.client.HTTPResponse(connection)
            try:
                response.begin()
            except (http.client.RemoteDisconnected, ConnectionResetError, TimeoutError):
                return None
            response.read()
            return response


@pytest.fixture(scope="module")
def live_server(corpus: Corpus) -> Iterator[LiveServer]:
    """uvicorn on a free port of 127.0.0.1, in a thread, on the corpus database."""
    app = create_app(settings=SETTINGS, engine=corpus.engine)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield LiveServer(sock.getsockname()[1], corpus)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _assert_json_answer(response: http.client.HTTPResponse | None, status: int) -> None:
    assert response is not None
    assert response.status == status
    assert response.getheader("content-type", "").startswith("application/json")


def test_chunked_body_without_content_length_is_read_whole_and_stored(
    live_server: LiveServer,
) -> None:
    event = wire_event()
    body = _envelope(_json(event))
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )

    response = live_server.exchange("Transfer-Encoding: chunked\r\n", chunks + b"0\r\n\r\n")

    _assert_json_answer(response, 200)
    assert live_server.corpus.event_row(event["event_id"])["event_id"] == uuid.UUID(
        event["event_id"]
    )


@pytest.mark.usefixtures("unchanged")
def test_chunked_body_over_the_limit_is_413_through_the_server(live_server: LiveServer) -> None:
    piece = b" " * (256 * 1024)

    def endless() -> Iterator[bytes]:
        yield b'{"agent_version": "0.2.0", "events": []'
        for _ in range(4 * LIMIT // len(piece)):
            yield piece
        yield b"}"

    response = httpx.post(
        f"http://127.0.0.1:{live_server.port}{live_server.corpus.checkin_url}",
        content=endless(),
        headers=live_server.corpus.headers(),
        timeout=10,
    )
    assert_clear_refusal(response, 413)


@pytest.mark.usefixtures("unchanged")
def test_content_length_smaller_than_the_body_reads_only_the_declared_bytes(
    live_server: LiveServer,
) -> None:
    body = _envelope(_json(wire_event()))
    declared = len(body) // 2

    response = live_server.exchange(f"Content-Length: {declared}\r\n", body[:declared])

    _assert_json_answer(response, 422)


@pytest.mark.usefixtures("unchanged")
def test_content_length_larger_than_the_body_stores_nothing_and_sends_no_5xx(
    live_server: LiveServer,
) -> None:
    body = _envelope(_json(wire_event()))

    response = live_server.exchange(
        f"Content-Length: {len(body) + 1000}\r\n", body, then_close=True, timeout=5
    )

    # The client gave up before sending what it promised: there is no one left to answer.
    assert response is None or 400 <= response.status < 500
    health = httpx.get(f"http://127.0.0.1:{live_server.port}/healthz", timeout=5)
    assert health.status_code == 200


@pytest.mark.usefixtures("unchanged")
def test_declared_content_length_over_the_limit_is_413_before_reading(
    live_server: LiveServer,
) -> None:
    response = live_server.exchange("Content-Length: 10737418240\r\n", b"{}")
    _assert_json_answer(response, 413)


@pytest.mark.usefixtures("unchanged")
def test_content_length_and_chunked_together_are_refused_by_the_server(
    live_server: LiveServer,
) -> None:
    body = _envelope(_json(wire_event()))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    # Request smuggling: the HTTP server refuses the ambiguity before the app sees it.
    response = live_server.exchange("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", chunked)
    assert response is not None
    assert response.status == 400


# --- Memory stays bounded -------------------------------------------------------------------


def _traced_peak(burst: Callable[[], None]) -> tuple[int, int]:
    """(peak, retained) bytes of Python memory allocated during `burst`, server included.

    The server finishes a request, freeing what it parsed, after the client has its answer:
    retained is the least measured over the next second. A leak stays the whole second.
    """
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst()
        peak = tracemalloc.get_traced_memory()[1]
        retained = peak
        for _ in range(50):
            # Failed requests leave reference cycles (exception, traceback, frame) to collect.
            gc.collect()
            retained = min(retained, tracemalloc.get_traced_memory()[0])
            time.sleep(0.02)
    finally:
        tracemalloc.stop()
    return peak - before, retained - before


@pytest.mark.usefixtures("unchanged")
def test_burst_of_oversized_chunked_bodies_keeps_server_memory_bounded(
    live_server: LiveServer,
) -> None:
    url = f"http://127.0.0.1:{live_server.port}{live_server.corpus.checkin_url}"
    piece = b"x" * (512 * 1024)

    def one_request(_: int) -> int:
        def body() -> Iterator[bytes]:
            for _ in range(32 * MiB // len(piece)):
                yield piece

        response = httpx.post(url, content=body(), headers=live_server.corpus.headers(), timeout=30)
        return response.status_code

    def burst() -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(one_request, range(8))) == [413] * 8

    peak, retained = _traced_peak(burst)

    # 256 MiB were offered, 32 MiB per request; each of the 4 concurrent requests may hold
    # up to the 2 MiB limit (about 11 MiB in all is typical, client included).
    assert peak < 4 * LIMIT + 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert retained < 2 * MiB, f"retained {retained / MiB:.1f} MiB"


@pytest.mark.usefixtures("unchanged")
def test_body_at_the_limit_full_of_tiny_json_values_costs_bounded_memory(
    live_server: LiveServer,
) -> None:
    url = f"http://127.0.0.1:{live_server.port}{live_server.corpus.checkin_url}"
    head = b'{"agent_version": "0.2.0", "events": ['
    body = head + b"{}," * ((LIMIT - len(head) - 8) // 3) + b"{}]}"

    def request() -> None:
        response = httpx.post(url, content=body, headers=live_server.corpus.headers())
        assert response.status_code == 422

    peak, retained = _traced_peak(request)

    # Parsing 700k empty objects costs about 27 times the body (54 MiB); all of it is
    # freed afterwards.
    assert peak < 40 * LIMIT, f"peak {peak / MiB:.1f} MiB"
    assert retained < 2 * MiB, f"retained {retained / MiB:.1f} MiB"
