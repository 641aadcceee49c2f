"""Enrolment and agent identity: tokens, registration, revocation.

Functions take a connection and keyword arguments and never see a request, so the HTTP
routes and the CLI share them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from models.tables import AGENT_TABLE as AGENTS
from models.tables import ENROLLMENT_TOKEN_TABLE as ENROLLMENT_TOKENS
from models.wire import RegistrationRequest

AGENT_TOKEN_PREFIX = "rfa_"
ENROLLMENT_TOKEN_PREFIX = "rfe_"


class Unauthorized(Exception):
    """The bearer token is missing, unknown, expired, spent or revoked."""


class Forbidden(Exception):
    """The token is valid but belongs to another agent."""


def new_token(prefix: str) -> str:
    """A 256-bit random secret; the prefix lets secret scanners recognise a leaked one."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are high-entropy, so a plain SHA-256 is enough to keep them unusable at rest."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class CreatedEnrollment:
    id: UUID
    token: str
    expires_at: datetime
    max_uses: int


def create_enrollment_token(
    connection: Connection, *, uses: int, ttl: timedelta, note: str = ""
) -> CreatedEnrollment:
    """Store a new enrolment token's hash; the token itself is returned once, never stored."""
    if uses < 1:
        raise ValueError("an enrolment token needs at least one use")
    if ttl <= timedelta(0):
        raise ValueError("an enrolment token needs a positive lifetime")
    token = new_token(ENROLLMENT_TOKEN_PREFIX)
    now = datetime.now(UTC)
    token_id = uuid4()
    connection.execute(
        sa.insert(ENROLLMENT_TOKENS).values(
            id=token_id,
            token_hash=hash_token(token),
            note=note,
            created_at=now,
            expires_at=now + ttl,
            max_uses=uses,
            use_count=0,
        )
    )
    return CreatedEnrollment(id=token_id, token=token, expires_at=now + ttl, max_uses=uses)


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    agent_id: UUID
    agent_token: str


def register_agent(
    connection: Connection, *, enrollment_token: str, request: RegistrationRequest
) -> RegisteredAgent:
    """Spend one use of an enrolment token and create the agent with its own token."""
    now = datetime.now(UTC)
    query = sa.select(ENROLLMENT_TOKENS).where(
        ENROLLMENT_TOKENS.c.token_hash == hash_token(enrollment_token)
    )
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    enrollment = connection.execute(query).mappings().one_or_none()
    if (
        enrollment is None
        or enrollment["revoked_at"] is not None
        or enrollment["expires_at"] <= now
        or enrollment["use_count"] >= enrollment["max_uses"]
    ):
        # One answer for every reason: a caller probing tokens learns nothing.
        raise Unauthorized("enrolment token is unknown, expired, spent or revoked")
    connection.execute(
        sa.update(ENROLLMENT_TOKENS)
        .where(ENROLLMENT_TOKENS.c.id == enrollment["id"])
        .values(use_count=ENROLLMENT_TOKENS.c.use_count + 1)
    )
    token = new_token(AGENT_TOKEN_PREFIX)
    agent_id = uuid4()
    connection.execute(
        sa.insert(AGENTS).values(
            id=agent_id,
            hostname=request.hostname,
            os_type=request.os_type,
            os_version=request.os_version,
            os_architecture=request.os_architecture,
            agent_version=request.agent_version,
            machine_id=request.machine_id,
            host_metadata=request.metadata or {},
            token_hash=hash_token(token),
            enrollment_token_id=enrollment["id"],
            revoked=False,
            created_at=now,
            system_info={},
            ever_migrated=False,
        )
    )
    return RegisteredAgent(agent_id=agent_id, agent_token=token)


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """The live agent an agent token belongs to (neither ever changes for a token)."""

    agent_id: UUID
    hostname: str


# Built once: every check-in runs it, and building a statement costs more than running it.
_AGENT_BY_TOKEN = sa.select(
    AGENTS.c.id, AGENTS.c.hostname, AGENTS.c.token_hash, AGENTS.c.revoked
).where(AGENTS.c.token_hash == sa.bindparam("token_hash"))


def token_owner(connection: Connection, *, token_hash: str) -> TokenOwner:
    """The live agent whose token has this hash; Unauthorized if unknown or revoked."""
    row = connection.execute(_AGENT_BY_TOKEN, {"token_hash": token_hash}).one_or_none()
    if row is None or not hmac.compare_digest(row.token_hash, token_hash) or row.revoked:
        raise Unauthorized("agent token is unknown or revoked")
    return TokenOwner(row.id, row.hostname)


def agent_for_token(connection: Connection, *, token_hash: str) -> UUID:
    """The id of `token_owner`."""
    return token_owner(connection, token_hash=token_hash).agent_id


def authenticate_agent(connection: Connection, *, token: str | None, agent_id: UUID) -> None:
    """Check that the token is a live agent token for exactly this agent."""
    if not token:
        raise Unauthorized("missing bearer token")
    if agent_for_token(connection, token_hash=hash_token(token)) != agent_id:
        raise Forbidden("this token belongs to another agent")


def list_agents(connection: Connection) -> list[dict[str, Any]]:
    """Every agent with its identity, state and last check-in, newest first."""
    rows = connection.execute(
        sa.select(
            AGENTS.c.id,
            AGENTS.c.hostname,
            AGENTS.c.os_type,
            AGENTS.c.agent_version,
            AGENTS.c.migration_state,
            AGENTS.c.last_seen_at,
            AGENTS.c.revoked,
        ).order_by(AGENTS.c.created_at.desc(), AGENTS.c.id)
    )
    return [dict(row) for row in rows.mappings()]


def revoke_agent(connection: Connection, *, agent_id: UUID) -> bool:
    """Revoke an agent's token (keeping the first revocation time); False if no such agent."""
    exists = connection.execute(sa.select(AGENTS.c.id).where(AGENTS.c.id == agent_id)).first()
    if exists is None:
        return False
    connection.execute(
        sa.update(AGENTS)
        .where(AGENTS.c.id == agent_id, AGENTS.c.revoked.is_(False))
        .values(revoked=True, revoked_at=datetime.now(UTC))
    )
    return True
