"""The HTTP client: which answers are retryable, Retry-After, and the request it sends."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from agent.client import (
    AuthenticationError,
    IngestClient,
    PayloadTooLargeError,
    RequestRejectedError,
    RetryableError,
    normalize_server_url,
    parse_retry_after,
)
from models.wire import RegistrationRequest

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
AGENT_ID = uuid.UUID("8d5c2f0e-8f4e-4b8b-9b7e-1f2f4b5a6c7d")


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> IngestClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return IngestClient("https://redflag.example.org/", http=http, now=lambda: NOW)


def answer(status: int, body: object = None, **headers: str) -> IngestClient:
    return client_for(lambda request: httpx.Response(status, json=body, headers=headers))


def checkin_body() -> dict[str, object]:
    return {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [],
        "check_in_interval_seconds": 300,
        "server_time": NOW.isoformat(),
    }


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("99999999", 3600.0),
        ("Sun, 01 Jun 2025 12:00:30 GMT", 30.0),
        ("Sun, 01 Jun 2025 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_accepts_seconds_or_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, now=lambda: NOW) == seconds


def test_checkin_success_returns_the_server_verdict() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=checkin_body())

    response = client_for(handler).checkin(AGENT_ID, "tok", b'{"events":[]}')

    assert response.accepted == 1
    [request] = seen
    assert request.url == f"https://redflag.example.org/api/v1/agents/{AGENT_ID}/checkin"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "redflag-agent/0.2.0"


def test_429_without_retry_after_means_wait_a_minute() -> None:
    with pytest.raises(RetryableError) as caught:
        answer(429, {"detail": "slow down"}).checkin(AGENT_ID, "t", b"{}")
    assert caught.value.retry_after == 60.0
    assert caught.value.status == 429


def test_429_with_retry_after_is_honoured() -> None:
    with pytest.raises(RetryableError) as caught:
        answer(429, {"detail": "slow down"}, **{"Retry-After": "12"}).checkin(AGENT_ID, "t", b"{}")
    assert caught.value.retry_after == 12.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retryable(status: int) -> None:
    with pytest.raises(RetryableError) as caught:
        answer(status, {"detail": "database unavailable"}).checkin(AGENT_ID, "t", b"{}")
    assert caught.value.retry_after is None
    assert f"HTTP {status}" in str(caught.value)


def test_503_with_retry_after_carries_it() -> None:
    with pytest.raises(RetryableError) as caught:
        answer(503, {"detail": "down"}, **{"Retry-After": "5"}).checkin(AGENT_ID, "t", b"{}")
    assert caught.value.retry_after == 5.0


def test_network_errors_are_retryable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(RetryableError, match=re.escape("cannot reach https://redflag.example.org")):
        client_for(refuse).checkin(AGENT_ID, "t", b"{}")


def test_413_asks_for_a_smaller_request() -> None:
    with pytest.raises(PayloadTooLargeError):
        answer(413, {"detail": "request body over 2097152 bytes"}).checkin(AGENT_ID, "t", b"{}")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retryable(status: int) -> None:
    with pytest.raises(AuthenticationError, match="revoked"):
        answer(status, {"detail": "token revoked"}).checkin(AGENT_ID, "t", b"{}")


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_client_errors_are_not_retryable(status: int) -> None:
    with pytest.raises(RequestRejectedError):
        answer(status, {"detail": [{"msg": "field required"}]}).checkin(AGENT_ID, "t", b"{}")


def test_redirect_is_reported_with_its_target() -> None:
    client = answer(308, None, Location="https://new.example.org/api/v1/agents/x/checkin")
    with pytest.raises(
        RequestRejectedError, match=re.escape("redirects to https://new.example.org")
    ):
        client.checkin(AGENT_ID, "t", b"{}")


def test_error_detail_is_one_short_line() -> None:
    html = "<html>\n<body>" + "Bad gateway " * 100 + "</body></html>"
    client = client_for(lambda request: httpx.Response(502, text=html))
    with pytest.raises(RetryableError) as caught:
        client.checkin(AGENT_ID, "t", b"{}")
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 400


def test_unexpected_success_body_is_retryable() -> None:
    client = client_for(lambda request: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(RetryableError, match="unexpected body"):
        client.checkin(AGENT_ID, "t", b"{}")


def test_register_sends_the_enrolment_token_and_host_facts() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json={
                "agent_id": str(AGENT_ID),
                "agent_token": "agent-secret",
                "check_in_interval_seconds": 120,
            },
        )

    request = RegistrationRequest(
        hostname="web-01",
        os_type="linux",
        os_version="Debian GNU/Linux 12",
        os_architecture="x86_64",
        agent_version="0.2.0",
    )
    response = client_for(handler).register("enrol-secret", request)

    assert response.agent_id == AGENT_ID
    assert seen[0].url.path == "/api/v1/agents/register"
    assert seen[0].headers["Authorization"] == "Bearer enrol-secret"
    assert json.loads(seen[0].content) == {
        "hostname": "web-01",
        "os_type": "linux",
        "os_version": "Debian GNU/Linux 12",
        "os_architecture": "x86_64",
        "agent_version": "0.2.0",
    }


def test_register_refused_enrolment_token_is_an_auth_error() -> None:
    request = RegistrationRequest(
        hostname="h", os_type="linux", os_version="", os_architecture="", agent_version="0.2.0"
    )
    with pytest.raises(AuthenticationError, match="HTTP 401"):
        answer(401, {"detail": "enrolment token expired"}).register("old", request)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://redflag.example.org/", "https://redflag.example.org"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        (" https://x.example.org/base/ ", "https://x.example.org/base"),
    ],
)
def test_server_url_is_normalised(url: str, expected: str) -> None:
    assert normalize_server_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redflag.example.org", "must start with http"),
        ("ftp://redflag.example.org", "must start with http"),
        ("https://", "has no host name"),
        ("https://user:pw@redflag.example.org", "must not carry credentials"),
        ("https://redflag.example.org/?x=1", "query or fragment"),
        ("https://redflag.example.org:99999", "invalid port"),
    ],
)
def test_bad_server_url_is_refused_with_a_reason(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        normalize_server_url(url)
