"""The durable local queue of reports: written before any network I/O, emptied only on ack.

SQLite in WAL mode with `synchronous=FULL`, so a report that was spooled survives a crash
or power loss. When the agent's own state directory cannot be written (often the very
failure being reported) the spool falls back, in order, to
`<root>/var/tmp/redflag-agent-<uid>/`, `<root>/tmp/redflag-agent-<uid>/` and finally
memory, so that the report still gets out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.layout import SPOOL_FILENAME, Layout
from models.wire import Event

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
MAX_REJECTED = 1_000
BUSY_TIMEOUT_SECONDS = 10.0
SCHEMA_VERSION = 1
_FALLBACK_PREFIX = "redflag-agent-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued_event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    queued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected_event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class SpoolKind(StrEnum):
    PRIMARY = "primary"
    FALLBACK = "fallback"
    MEMORY = "memory"


class SpoolUnavailableError(Exception):
    """A spool location that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    event_id: str
    event_type: str
    body: str


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    event_id: str
    event_type: str
    reason: str
    rejected_at: str


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    queued: int
    queued_bytes: int
    rejected: int
    dropped: int
    dropped_bytes: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_events: int = DEFAULT_MAX_EVENTS
    max_bytes: int = DEFAULT_MAX_BYTES


def _create_private_file(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it.

    The spool holds the reports, and SQLite gives its WAL files the database file's mode
    and owner. Root creating it in the service user's directory hands it to that user, so
    that one run as root does not lock the service out of its own spool.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    if os.geteuid() == 0:
        owner = os.stat(path.parent)
        if owner.st_uid != 0:
            os.chown(path, owner.st_uid, owner.st_gid)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Spool:
    """One spool database. Each public method is one transaction."""

    def __init__(
        self,
        path: Path | None,
        *,
        kind: SpoolKind,
        limits: Limits | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.kind = kind
        self.limits = limits or Limits()
        self.read_only = read_only
        if path is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        elif read_only:
            self._db = sqlite3.connect(
                f"{path.as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
        else:
            if not path.exists():
                _create_private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            self._configure()
        except BaseException:
            self._db.close()
            raise

    def _configure(self) -> None:
        db = self._db
        if self.read_only:
            db.execute("PRAGMA query_only = ON")
            return
        if self.path is not None:
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the agent goes on to send the event.
            db.execute("PRAGMA synchronous = FULL")
        with self._write() as cursor:
            # One statement at a time: executescript would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cursor.execute(statement)
            cursor.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # A real write proves the location is usable now, not at the first report.
            cursor.execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(_now()),),
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else "memory (not durable)"

    # --- queue ---------------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Queue an event durably; the oldest events go when the spool is over its bounds."""
        body = json.dumps(event.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
        with self._write() as cursor:
            self._insert(cursor, str(event.event_id), event.event_type.value, body, _now())
            self._enforce_bounds(cursor)

    @staticmethod
    def _insert(
        cursor: sqlite3.Cursor, event_id: str, event_type: str, body: str, queued_at: str
    ) -> None:
        cursor.execute(
            "INSERT OR IGNORE INTO queued_event (event_id, event_type, body, size, queued_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (event_id, event_type, body, len(body.encode("utf-8", "surrogatepass")), queued_at),
        )

    def _enforce_bounds(self, cursor: sqlite3.Cursor) -> None:
        count, size = cursor.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM queued_event"
        ).fetchone()
        dropped = dropped_bytes = 0
        while count > self.limits.max_events or size > self.limits.max_bytes:
            row = cursor.execute(
                "SELECT seq, size FROM queued_event ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            cursor.execute("DELETE FROM queued_event WHERE seq = ?", (row[0],))
            count, size = count - 1, size - row[1]
            dropped, dropped_bytes = dropped + 1, dropped_bytes + row[1]
        if dropped:
            log.warning("spool full: dropped the %d oldest events", dropped)
            self._bump(cursor, "dropped_events", dropped)
            self._bump(cursor, "dropped_bytes", dropped_bytes)

    def _bump(self, cursor: sqlite3.Cursor, key: str, amount: int) -> None:
        current = self._meta(cursor, key) or 0
        self._set_meta(cursor, key, int(current) + amount)

    def pending(self, *, limit: int, max_bytes: int) -> list[QueuedEvent]:
        """The oldest queued events, at most `limit` of them and about `max_bytes` of JSON.

        Always at least one event when any is queued, however large.
        """
        batch: list[QueuedEvent] = []
        total = 0
        rows = self._db.execute(
            "SELECT event_id, event_type, body, size FROM queued_event ORDER BY seq LIMIT ?",
            (limit,),
        )
        for event_id, event_type, body, size in rows:
            if batch and total + size > max_bytes:
                break
            batch.append(QueuedEvent(event_id, event_type, body))
            total += size
        return batch

    def acknowledge(self, event_ids: Sequence[str]) -> None:
        """The server has these events (accepted or duplicate): forget them."""
        if not event_ids:
            return
        with self._write() as cursor:
            cursor.executemany(
                "DELETE FROM queued_event WHERE event_id = ?", [(i,) for i in event_ids]
            )

    def reject(self, event_id: str, reason: str) -> None:
        """Set an event the server refused apart, with the server's reason, for `status`."""
        with self._write() as cursor:
            row = cursor.execute(
                "SELECT event_type, body FROM queued_event WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is None:
                return
            cursor.execute("DELETE FROM queued_event WHERE event_id = ?", (event_id,))
            cursor.execute(
                "INSERT OR REPLACE INTO rejected_event "
                "(event_id, event_type, body, reason, rejected_at) VALUES (?, ?, ?, ?, ?)",
                (event_id, row[0], row[1], reason, _now()),
            )
            self._trim_rejected(cursor)

    def _trim_rejected(self, cursor: sqlite3.Cursor) -> None:
        (count,) = cursor.execute("SELECT count(*) FROM rejected_event").fetchone()
        excess = count - MAX_REJECTED
        if excess > 0:
            cursor.execute(
                "DELETE FROM rejected_event WHERE seq IN "
                "(SELECT seq FROM rejected_event ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self._bump(cursor, "rejected_dropped", excess)

    def rejected(self, *, limit: int = 20) -> list[RejectedEvent]:
        rows = self._db.execute(
            "SELECT event_id, event_type, reason, rejected_at FROM rejected_event "
            "ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [RejectedEvent(*row) for row in rows]

    def counts(self) -> SpoolCounts:
        queued, queued_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM queued_event"
        ).fetchone()
        (rejected,) = self._db.execute("SELECT count(*) FROM rejected_event").fetchone()
        cursor = self._db.cursor()
        return SpoolCounts(
            queued=queued,
            queued_bytes=queued_bytes,
            rejected=rejected,
            dropped=int(self._meta(cursor, "dropped_events") or 0),
            dropped_bytes=int(self._meta(cursor, "dropped_bytes") or 0),
        )

    # --- meta ------------------------------------------------------------------------------

    @staticmethod
    def _meta(cursor: sqlite3.Cursor, key: str) -> Any:
        row = cursor.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def _set_meta(cursor: sqlite3.Cursor, key: str, value: Any) -> None:
        cursor.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def get(self, key: str) -> Any:
        return self._meta(self._db.cursor(), key)

    def put(self, key: str, value: Any) -> None:
        with self._write() as cursor:
            self._set_meta(cursor, key, value)

    # --- merging ---------------------------------------------------------------------------

    def absorb(self, other: Spool) -> int:
        """Move another spool's reports into this one; returns how many events moved.

        Copy first, commit, then delete from the other: a crash in between leaves an event
        in both, which the server's deduplication by event id makes harmless.
        """
        queued = other._db.execute(
            "SELECT event_id, event_type, body, queued_at FROM queued_event ORDER BY seq"
        ).fetchall()
        rejected = other._db.execute(
            "SELECT event_id, event_type, body, reason, rejected_at FROM rejected_event "
            "ORDER BY seq"
        ).fetchall()
        other_cursor = other._db.cursor()
        other_meta = {
            key: other._meta(other_cursor, key)
            for key in ("dropped_events", "dropped_bytes", "rejected_dropped", "last_migration")
        }
        with self._write() as cursor:
            for event_id, event_type, body, queued_at in queued:
                self._insert(cursor, event_id, event_type, body, queued_at)
            cursor.executemany(
                "INSERT OR IGNORE INTO rejected_event "
                "(event_id, event_type, body, reason, rejected_at) VALUES (?, ?, ?, ?, ?)",
                rejected,
            )
            for key in ("dropped_events", "dropped_bytes", "rejected_dropped"):
                if other_meta[key]:
                    self._bump(cursor, key, int(other_meta[key]))
            theirs = other_meta["last_migration"]
            ours = self._meta(cursor, "last_migration")
            if theirs and (not ours or str(theirs.get("at")) > str(ours.get("at"))):
                self._set_meta(cursor, "last_migration", theirs)
            self._enforce_bounds(cursor)
            self._trim_rejected(cursor)
        with other._write() as cursor:
            cursor.executemany(
                "DELETE FROM queued_event WHERE event_id = ?", [(row[0],) for row in queued]
            )
            cursor.executemany(
                "DELETE FROM rejected_event WHERE event_id = ?", [(row[0],) for row in rejected]
            )
            for key in ("dropped_events", "dropped_bytes", "rejected_dropped", "last_migration"):
                cursor.execute("DELETE FROM meta WHERE key = ?", (key,))
        return len(queued)


# --- locations -----------------------------------------------------------------------------


def _prepare_primary_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolUnavailableError(f"{path} is not a directory")


def _prepare_fallback_dir(path: Path) -> None:
    """A private directory in a world-writable place, refusing one someone else planted."""
    if not path.parent.exists():
        # /tmp and /var/tmp are sticky and world-writable on every Unix host; a sandbox
        # root may lack them.
        os.makedirs(path.parent, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(path.parent, 0o1777)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolUnavailableError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise SpoolUnavailableError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def open_spool(
    layout: Layout, *, limits: Limits | None = None, skip: set[Path] | None = None
) -> tuple[Spool, list[str]]:
    """The first usable spool: the reporting directory, then the fallbacks, then memory.

    Returns the spool and, for a fallback, why each better location was unusable.
    """
    problems: list[str] = []
    candidates = [(layout.reporting_dir, SpoolKind.PRIMARY)]
    candidates += [(path, SpoolKind.FALLBACK) for path in layout.fallback_spool_dirs()]
    for directory, kind in candidates:
        if skip and directory / SPOOL_FILENAME in skip:
            continue
        try:
            if kind is SpoolKind.PRIMARY:
                _prepare_primary_dir(directory)
            else:
                _prepare_fallback_dir(directory)
            spool = Spool(directory / SPOOL_FILENAME, kind=kind, limits=limits)
        except (OSError, sqlite3.Error, SpoolUnavailableError) as exc:
            problems.append(f"{directory}: {exc}")
            log.info("cannot use spool directory %s: %s", directory, exc)
            continue
        return spool, problems
    log.error("no spool directory is writable; reports are kept in memory only")
    return Spool(None, kind=SpoolKind.MEMORY, limits=limits), problems


def _trusted_owners(layout: Layout) -> set[int]:
    """Users whose fallback spools this process may deliver as its own reports.

    Root also collects those of the agent's service user (the owner of the reporting
    directory or a config) but never those of an arbitrary local user, who could
    otherwise forge reports in a world-writable directory.
    """
    euid = os.geteuid()
    owners = {euid}
    if euid == 0:
        for path in (layout.reporting_dir, layout.config, layout.legacy_config):
            with contextlib.suppress(OSError):
                owners.add(os.lstat(path).st_uid)
    return owners


def spool_files(layout: Layout) -> list[tuple[Path, SpoolKind]]:
    """Every spool database on this host that this process may read, primary first."""
    found: list[tuple[Path, SpoolKind]] = []
    primary = layout.reporting_dir / SPOOL_FILENAME
    if primary.is_file():
        found.append((primary, SpoolKind.PRIMARY))
    owners = _trusted_owners(layout)
    for parent in layout.fallback_spool_parents():
        try:
            children = sorted(parent.iterdir())
        except OSError:
            continue
        for directory in children:
            if not directory.name.startswith(_FALLBACK_PREFIX):
                continue
            try:
                info = os.lstat(directory)
            except OSError:
                continue
            name_uid = directory.name.removeprefix(_FALLBACK_PREFIX)
            if (
                stat.S_ISDIR(info.st_mode)
                and info.st_uid in owners
                and name_uid == str(info.st_uid)
                and (directory / SPOOL_FILENAME).is_file()
            ):
                found.append((directory / SPOOL_FILENAME, SpoolKind.FALLBACK))
    return found


def gather_spools(layout: Layout, active: Spool, *, limits: Limits | None = None) -> list[Spool]:
    """Fold every other spool this process can write into the active one.

    While the active spool lives in memory, folding would trade durable reports for
    volatile ones, so the others are returned to be delivered from where they are. A
    spool this process cannot write is left alone: it could not record acknowledgements
    and would send the same reports forever.
    """
    leftovers: list[Spool] = []
    for path, kind in spool_files(layout):
        if active.path is not None and path.resolve() == active.path.resolve():
            continue
        try:
            other = Spool(path, kind=kind, limits=limits)
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot open spool %s: %s", path, exc)
            continue
        if active.kind is SpoolKind.MEMORY:
            leftovers.append(other)
            continue
        try:
            moved = active.absorb(other)
        except sqlite3.Error as exc:
            log.warning("cannot merge spool %s: %s", path, exc)
            leftovers.append(other)
            continue
        if moved:
            log.info("moved %d queued reports from %s into %s", moved, path, active.location)
        other.close()
    return leftovers


def read_only_spools(layout: Layout) -> Iterator[tuple[Path, Spool | None, str | None]]:
    """Each spool on the host opened for reading, or the reason it cannot be read."""
    for path, kind in spool_files(layout):
        try:
            yield path, Spool(path, kind=kind, read_only=True), None
        except (OSError, sqlite3.Error) as exc:
            yield path, None, str(exc)
