"""The HTTP side of the v1 contract: one call per endpoint, each outcome a typed result or error.

The caller decides what to retry; this module only says which kind of failure it was,
after the rule admins expect: retry on network errors, 429 and 5xx, never on 413 or any
other 4xx.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pydantic

from agent import AGENT_VERSION
from models.wire import CheckinResponse, RegistrationRequest, RegistrationResponse

DEFAULT_TIMEOUT_SECONDS = 30.0
# A 429 without Retry-After means "wait a minute", as everywhere else.
DEFAULT_429_RETRY_AFTER = 60.0
# A Retry-After beyond this is treated as this: a typo on the server must not park the
# agent for a week.
MAX_RETRY_AFTER = 3600.0
_DETAIL_CHARS = 300


class DeliveryError(Exception):
    """The server could not be reached or did not take the request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(DeliveryError):
    """Worth trying again later: network trouble, 429, 5xx. `retry_after` is in seconds."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PayloadTooLargeError(DeliveryError):
    """413: the request must be made smaller, never simply repeated."""


class AuthenticationError(DeliveryError):
    """401/403: the token is missing, wrong, revoked or belongs to another agent."""


class RequestRejectedError(DeliveryError):
    """Any other 4xx (or an unexpected answer): repeating the same request cannot help."""


def normalize_server_url(url: str) -> str:
    """The server's base URL without a trailing slash; ValueError names what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"server URL {url!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host name")
    if parts.username or parts.password:
        raise ValueError("server URL must not carry credentials; the agent uses tokens")
    if parts.query or parts.fragment:
        raise ValueError(f"server URL {url!r} must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"server URL {url!r} has an invalid port") from None
    return url.strip().rstrip("/")


def parse_retry_after(value: str | None, *, now: Callable[[], datetime]) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), capped."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now()).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _detail(response: httpx.Response) -> str:
    """The server's `detail`, on one line and short; never a page of HTML."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        detail = "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    text = str(detail) if detail else (response.reason_phrase or "no detail")
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


class IngestClient:
    """Talks to one ingest API; pass `http` to reuse a client (a FastAPI TestClient too)."""

    def __init__(
        self,
        server_url: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.server_url = normalize_server_url(server_url)
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._now = now

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, *, token: str, content: bytes) -> httpx.Response:
        url = f"{self.server_url}{path}"
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "User-Agent": f"redflag-agent/{AGENT_VERSION}",
        }
        try:
            return self._http.post(url, content=content, headers=headers)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise RetryableError(f"cannot reach {self.server_url}: {reason}") from exc

    def _raise_for(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        detail = _detail(response)
        message = f"{what}: HTTP {status} from {self.server_url}: {detail}"
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._now)
            raise RetryableError(
                message,
                status=status,
                retry_after=DEFAULT_429_RETRY_AFTER if retry_after is None else retry_after,
            )
        if status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._now)
            raise RetryableError(message, status=status, retry_after=retry_after)
        if status == 413:
            raise PayloadTooLargeError(message, status=status)
        if status in (401, 403):
            raise AuthenticationError(message, status=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "elsewhere")
            raise RequestRejectedError(
                f"{what}: the server redirects to {location}; use that URL with --server",
                status=status,
            )
        raise RequestRejectedError(message, status=status)

    def register(self, enrollment_token: str, request: RegistrationRequest) -> RegistrationResponse:
        """Enrol this host; the enrolment token is spent on success."""
        body = request.model_dump_json(exclude_none=True).encode()
        response = self._post("/api/v1/agents/register", token=enrollment_token, content=body)
        if response.status_code not in (200, 201):
            self._raise_for(response, "registration refused")
        try:
            return RegistrationResponse.model_validate_json(response.content)
        except pydantic.ValidationError:
            raise RequestRejectedError(
                f"registration: {self.server_url} answered {response.status_code} with a body "
                "that is not a registration; is this the RedFlag ingest API?",
                status=response.status_code,
            ) from None

    def checkin(self, agent_id: UUID, agent_token: str, body: bytes) -> CheckinResponse:
        """Send one check-in envelope (already JSON) and return the server's verdict."""
        response = self._post(f"/api/v1/agents/{agent_id}/checkin", token=agent_token, content=body)
        if response.status_code != 200:
            self._raise_for(response, "check-in failed")
        try:
            return CheckinResponse.model_validate_json(response.content)
        except pydantic.ValidationError:
            # Something between agent and server (a proxy's error page) answered; the
            # server may not have seen the events, and resending them is safe.
            raise RetryableError(
                f"check-in: {self.server_url} answered 200 with an unexpected body",
                status=200,
            ) from None
