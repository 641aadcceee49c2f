"""The FastAPI application factory; the lifespan owns the database engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest_api.limits import BodySizeLimit
from ingest_api.routes import router
from ingest_api.runtime import Runtime
from models.database import create_db_engine
from models.settings import Settings

log = logging.getLogger(__name__)

# Failures of the database itself (unreachable, locked past the timeout, pool exhausted,
# disk full): the client did nothing wrong and should come back later.
_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the API. Tests pass their own engine; otherwise one is made from settings."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        active = engine if engine is not None else create_db_engine(settings=settings)
        app.state.runtime = Runtime.build(settings, active)
        try:
            yield
        finally:
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

    async def http_error(request: Request, exc: Exception) -> Response:
        # FastAPI answers 400 to a body it cannot decode (invalid UTF-8, broken nesting);
        # the contract calls every malformed envelope a 422, so there is one code to handle.
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 400:
            return JSONResponse(
                status_code=422, content={"detail": f"malformed request body: {exc.detail}"}
            )
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]

    app.add_exception_handler(StarletteHTTPException, http_error)
    for exc_class in _UNAVAILABLE:
        app.add_exception_handler(exc_class, database_unavailable)
    return app
