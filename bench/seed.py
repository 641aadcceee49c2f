"""A fast bulk seeder: a fleet of agents and a million events, as ingest would have stored them.

The console and export benchmarks need 10,000 agents and 1,000,000 events in the real
schema. Going through the API would take longer than the benchmarks themselves, so rows are
written straight into the tables, with the fastest path of each backend: SQLite's own
`executemany` with the event indexes dropped and rebuilt after the load, PostgreSQL's
`COPY` with its indexes and constraints dropped and rebuilt the same way. The schema is the
real one (`upgrade_database`), and every index and constraint is rebuilt from its own
definition, so the database ends up exactly as Alembic made it.

What is written is what `models.store` would have written for the same check-ins:
- derived event fields (category, phase, status, severity) from the vocabulary, and every
  fingerprint computed by `models.fingerprint.fingerprint` on the very text stored, with
  the reporting host's name;
- each agent's migration summary by `models.store.migration_summary`, as if its events
  had arrived in one check-in;
- content shaped like a fleet in the middle of a rollout (the mix of `bench.workload`):
  mostly updates and successful migrations, about one event in six a failure, whose
  messages fall into a few hundred error groups; hosts tend to fail the same way again,
  so the biggest groups span hundreds of hosts. Some agents only ever send updates, a few
  never checked in, a few went silent (stale), a few are revoked.

Use `seeded_database(backend, agents=..., events=..., pg_admin_url=...)` (a context manager
yielding the URL) from a benchmark: within one process each (backend, size) is seeded once
and shared, and every database is removed when the process exits.

Run alone: `python -m bench.seed [--backends sqlite,postgresql] [--agents N] [--events N]`,
or `--url URL` to seed a database that stays (an empty one: e.g. for the console by hand).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from tqdm import tqdm

from bench.server import DEFAULT_PG_ADMIN_URL, postgres_unreachable
from bench.workload import _MIX, hostname_for
from models.database import create_db_engine, write_transaction
from models.fingerprint import fingerprint
from models.schema import upgrade_database
from models.store import EVENT_ROW_KEYS, NEW_AGENT_SUMMARY, migration_summary
from models.tables import AGENT_TABLE
from models.types import dumps_json
from models.vocabulary import (
    Category,
    EventType,
    MigrationState,
    Status,
    kind_of,
    severity_for,
)

DEFAULT_AGENTS = 10_000
DEFAULT_EVENTS = 1_000_000
DEFAULT_DAYS = 30
CHUNK_EVENTS = 20_000

# The table's columns in the order the seeded rows give them: the key, then a stored row's.
EVENT_COLUMNS = ("id", *EVENT_ROW_KEYS)

# --- what the fleet says ------------------------------------------------------------------

_STEPS = (
    "backup",
    "copy_config",
    "convert_config",
    "copy_state",
    "copy_certs",
    "write_service_unit",
    "restart_agent",
    "validate",
)
# Each template is one error group per event type once its variable parts (numbers, paths,
# hex, addresses, URLs) are masked; `{n}`, `{m}`, `{d}`, `{hex}`, `{hex16}` vary per event.
_EXECUTION_ERRORS = (
    "[Errno 13] Permission denied: '/var/lib/redflag/agent/state-{n}.db'",
    "[Errno 28] No space left on device ({n} bytes free on /dev/sda{d})",
    "[Errno 30] Read-only file system: '/etc/redflag/agent/config.json.tmp-{n}'",
    "[Errno 2] No such file or directory: '/etc/aggregator/conf.d/{n}.json'",
    "checksum mismatch: expected {hex}, got {hex16}",
    "timed out after {d} s waiting for lock /run/redflag/migrate.lock held by pid {n}",
    "config v{d} is not valid JSON: Expecting ',' delimiter: line {m} column {d} (char {n})",
    "server https://redflag-{m}.corp.example.org:8443 unreachable from 10.{d}.{m}.{d}: "
    "connection refused",
    "systemctl exited with status {d}: Job for redflag-agent.service failed",
    "sqlite3.DatabaseError: database disk image is malformed (state-{n}.db)",
    "[Errno 39] Directory not empty: '/var/lib/aggregator/cache/{n}'",
    "rollback incomplete: {m} of {n} files restored from /var/backups/redflag-{n}",
)
_DETECTION_ERRORS = (
    "cannot read /etc/aggregator/config.json: [Errno 13] Permission denied",
    "unknown config version {m} in /etc/aggregator/config.json",
    "legacy install at /opt/aggregator-{n} has no config file",
    "two installs found, /etc/aggregator and /etc/redflag/agent (pid {n} runs from both)",
    "stat /var/lib/aggregator/last_scan.json: [Errno 5] Input/output error",
    "timed out after {m} s scanning /var/lib/aggregator",
)
_DETECTION_CONTEXTS = ("config", "state", "service unit", "certificates")
_PARTIAL_WHAT = ("server_url", "check-in interval", "proxy", "TLS bundle", "log level", "tags")
_PARTIAL_WHY = (
    "unknown key in config v{m}",
    "value out of range ({n})",
    "file /etc/aggregator/{what}.conf unreadable",
    "kept by the admin's override in /etc/redflag/agent/local.d/{n}.json",
    "conversion skipped after {m} errors",
)
_PACKAGES = ("openssl", "curl", "linux-image-amd64", "systemd", "python3.11", "nginx", "sudo")
_UPDATE_ERRORS = (
    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process {n} (apt)",
    "E: Failed to fetch http://deb.debian.org/debian/pool/main/{n}.deb 404 Not Found",
    "E: Sub-process /usr/bin/dpkg returned an error code ({d})",
    "dependency problems - leaving unconfigured: depends on libc6 (>= 2.{m})",
    "[Errno 28] No space left on device: '/var/cache/apt/archives/partial/{n}.deb'",
    "GPG error: http://security.debian.org bookworm-security InRelease: NO_PUBKEY {hex16}",
    "post-installation script subprocess returned error exit status {d}",
    "Temporary failure resolving 'deb.debian.org' after {d} retries",
    "download of {n} bytes interrupted: Connection reset by peer",
    "held back: {m} packages have unmet dependencies",
    "restart of the service timed out after {m} s",
    "dpkg: error processing archive /var/cache/apt/archives/{n}.deb (--unpack): trying to "
    "overwrite '/usr/lib/x86_64-linux-gnu/lib{n}.so'",
)
# Messages that name the reporting host itself: fingerprinted with its hostname masked.
_HOST_ERRORS = (
    "validate: {host} is not in the server's allow list for "
    "https://redflag.corp.example.org:8443/api/v1/checkin",
    "restart_agent: the unit on {host} still runs the legacy binary /usr/bin/aggregator-agent",
)
_MIGRATION_PATHS = (
    ("0.1.18 (config v3, /etc/aggregator)", "0.2.0 (config v5, /etc/redflag/agent)", 70),
    ("0.1.20 (config v4, /etc/redflag/agent)", "0.2.0 (config v5, /etc/redflag/agent)", 22),
    ("0.1.12 (config v2, /etc/aggregator)", "0.2.0 (config v5, /etc/redflag/agent)", 6),
    ("0.1.18 (config v3, /etc/aggregator)", "0.1.20 (config v4, /etc/redflag/agent)", 2),
)
_OS = (
    ("linux", "Debian GNU/Linux", "12", 40),
    ("linux", "Debian GNU/Linux", "11", 12),
    ("linux", "Ubuntu", "22.04", 20),
    ("linux", "Ubuntu", "24.04", 14),
    ("linux", "Rocky Linux", "9.4", 8),
    ("linux", "Red Hat Enterprise Linux", "8.10", 6),
)
_AGENT_VERSIONS = (("0.1.18", 30), ("0.1.20", 20), ("0.2.0", 50))
_ARCHITECTURES = (("x86_64", 85), ("aarch64", 15))

# Shares of the fleet; the rest checks in regularly and reports migrations.
UPDATES_ONLY_SHARE = 0.08  # never sent a migration event: "never reported"
NEVER_SEEN_SHARE = 0.02  # registered, never checked in, no events
STALE_SHARE = 0.04  # went silent days or hours ago
REVOKED_SHARE = 0.005
# How often a host fails the way it failed before (one of its two usual errors).
USUAL_ERROR_SHARE = 0.85
SPOOLED_SHARE = 0.03  # events delivered late, after an outage
VARIANTS_PER_TEMPLATE = 64


@dataclass(frozen=True)
class SeedSummary:
    """What was seeded, for checking what the read layer gives back."""

    agents: int
    events: int
    now: datetime
    by_state: dict[MigrationState, int]  # agents per state, revoked ones left out
    revoked: int
    never_seen: int
    events_by_status: dict[Status, int]
    events_by_category: dict[Category, int]
    error_groups: int
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


# --- generation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Encoding:
    """How values are written: SQLite parameters, or PostgreSQL COPY text."""

    null: Any
    false: Any
    time_suffix: str
    text_ids: bool
    escape: bool

    def text(self, value: str | None) -> Any:
        if value is None:
            return self.null
        if not self.escape:
            return value
        return value.translate(_COPY_ESCAPES)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
SQLITE = _Encoding(null=None, false=0, time_suffix="", text_ids=False, escape=False)
COPY_TEXT = _Encoding(null="\\N", false="f", time_suffix="+00", text_ids=True, escape=True)


@dataclass(frozen=True, slots=True)
class _Variant:
    message: str  # as stored (escaped for COPY)
    raw_message: str
    fingerprint: str
    details: str


def _weighted(pairs: Any) -> tuple[list[Any], list[float]]:
    values = [p[:-1] if len(p) > 2 else p[0] for p in pairs]
    cumulative: list[float] = []
    total = 0.0
    for p in pairs:
        total += p[-1]
        cumulative.append(total)
    return values, cumulative


class _Fleet:
    """Every random choice of one seeding, made from one seeded random generator."""

    def __init__(
        self, *, agents: int, events: int, days: int, seed: int, now: datetime, enc: _Encoding
    ) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.n_agents = agents
        self.n_events = events
        self.now = now
        self.enc = enc
        self.start = now - timedelta(days=days)
        self._build_agents()
        self._build_messages()
        self._build_types()
        self.latest: list[tuple[int, int, str | None, Any] | None] = [None] * agents
        self.ever_migrated = [False] * agents
        self.last_received_us = [0] * agents
        self.status_counts: Counter[str] = Counter()
        self.category_counts: Counter[str] = Counter()
        self.fingerprints: set[str] = set()

    # -- the agents

    def _build_agents(self) -> None:
        rng, n = self.rng, self.n_agents
        now_us = _us(self.now)
        oses, os_cw = _weighted(_OS)
        versions, version_cw = _weighted(_AGENT_VERSIONS)
        arches, arch_cw = _weighted(_ARCHITECTURES)
        paths, path_cw = _weighted(_MIGRATION_PATHS)
        self.ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(n)]
        self.id_text = [u.hex for u in self.ids]
        self.hostnames = [hostname_for(i) for i in range(n)]
        self.os = [rng.choices(oses, cum_weights=os_cw)[0] for _ in range(n)]
        self.version = [rng.choices(versions, cum_weights=version_cw)[0] for _ in range(n)]
        self.arch = [rng.choices(arches, cum_weights=arch_cw)[0] for _ in range(n)]
        path_of = [rng.choices(paths, cum_weights=path_cw)[0] for _ in range(n)]
        self.path_from = [self.enc.text(p[0]) for p in path_of]
        self.path_to = [self.enc.text(p[1]) for p in path_of]
        self.raw_path = path_of
        roles = rng.choices(
            ("regular", "updates_only", "never_seen", "stale"),
            weights=(
                1 - UPDATES_ONLY_SHARE - NEVER_SEEN_SHARE - STALE_SHARE,
                UPDATES_ONLY_SHARE,
                NEVER_SEEN_SHARE,
                STALE_SHARE,
            ),
            k=n,
        )
        self.updates_only = [r == "updates_only" for r in roles]
        self.never_seen = [r == "never_seen" for r in roles]
        self.revoked = [rng.random() < REVOKED_SHARE for _ in range(n)]
        # A stale agent's events stop where it went silent: 1 hour to 20 days ago.
        self.silent_us = [
            now_us - rng.randint(3_600, 20 * 86_400) * 1_000_000 if r == "stale" else now_us
            for r in roles
        ]
        # How talkative each host is (some report far more than others); never-seen
        # agents report nothing.
        weights = [0.0 if r == "never_seen" else rng.lognormvariate(0, 0.6) for r in roles]
        self.agent_cw: list[float] = []
        total = 0.0
        for w in weights:
            total += w
            self.agent_cw.append(total)
        self.created = [
            self.start - timedelta(days=rng.uniform(1, 30), seconds=rng.randint(0, 86_399))
            for _ in range(n)
        ]
        self.seen_us = [
            # Fresh agents checked in within the last minute, stale ones when they fell silent.
            now_us - rng.randint(0, 60_000_000) if r != "stale" else self.silent_us[i]
            for i, r in enumerate(roles)
        ]
        self.system_info: list[dict[str, Any]] = []
        self.system_prefix: list[str] = []
        for i in range(n):
            _, os_name, os_version = self.os[i]
            info = {
                "hostname": self.hostnames[i],
                "os_name": os_name,
                "os_version": os_version,
                "architecture": self.arch[i],
                "agent_version": self.version[i],
                "uid": 0,
                "free_disk_bytes": 0,
            }
            self.system_info.append(info)
            text = dumps_json(info)
            assert text.endswith('"free_disk_bytes":0}')
            self.system_prefix.append(self.enc.text(text[: -len("0}")]))

    # -- the messages

    def _fill(self, template: str) -> str:
        rng = self.rng
        return template.format(
            n=rng.randint(100, 99_999),
            m=rng.randint(2, 99),
            d=rng.randint(1, 9),
            hex=f"{rng.getrandbits(128):032x}",
            hex16=f"{rng.getrandbits(64):016X}",
            what=rng.choice(("server", "proxy", "tls")),
        )

    def _variants(self, event_type: EventType, template: str, step: str) -> list[_Variant]:
        variants = []
        for _ in range(VARIANTS_PER_TEMPLATE):
            message = self._fill(template)
            # Fingerprints are computed here, once per variant; that equals computing them
            # with the reporting host's name because no host name occurs in the text.
            assert "bench-host" not in message.lower()
            details = self._failure_details(step)
            variants.append(
                _Variant(
                    message=self.enc.text(message),
                    raw_message=message,
                    fingerprint=fingerprint(event_type.value, message),
                    details=self.enc.text(details),
                )
            )
        return variants

    def _failure_details(self, step: str) -> str:
        rng = self.rng
        n = rng.randint(1, 99_999)
        return dumps_json(
            {
                "failed_step": step,
                "errno": rng.choice((13, 28, 5, 2)),
                "exception_type": rng.choice(("PermissionError", "OSError", "ValueError")),
                "backup_path": f"/var/lib/redflag/agent/backup-{n}",
                "steps": [
                    {"name": s, "status": "done" if s != step else "failed"}
                    for s in _STEPS[: _STEPS.index(step) + 1]
                ]
                if step in _STEPS
                else [],
                "traceback": 'Traceback (most recent call last):\n  File "agent/execution.py", '
                f"line {n % 400}, in run\n    step()\nOSError: failed",
            }
        )

    def _build_messages(self) -> None:
        """Error templates per failing event type, most common first, with variants."""
        rng = self.rng
        groups: dict[EventType, list[list[_Variant] | str]] = {}
        execution: list[list[_Variant] | str] = [
            self._variants(EventType.MIGRATION_EXECUTION_FAILED, f"{step}: {error}", step)
            for step in _STEPS
            for error in _EXECUTION_ERRORS
        ]
        execution += list(_HOST_ERRORS)
        detection: list[list[_Variant] | str] = [
            self._variants(
                EventType.MIGRATION_DETECTION_FAILED,
                f"probing the legacy {context}: {error}",
                "detect",
            )
            for context in _DETECTION_CONTEXTS
            for error in _DETECTION_ERRORS
        ]
        partial: list[list[_Variant] | str] = [
            self._variants(
                EventType.MIGRATION_EXECUTION_PARTIAL,
                f"convert_config: {what} kept at its old value: {why}",
                "convert_config",
            )
            for what in _PARTIAL_WHAT
            for why in _PARTIAL_WHY
        ]
        updates: list[list[_Variant] | str] = [
            self._variants(EventType.UPDATE_FAILED, f"installing {package}: {error}", "install")
            for package in _PACKAGES
            for error in _UPDATE_ERRORS
        ]
        for event_type, templates in (
            (EventType.MIGRATION_EXECUTION_FAILED, execution),
            (EventType.MIGRATION_DETECTION_FAILED, detection),
            (EventType.MIGRATION_EXECUTION_PARTIAL, partial),
            (EventType.UPDATE_FAILED, updates),
        ):
            rng.shuffle(templates)
            groups[event_type] = templates
        self.templates = groups
        # Zipf-like popularity: a few failures are everywhere, most are rare.
        self.template_cw = {}
        for event_type, templates in groups.items():
            total, cumulative = 0.0, []
            for rank in range(len(templates)):
                total += 1 / (rank + 1) ** 1.1
                cumulative.append(total)
            self.template_cw[event_type] = cumulative
        # Each host has two usual errors per failing event type.
        self.usual: dict[EventType, list[tuple[int, int]]] = {
            event_type: [
                tuple(  # type: ignore[misc]
                    rng.choices(range(len(templates)), cum_weights=self.template_cw[event_type])[0]
                    for _ in range(2)
                )
                for _ in range(self.n_agents)
            ]
            for event_type, templates in groups.items()
        }
        self.host_fingerprints: dict[tuple[str, int], tuple[str, str]] = {}
        self.success_details = [
            self.enc.text(
                dumps_json(
                    {
                        "steps": [{"name": s, "status": "done"} for s in _STEPS],
                        "backup_path": f"/var/lib/redflag/agent/backup-{rng.randint(1, 99_999)}",
                    }
                )
            )
            for _ in range(VARIANTS_PER_TEMPLATE)
        ]
        self.detection_details = [
            self.enc.text(dumps_json({"legacy_dir": "/etc/aggregator", "config_version": v}))
            for v in (2, 3, 4)
        ]
        self.update_details = [
            self.enc.text(
                dumps_json(
                    {
                        "package": rng.choice(_PACKAGES),
                        "version": f"{rng.randint(1, 9)}.{rng.randint(0, 97)}.{rng.randint(0, 13)}",
                    }
                )
            )
            for _ in range(VARIANTS_PER_TEMPLATE * 4)
        ]

    def _failure(self, event_type: EventType, agent: int) -> tuple[Any, Any, str, str]:
        """(stored message, raw message, fingerprint, details) of one failure."""
        rng = self.rng
        templates = self.templates[event_type]
        if rng.random() < USUAL_ERROR_SHARE:
            index = self.usual[event_type][agent][rng.random() < 0.3]
        else:
            index = rng.choices(range(len(templates)), cum_weights=self.template_cw[event_type])[0]
        template = templates[index]
        if isinstance(template, str):
            key = (template, agent)
            known = self.host_fingerprints.get(key)
            if known is None:
                message = template.format(host=self.hostnames[agent])
                print_ = fingerprint(event_type.value, message, hostname=self.hostnames[agent])
                known = (message, print_)
                self.host_fingerprints[key] = known
            message, print_ = known
            details = self.enc.text(self._failure_details(message.split(":", 1)[0]))
            return self.enc.text(message), message, print_, details
        variant = template[int(rng.random() * len(template))]
        return variant.message, variant.raw_message, variant.fingerprint, variant.details

    # -- the event types

    def _build_types(self) -> None:
        self.types = [event_type for event_type, _ in _MIX]
        _, self.type_cw = _weighted([(t, w) for t, w in _MIX])
        update_mix = [(t, w) for t, w in _MIX if kind_of(t).category is Category.UPDATE]
        self.update_types = [t for t, _ in update_mix]
        _, self.update_cw = _weighted(update_mix)
        enc = self.enc
        self.type_fields = {
            t: (
                t.value,
                kind_of(t).category.value,
                enc.null if kind_of(t).phase is None else kind_of(t).phase.value,  # type: ignore[union-attr]
                kind_of(t).status.value,
                severity_for(kind_of(t).status).value,
            )
            for t in EventType
        }

    # -- the events

    def chunks(self, size: int = CHUNK_EVENTS) -> Iterator[list[tuple[Any, ...]]]:
        """Every event, oldest first, in chunks of rows in EVENT_COLUMNS order.

        The per-event random numbers are drawn a chunk at a time with numpy; only the
        failures (their message and group) are picked one by one.
        """
        rng, enc, draw = self.rng, self.enc, self.np_rng
        random = rng.random
        start_us, now_us = _us(self.start), _us(self.now)
        step = (now_us - start_us) / max(self.n_events, 1)
        agent_cw = np.asarray(self.agent_cw)
        type_cw = np.asarray(self.type_cw)
        update_cw = np.asarray(self.update_cw)
        silent = np.asarray(self.silent_us, dtype=np.int64)
        updates_only = np.asarray(self.updates_only)
        migration_type = np.asarray([t.value.startswith("migration") for t in self.types])
        update_type_index = np.asarray([self.types.index(t) for t in self.update_types])
        last_received = np.zeros(self.n_agents, dtype=np.int64)
        type_fields = [self.type_fields[t] for t in self.types]
        is_migration = migration_type.tolist()
        detail_kind = [
            "update"
            if not t.value.startswith("migration")
            else "execution"
            if t.value.startswith("migration_execution")
            else "detection"
            for t in self.types
        ]
        failed, warning = Status.FAILED.value, Status.WARNING.value
        success_exec = self.types.index(EventType.MIGRATION_EXECUTION_SUCCESS)
        false, null = enc.false, enc.null
        n_success, n_updates = len(self.success_details), len(self.update_details)
        status_counts = np.zeros(len(self.types), dtype=np.int64)
        for first in range(0, self.n_events, size):
            count = min(size, self.n_events - first)
            numbers = np.arange(first, first + count)
            occurred = start_us + ((numbers + draw.random(count)) * step).astype(np.int64)
            picked = np.searchsorted(agent_cw, draw.random(count) * agent_cw[-1], side="right")
            # A stale agent reports nothing after it fell silent: someone else did.
            for _ in range(20):
                late = occurred > silent[picked]
                if not late.any():
                    break
                picked[late] = np.searchsorted(
                    agent_cw, draw.random(int(late.sum())) * agent_cw[-1], side="right"
                )
            kinds = np.searchsorted(type_cw, draw.random(count) * type_cw[-1], side="right")
            # Agents that only ever send updates.
            remap = updates_only[picked] & migration_type[kinds]
            if remap.any():
                kinds[remap] = update_type_index[
                    np.searchsorted(
                        update_cw, draw.random(int(remap.sum())) * update_cw[-1], side="right"
                    )
                ]
            delay = np.where(
                draw.random(count) < SPOOLED_SHARE,
                (3_600 + draw.random(count) * 2 * 86_400) * 1_000_000,
                (0.2 + draw.random(count) * 300) * 1_000_000,
            ).astype(np.int64)
            received = np.maximum(
                np.minimum(np.minimum(occurred + delay, silent[picked]), now_us), occurred
            )
            np.maximum.at(last_received, picked, received)
            status_counts += np.bincount(kinds, minlength=len(self.types))
            raw_ids = draw.integers(0, 256, size=(count, 16), dtype=np.uint8)
            raw_ids[:, 6] = (raw_ids[:, 6] & 0x0F) | 0x40  # version 4
            raw_ids[:, 8] = (raw_ids[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
            hex_ids = raw_ids.tobytes().hex()
            occurred_text = self._times(occurred)
            received_text = self._times(received)
            free_disk = ((1 + draw.integers(0, 400_000, size=count)) * 1_048_576).tolist()
            row_ids = (numbers + 1).astype(str).tolist() if enc.text_ids else (numbers + 1).tolist()
            picked_list = picked.tolist()
            kinds_list = kinds.tolist()
            occurred_list = occurred.tolist()
            rows: list[tuple[Any, ...]] = []
            append = rows.append
            for offset in range(count):
                agent = picked_list[offset]
                kind = kinds_list[offset]
                type_value, category, phase, status, severity = type_fields[kind]
                raw_message: str | None = None
                print_: Any = null
                if status == failed or (status == warning and random() < 0.6):
                    message, raw_message, print_, details = self._failure(self.types[kind], agent)
                    self.fingerprints.add(print_)
                else:
                    message = null
                    which = detail_kind[kind]
                    if which == "update":
                        details = self.update_details[int(random() * n_updates)]
                    elif which == "execution":
                        details = self.success_details[int(random() * n_success)]
                    else:
                        details = self.detection_details[int(random() * 3)]
                if is_migration[kind]:
                    self.latest[agent] = (kind, occurred_list[offset], raw_message, print_)
                    if kind == success_exec:
                        self.ever_migrated[agent] = True
                    path_from, path_to = self.path_from[agent], self.path_to[agent]
                else:
                    path_from = path_to = null
                at = offset * 32
                append(
                    (
                        row_ids[offset],
                        self.id_text[agent],
                        hex_ids[at : at + 32],
                        type_value,
                        category,
                        phase,
                        status,
                        severity,
                        message,
                        false,
                        print_,
                        path_from,
                        path_to,
                        occurred_text[offset],
                        received_text[offset],
                        f"{self.system_prefix[agent]}{free_disk[offset]}}}",
                        details,
                    )
                )
            yield rows
        self.last_received_us = last_received.tolist()
        for index, event_type in enumerate(self.types):
            kind = kind_of(event_type)
            self.status_counts[kind.status.value] += int(status_counts[index])
            self.category_counts[kind.category.value] += int(status_counts[index])

    def _times(self, micros: Any) -> list[str]:
        """UTC microseconds as the text each backend stores ("2026-11-27 08:00:00.000000")."""
        text = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us").tolist()
        suffix = self.enc.time_suffix
        return [f"{t[:10]} {t[11:]}{suffix}" for t in text]

    # -- the agents' rows, after their events

    def agent_rows(self) -> list[dict[str, Any]]:
        """The agent table, with each migration summary as ingest would have left it."""
        rows = []
        for i in range(self.n_agents):
            latest = self.latest[i]
            summary: dict[str, Any] = {}
            if latest is not None:
                before = {
                    "ever_migrated": self.ever_migrated[i],
                    "migration_state": MigrationState.NEVER_REPORTED,
                    "migration_state_at": None,
                }
                kind, occurred, message, print_ = latest
                event_type = self.types[kind]
                row = {
                    "event_type": event_type,
                    "status": kind_of(event_type).status,
                    "occurred_at": _from_us(occurred),
                    "migration_from": self.raw_path[i][0],
                    "migration_to": self.raw_path[i][1],
                    "error_message": message,
                    "fingerprint": None if print_ is self.enc.null else print_,
                }
                summary = migration_summary(before, [row])  # type: ignore[arg-type]
            seen = None
            if not self.never_seen[i]:
                seen = _from_us(max(self.seen_us[i], self.last_received_us[i]))
            os_type, os_name, os_version = self.os[i]
            revoked = self.revoked[i]
            info = {
                **self.system_info[i],
                "free_disk_bytes": self.rng.randint(1, 400_000) * 1_048_576,
            }
            rows.append(
                {
                    "id": self.ids[i],
                    "hostname": self.hostnames[i],
                    "os_type": os_type,
                    "os_version": f"{os_name} {os_version}",
                    "os_architecture": self.arch[i],
                    "agent_version": self.version[i],
                    "machine_id": f"{self.rng.getrandbits(128):032x}",
                    "host_metadata": {"site": f"dc{i % 3 + 1}"},
                    "token_hash": f"{self.rng.getrandbits(256):064x}",
                    "enrollment_token_id": None,
                    "revoked": revoked,
                    "revoked_at": self.now - timedelta(days=1) if revoked else None,
                    "created_at": self.created[i],
                    "last_seen_at": seen,
                    "system_info": info if seen else {},
                    **NEW_AGENT_SUMMARY,
                    **summary,
                }
            )
        return rows


def _us(moment: datetime) -> int:
    return int((moment - _EPOCH).total_seconds()) * 1_000_000 + moment.microsecond


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- loading ----------------------------------------------------------------------------


def seed_database(
    url: str,
    *,
    agents: int = DEFAULT_AGENTS,
    events: int = DEFAULT_EVENTS,
    days: int = DEFAULT_DAYS,
    seed: int = 0,
    progress: bool = True,
) -> SeedSummary:
    """Create the schema in an empty database at `url` and fill it; returns what was written.

    Deterministic for a given seed (and moment: times are relative to now).
    """
    started = time.perf_counter()
    engine = create_db_engine(url)
    try:
        upgrade_database(engine)
        with engine.connect() as connection:
            if connection.execute(sa.text("SELECT count(*) FROM agent")).scalar_one():
                raise RuntimeError(f"{url}: not empty; the seeder only fills a new database")
        backend = engine.dialect.name
    finally:
        engine.dispose()
    now = datetime.now(UTC).replace(microsecond=0)
    encoding = SQLITE if backend == "sqlite" else COPY_TEXT
    fleet = _Fleet(agents=agents, events=events, days=days, seed=seed, now=now, enc=encoding)
    phases: dict[str, float] = {}
    bar = tqdm(
        total=events,
        desc=f"seeding {backend}",
        unit=" events",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with bar:
        if backend == "sqlite":
            _load_sqlite(url, fleet, bar, phases)
        else:
            _load_postgres(url, fleet, bar, phases)
    agent_rows = fleet.agent_rows()
    by_state = Counter(row["migration_state"] for row in agent_rows if not row["revoked"])
    return SeedSummary(
        agents=agents,
        events=events,
        now=now,
        by_state={state: by_state.get(state, 0) for state in MigrationState},
        revoked=sum(row["revoked"] for row in agent_rows),
        never_seen=sum(fleet.never_seen),
        events_by_status={s: fleet.status_counts.get(s.value, 0) for s in Status},
        events_by_category={c: fleet.category_counts.get(c.value, 0) for c in Category},
        error_groups=len(fleet.fingerprints),
        seconds=time.perf_counter() - started,
        phases=phases,
    )


def _insert_agents(url: str, fleet: _Fleet) -> None:
    engine = create_db_engine(url)
    try:
        with write_transaction(engine) as connection:
            connection.execute(sa.insert(AGENT_TABLE), fleet.agent_rows())
    finally:
        engine.dispose()


def _load_sqlite(url: str, fleet: _Fleet, bar: tqdm[Any], phases: dict[str, float]) -> None:
    path = sa.make_url(url).database
    assert path
    clock = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # A throwaway load: no journal, no fsync, a cache big enough for the unique index.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-262144")
        connection.execute("PRAGMA foreign_keys=OFF")
        indexes = connection.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'update_events' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        insert = (
            f"INSERT INTO update_events ({', '.join(EVENT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
        )
        connection.execute("BEGIN")
        for rows in fleet.chunks():
            connection.executemany(insert, rows)
            bar.update(len(rows))
        connection.execute("COMMIT")
        phases["events"] = time.perf_counter() - clock
        clock = time.perf_counter()
        bar.set_postfix_str("building indexes")
        for _, sql in indexes:
            connection.execute(sql)
        phases["indexes"] = time.perf_counter() - clock
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    clock = time.perf_counter()
    bar.set_postfix_str("agents")
    _insert_agents(url, fleet)
    phases["agents"] = time.perf_counter() - clock


def _load_postgres(url: str, fleet: _Fleet, bar: tqdm[Any], phases: dict[str, float]) -> None:
    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    clock = time.perf_counter()
    with psycopg.connect(conninfo) as connection:
        constraints = connection.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'update_events'::regclass AND contype IN ('u', 'f') "
            "ORDER BY contype DESC"
        ).fetchall()
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'update_events' "
            "AND indexname NOT IN (SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'update_events'::regclass)"
        ).fetchall()
        for name, _ in constraints:
            connection.execute(f'ALTER TABLE update_events DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        connection.commit()
        with connection.cursor() as cursor:
            copy_sql = f"COPY update_events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
            with cursor.copy(copy_sql) as copy:
                for rows in fleet.chunks():
                    copy.write("".join("\t".join(row) + "\n" for row in rows))
                    bar.update(len(rows))
        connection.execute(
            "SELECT setval(pg_get_serial_sequence('update_events', 'id'), %s)",
            (max(fleet.n_events, 1),),
        )
        connection.commit()
        phases["events"] = time.perf_counter() - clock
        clock = time.perf_counter()
        bar.set_postfix_str("agents")
        _insert_agents(url, fleet)
        phases["agents"] = time.perf_counter() - clock
        clock = time.perf_counter()
        bar.set_postfix_str("building indexes")
        connection.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            connection.execute(definition)
        for name, definition in reversed(constraints):
            connection.execute(
                f'ALTER TABLE update_events ADD CONSTRAINT "{name}" {definition}'  # type: ignore[arg-type]
            )
        connection.commit()
        phases["indexes"] = time.perf_counter() - clock
        clock = time.perf_counter()
        bar.set_postfix_str("vacuum analyze")
        # What autovacuum does within a minute of a big load; the planner needs the
        # statistics and index-only scans need the visibility map.
        connection.autocommit = True
        connection.execute("VACUUM (ANALYZE) update_events")
        connection.execute("VACUUM (ANALYZE) agent")
        phases["vacuum analyze"] = time.perf_counter() - clock


# --- seeded databases, shared within one process ----------------------------------------


@dataclass
class _Seeded:
    url: str
    summary: SeedSummary
    cleanup: Any


_seeded: dict[tuple[str, int, int, str], _Seeded] = {}
_seeded_lock = threading.Lock()


@contextmanager
def seeded_database(
    backend: str,
    *,
    agents: int = DEFAULT_AGENTS,
    events: int = DEFAULT_EVENTS,
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL,
    progress: bool = True,
) -> Iterator[str]:
    """The URL of a database seeded with `agents` and `events`, made once per process.

    Benchmarks only read it. Each (backend, agents, events) is seeded the first time it is
    asked for and kept for the next benchmark; every one is removed when the process exits
    (or by `drop_seeded_databases`). SQLite databases live in a temporary directory;
    PostgreSQL ones are uniquely named databases made and dropped via `pg_admin_url`.
    """
    key = (backend, agents, events, pg_admin_url if backend == "postgresql" else "")
    with _seeded_lock:
        seeded = _seeded.get(key)
        if seeded is None:
            seeded = _create_seeded(backend, agents, events, pg_admin_url, progress)
            _seeded[key] = seeded
    yield seeded.url


def seed_summary(url: str) -> SeedSummary:
    """What `seeded_database` wrote into the database at `url`."""
    for seeded in _seeded.values():
        if seeded.url == url:
            return seeded.summary
    raise KeyError(f"{url} was not seeded by this process")


def _create_seeded(
    backend: str, agents: int, events: int, pg_admin_url: str, progress: bool
) -> _Seeded:
    name = f"redflag_seed_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        url = f"sqlite:///{directory}/redflag.db"

        def cleanup() -> None:
            shutil.rmtree(directory, ignore_errors=True)

    elif backend == "postgresql":
        reason = postgres_unreachable(pg_admin_url)
        if reason is not None:
            raise RuntimeError(f"PostgreSQL unreachable at {pg_admin_url}: {reason}")
        admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)

        def cleanup() -> None:
            from models import analytics

            analytics.dispose_cached_engines()
            engine = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
            with contextlib.suppress(sa.exc.SQLAlchemyError), engine.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()

    else:
        raise ValueError(f"unknown backend {backend!r}: use sqlite or postgresql")
    try:
        summary = seed_database(url, agents=agents, events=events, progress=progress)
    except BaseException:
        cleanup()
        raise
    return _Seeded(url=url, summary=summary, cleanup=cleanup)


def drop_seeded_databases() -> None:
    """Remove every database `seeded_database` made in this process."""
    with _seeded_lock:
        while _seeded:
            _, seeded = _seeded.popitem()
            seeded.cleanup()


atexit.register(drop_seeded_databases)


# --- options shared by the benchmarks that read a seeded database ------------------------

QUICK_AGENTS = 50
QUICK_EVENTS = 2_000


@dataclass(frozen=True)
class SeededOptions:
    """The options of a benchmark that reads a seeded database (console, export)."""

    backends: tuple[str, ...]
    agents: int
    events: int
    pg_admin_url: str
    quick: bool = False


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """`--seed-agents`, `--seed-events`, `--pg-admin-url` and `--quick`, each added once.

    Every benchmark that reads the seeded database calls this, so that in `python -m
    bench` they share one set of options, and so one seeded database per backend.
    """
    add_once(
        parser, "--seed-agents", type=int, default=DEFAULT_AGENTS, help="agents in the seeded db"
    )
    add_once(
        parser, "--seed-events", type=int, default=DEFAULT_EVENTS, help="events in the seeded db"
    )
    add_once(
        parser,
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL maintenance database; a uniquely named database is made and dropped",
    )
    add_once(parser, "--quick", action="store_true", help="a tiny run that only proves it works")


def seed_size(args: argparse.Namespace) -> tuple[int, int]:
    """(agents, events) to seed: the tiny quick size with --quick."""
    if args.quick:
        return QUICK_AGENTS, QUICK_EVENTS
    return args.seed_agents, args.seed_events


def add_once(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add an option unless another benchmark of `python -m bench` added it already."""
    if flag not in parser._option_string_actions:
        parser.add_argument(flag, **kwargs)


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--agents", type=int, default=DEFAULT_AGENTS)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="events span this many")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument(
        "--url", help="seed this (empty) database and keep it, instead of temporary ones"
    )
    args = parser.parse_args(argv)
    if args.url:
        targets = [("url", args.url)]
    else:
        targets = [(b.strip(), "") for b in args.backends.split(",") if b.strip()]
    for backend, url in targets:
        if url:
            summary = seed_database(
                url, agents=args.agents, events=args.events, days=args.days, seed=args.seed
            )
        else:
            with seeded_database(
                backend, agents=args.agents, events=args.events, pg_admin_url=args.pg_admin_url
            ) as seeded_url:
                summary = seed_summary(seeded_url)
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.phases.items())
        states = ", ".join(f"{s.value} {n:,}" for s, n in summary.by_state.items())
        print(
            f"{backend}: {summary.agents:,} agents, {summary.events:,} events in "
            f"{summary.seconds:.1f} s ({phases}); {summary.error_groups} error groups; "
            f"agents by state: {states}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
