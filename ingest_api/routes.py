"""The v1 HTTP routes: health, agent registration and check-ins carrying events."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import pydantic_core
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter, ValidationError

from ingest_api.runtime import Runtime
from ingest_api.service import (
    TokenOwner,
    Unauthorized,
    hash_token,
    register_agent,
    token_owner,
)
from models.plain_checkin import PlainCheckin, parse_plain_checkin
from models.store import Checkin, ConcurrentInsert, InactiveAgent, prepare_rows
from models.wire import (
    CheckinRequest,
    CheckinResponse,
    Event,
    RegistrationRequest,
    RegistrationResponse,
    RejectedEvent,
    ReportedEvent,
    describe_validation_error,
)


class ErrorDetail(BaseModel):
    detail: str


class Health(BaseModel):
    status: str


def _error(description: str, *, retry_after: bool = False, bearer: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if retry_after:
        headers["Retry-After"] = {
            "description": "seconds to wait before retrying",
            "schema": {"type": "integer"},
        }
    if bearer:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
    return {"model": ErrorDetail, "description": description, "headers": headers}


UNAUTHORIZED = _error("missing, unknown, expired, spent or revoked bearer token", bearer=True)
TOO_LARGE = _error("request body over the size limit")
UNAVAILABLE = _error("database unavailable; retry after the given delay", retry_after=True)


def parse_json_body(body: bytes) -> Any:
    """A request body as JSON, parsed by pydantic-core's parser when it can.

    It is about twice as fast as the standard library on check-in bodies. Whatever it
    refuses (lone surrogate escapes, a byte-order mark, very deep nesting) goes to the
    standard library, so every body gets the value, or the error, it always got.
    """
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return json.loads(body)


class _FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


class FastJSONRoute(APIRoute):
    """A route whose JSON body is read by `parse_json_body`, and which may answer requests
    of the most common kind itself (`answer_plain_request`); everything else is FastAPI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            request = _FastJSONRequest(request.scope, request.receive)
            response = await self.answer_plain_request(request)
            return response if response is not None else await handler(request)

        return route_handler

    async def answer_plain_request(self, request: Request) -> Response | None:
        """The response to a request this route answers without FastAPI; None for the rest."""
        return None


router = APIRouter(route_class=FastJSONRoute)
bearer_scheme = HTTPBearer(auto_error=False, description="agent or enrolment token")


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain def dependency in its thread pool, a hop that costs more
    # than this attribute lookup.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


async def authenticated_agent(agent_id: UUID, credentials: BearerDep, runtime: RuntimeDep) -> UUID:
    """The agent id from the path, once the bearer token is proven to be that agent's.

    A token proven in the last few seconds (`auth_cache_seconds`) is taken from the
    runtime's cache, on the event loop, without a thread hop or a query; revocation is
    checked again inside the check-in's write transaction anyway.
    """
    if credentials is None or not credentials.credentials:
        raise _unauthorized("missing bearer token")
    try:
        owner = await proven_owner(runtime, hash_token(credentials.credentials))
    except Unauthorized as exc:
        raise _unauthorized(str(exc)) from None
    if owner.agent_id != agent_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this token belongs to another agent")
    return agent_id


async def proven_owner(runtime: Runtime, token_hash: str) -> TokenOwner:
    """The owner of a token, from the cache or looked up (in the thread pool) and cached;
    raises Unauthorized for a token that proves nothing."""
    owner = runtime.agent_tokens.get(token_hash)
    if owner is None:
        owner = await run_in_threadpool(_token_owner, runtime, token_hash)
        runtime.agent_tokens.put(token_hash, owner)
    return owner


def _token_owner(runtime: Runtime, token_hash: str) -> TokenOwner:
    with runtime.engine.connect() as connection:
        return token_owner(connection, token_hash=token_hash)


AgentDep = Annotated[UUID, Depends(authenticated_agent)]


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: _error("the database does not answer")},
)
def healthz(runtime: RuntimeDep) -> Health:
    """200 when the database answers, else 503."""
    with runtime.engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
    return Health(status="ok")


@router.post(
    "/api/v1/agents/register",
    status_code=status.HTTP_201_CREATED,
    response_model=RegistrationResponse,
    responses={401: UNAUTHORIZED, 413: TOO_LARGE, 503: UNAVAILABLE},
)
def register(
    body: RegistrationRequest, credentials: BearerDep, runtime: RuntimeDep
) -> RegistrationResponse:
    """Enrol a host with an enrolment token; returns its agent id and agent token."""
    if credentials is None:
        raise _unauthorized("missing bearer enrolment token")
    try:
        with runtime.write() as connection:
            agent = register_agent(
                connection, enrollment_token=credentials.credentials, request=body
            )
    except Unauthorized as exc:
        raise _unauthorized(str(exc)) from None
    return RegistrationResponse(
        agent_id=agent.agent_id,
        agent_token=agent.agent_token,
        check_in_interval_seconds=runtime.settings.check_in_interval_seconds,
    )


class CheckinRoute(FastJSONRoute):
    """The check-in route. It answers the common check-in itself: a valid token of the agent
    in the path (from `authenticated_agent`'s cache, or looked up and cached as it does),
    and a JSON body whose every event is valid, checked straight from its bytes
    (`parse_plain_checkin`). That skips FastAPI's dependency and body handling, which cost
    more than storing the events. Any other request (a bad or foreign token, an odd body, a
    bad event) goes through FastAPI, which answers it as the contract says; both store with
    `store_checkin`.
    """

    async def answer_plain_request(self, request: Request) -> Response | None:
        runtime: Runtime = request.app.state.runtime
        agent_id = _canonical_uuid(request.path_params.get("agent_id", ""))
        token = _bearer_token(request.headers.get("authorization"))
        if agent_id is None or token is None:
            return None
        try:
            # Looked up here too: an agent checks in less often than the cache keeps a
            # token, so most check-ins of a fleet find theirs missing.
            owner = await proven_owner(runtime, hash_token(token))
        except Unauthorized:
            return None  # FastAPI's handling answers it with its 401
        if owner.agent_id != agent_id:
            return None
        if request.headers.get("content-type", "").partition(";")[0].strip() != "application/json":
            return None
        checkin = parse_plain_checkin(await request.body())
        if checkin is None:
            return None
        result = await store_checkin(
            runtime, agent_id, checkin, checkin.events, [], hostname=owner.hostname
        )
        return Response(result.model_dump_json(), media_type="application/json")


def _canonical_uuid(text: str) -> UUID | None:
    """The UUID written in its canonical form (what agents send); None for anything else."""
    try:
        value = UUID(text)
    except ValueError:
        return None
    return value if str(value) == text.lower() else None


def _bearer_token(authorization: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header, as HTTPBearer reads them."""
    scheme, _, token = (authorization or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def checkin(agent_id: AgentDep, body: CheckinRequest, runtime: RuntimeDep) -> CheckinResponse:
    """Store a batch of events; bad events are listed in `rejected`, good ones are kept."""
    valid, rejected = validate_events(body.events)
    return await store_checkin(runtime, agent_id, body, valid, rejected)


# Added, not decorated: the decorators cannot choose a route's class.
router.add_api_route(
    "/api/v1/agents/{agent_id}/checkin",
    checkin,
    methods=["POST"],
    route_class_override=CheckinRoute,
    response_model=CheckinResponse,
    responses={
        401: UNAUTHORIZED,
        403: _error("the token belongs to another agent"),
        413: TOO_LARGE,
        429: _error("check-in rate exceeded; retry after the given delay", retry_after=True),
        503: UNAVAILABLE,
    },
)


async def store_checkin(
    runtime: Runtime,
    agent_id: UUID,
    envelope: CheckinRequest | PlainCheckin,
    valid: Sequence[ReportedEvent],
    rejected: list[RejectedEvent],
    *,
    hostname: str | None = None,
) -> CheckinResponse:
    """Store a proven agent's validated events, within its rate limit, and say how it went.

    Given the agent's hostname, the rows are made here, on the event loop, rather than by
    the one writer every check-in queues for (`models.store.prepare_rows`).
    """
    wait = runtime.rate_limiter.acquire(agent_id)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="check-in rate exceeded",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    received_at = datetime.now(UTC)
    prepared = None
    if hostname is not None:
        prepared = prepare_rows(
            runtime.engine.dialect,
            agent_id=agent_id,
            hostname=hostname,
            events=valid,
            received_at=received_at,
        )
    checkin = Checkin(
        agent_id, valid, received_at, envelope.agent_version, envelope.system_info, prepared
    )
    try:
        result = await runtime.checkin_writer.store(checkin)
    except InactiveAgent:
        raise _unauthorized("agent token is unknown or revoked") from None
    except ConcurrentInsert:
        # Rolled back; the retry finds the other writer's rows and counts them duplicates.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="events were being stored concurrently, retry later",
            headers={"Retry-After": str(runtime.settings.retry_after_seconds)},
        ) from None
    return CheckinResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=rejected,
        check_in_interval_seconds=runtime.settings.check_in_interval_seconds,
        server_time=received_at,
    )


_EVENT_LIST = TypeAdapter(list[Event])


def validate_events(raw_events: list[Any]) -> tuple[list[Event], list[RejectedEvent]]:
    """Validate each event on its own, so one bad event does not sink the batch."""
    try:
        # A batch without a bad event, the common case, in one call into pydantic-core.
        return _EVENT_LIST.validate_python(raw_events), []
    except ValidationError:
        pass
    valid: list[Event] = []
    rejected: list[RejectedEvent] = []
    for index, raw in enumerate(raw_events):
        try:
            valid.append(Event.model_validate(raw))
        except ValidationError as exc:
            rejected.append(
                RejectedEvent(
                    index=index, event_id=_readable_id(raw), error=describe_validation_error(exc)
                )
            )
    return valid, rejected


def _readable_id(raw: Any) -> UUID | None:
    try:
        return UUID(str(raw["event_id"]))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
