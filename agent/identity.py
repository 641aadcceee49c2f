"""The agent's registration (server URL, agent id, agent token), kept owner-only on disk."""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import UTC, datetime
from uuid import UUID

import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agent.fsutil import write_atomic
from agent.layout import Layout


class IdentityError(Exception):
    """The identity file exists but cannot be used; the message says how to fix it."""


class Identity(BaseModel):
    model_config = ConfigDict(extra="ignore")

    server_url: str
    agent_id: UUID
    agent_token: str = Field(min_length=1, repr=False)
    check_in_interval_seconds: int = Field(default=300, ge=1)
    registered_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


def load_identity(layout: Layout) -> Identity | None:
    """The stored identity, or None when this host never registered."""
    path = layout.identity_file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(
            f"cannot read {path}: {exc.strerror}; run the agent as the user that registered it"
        ) from None
    try:
        return Identity.model_validate_json(data)
    except pydantic.ValidationError:
        raise IdentityError(f"{path} is corrupt; register again with --force") from None


def prepare_identity_dir(layout: Layout) -> None:
    """Create the owner-only reporting directory and prove it can be written.

    Called before registering, so that an enrolment token is not spent on a host that
    could not keep the identity it buys.
    """
    directory = layout.reporting_dir
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    if stat.S_IMODE(os.stat(directory).st_mode) & 0o077:
        os.chmod(directory, 0o700)
    probe = directory / f".write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)


def save_identity(layout: Layout, identity: Identity) -> None:
    """Store the identity atomically, owner-only: it holds the agent token."""
    prepare_identity_dir(layout)
    write_atomic(layout.identity_file, identity.model_dump_json(indent=2).encode() + b"\n", 0o600)
