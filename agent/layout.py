"""Every path the agent uses, resolved under one root so a whole host can live in a sandbox."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The agent's own reporting state (identity, spool) lives in its own directory, which the
# migration neither inventories nor backs up nor rolls back: a rollback must never undo
# the report of the failure that caused it.
REPORTING_DIRNAME = "reporting"
BACKUPS_DIRNAME = "migration_backups"
SPOOL_FILENAME = "spool.sqlite3"
IDENTITY_FILENAME = "identity.json"


class RootError(ValueError):
    """The --root directory is unusable."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The host's file layout, legacy and current, under `root` (the real `/` in production)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] = "/") -> Layout:
        """A layout rooted at an existing directory; symlinks in the root path are resolved."""
        path = Path(root)
        if not path.is_dir():
            raise RootError(f"--root {os.fspath(root)!r} is not an existing directory")
        return cls(path.resolve())

    def path(self, logical: str) -> Path:
        """The real location of an absolute host path such as `/etc/aggregator`."""
        relative = PurePosixPath(logical).relative_to("/")
        if ".." in relative.parts:
            raise ValueError(f"{logical!r} would leave the root")
        return self.root.joinpath(*relative.parts)

    def logical(self, path: Path) -> str:
        """The host path of a real location, as an admin of the host would name it."""
        relative = path.relative_to(self.root)
        return "/" + relative.as_posix() if relative.parts else "/"

    def contains(self, path: Path) -> bool:
        """Whether a real path (symlinks resolved) stays under the root."""
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    # Legacy layout (agent 0.1.18 and earlier).
    @property
    def legacy_config_dir(self) -> Path:
        return self.path("/etc/aggregator")

    @property
    def legacy_config(self) -> Path:
        return self.legacy_config_dir / "config.json"

    @property
    def legacy_state_dir(self) -> Path:
        return self.path("/var/lib/aggregator")

    # Current layout.
    @property
    def config_dir(self) -> Path:
        return self.path("/etc/redflag/agent")

    @property
    def config(self) -> Path:
        return self.config_dir / "config.json"

    @property
    def data_dir(self) -> Path:
        return self.path("/var/lib/redflag/agent")

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / BACKUPS_DIRNAME

    @property
    def reporting_dir(self) -> Path:
        return self.data_dir / REPORTING_DIRNAME

    @property
    def identity_file(self) -> Path:
        return self.reporting_dir / IDENTITY_FILENAME

    def fallback_spool_dirs(self, uid: int | None = None) -> tuple[Path, ...]:
        """Where the spool goes when the reporting directory cannot be written, in order.

        Per user, so that one user's directory in a world-writable place can never be
        pre-created by another to capture or forge reports.
        """
        uid = os.geteuid() if uid is None else uid
        return (
            self.path(f"/var/tmp/redflag-agent-{uid}"),
            self.path(f"/tmp/redflag-agent-{uid}"),
        )

    def fallback_spool_parents(self) -> tuple[Path, ...]:
        return (self.path("/var/tmp"), self.path("/tmp"))

    # Host facts read for system information; under the root so that each sandboxed host
    # of a demo fleet can carry its own name and identity.
    @property
    def machine_id_file(self) -> Path:
        return self.path("/etc/machine-id")

    @property
    def os_release_file(self) -> Path:
        return self.path("/etc/os-release")

    @property
    def hostname_file(self) -> Path:
        return self.path("/etc/hostname")
