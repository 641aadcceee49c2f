"""The FastAPI application factory; the lifespan owns the database engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest_api.limits import BodySizeLimit
from ingest_api.routes import router
from ingest_api.runtime import Runtime
from models.database import WalCheckpoints, create_db_engine
from models.settings import Settings
from models.wire import MAX_REPORTED_ERRORS, safe_error

log = logging.getLogger(__name__)

# Failures of the database itself (unreachable, locked past the timeout, pool exhausted,
# disk full): the client did nothing wrong and should come back later.
_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


async def http_error(request: Request, exc: Exception) -> Response:
    # FastAPI answers 400 to a body it cannot decode (invalid UTF-8, nesting too deep for
    # the parser); the contract calls every malformed envelope a 422, so there is one code
    # to handle, in the documented shape.
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 400:
        error = {"type": "json_invalid", "loc": ["body"], "msg": _unparseable(exc.__cause__)}
        return JSONResponse(status_code=422, content={"detail": [error]})
    return await http_exception_handler(request, exc)  # type: ignore[arg-type]


def _unparseable(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "the body is nested too deeply to parse"
    return "the body cannot be parsed as JSON"


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without the input echoed back and with a bounded number of errors."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [safe_error(error) for error in errors[:MAX_REPORTED_ERRORS]]
    if len(errors) > MAX_REPORTED_ERRORS:
        omitted = len(errors) - MAX_REPORTED_ERRORS
        detail.append({"type": "too_many_errors", "loc": [], "msg": f"{omitted} more not shown"})
    if not _declares_json(request.headers.get("content-type")):
        # FastAPI only parses a body declared as JSON; otherwise its complaint ("should be
        # a valid dictionary") hides the actual mistake.
        for error in detail:
            if error["loc"] == ["body"]:
                error["msg"] = "the body must be a JSON object sent as application/json"
    return JSONResponse(status_code=422, content={"detail": detail})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not the client's doing: the server logs the traceback, the client gets JSON
    # that says nothing of the code or the SQL behind it.
    return JSONResponse(status_code=500, content={"detail": "internal server error"})


def _declares_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the API. Tests pass their own engine; otherwise one is made from settings."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        active = engine if engine is not None else create_db_engine(settings=settings)
        runtime = app.state.runtime = Runtime.build(settings, active)
        runtime.checkin_writer.start()
        checkpoints = WalCheckpoints(active)
        checkpoints.start()
        try:
            yield
        finally:
            runtime.checkin_writer.stop()
            checkpoints.stop()
            if owned:
                active.dispose()

    app = FastAPI(
        title="RedFlag migration reporting: ingest API",
        version="1",
        description="Agents enrol, then check in with batches of migration and update events.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full for the operator; the client gets no SQL and no traceback.
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "database unavailable, retry later"},
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, internal_error)
    for exc_class in _UNAVAILABLE:
        app.add_exception_handler(exc_class, database_unavailable)
    return app
