"""The demo fleet's hosts: what kinds exist, how each is laid out, and what it must report.

Every failure comes from the real agent meeting a really broken layout (or a really full
disk, or a really refused permission); nothing here writes an event. The plan is
deterministic: host number i has the same name, OS and kind whatever the fleet's size.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from demo.confinement import AgentUser, TinyDisk
from demo.layouts import Host, current_config, legacy_config
from models.vocabulary import EventType, MigrationState


class HostKind(StrEnum):
    LEGACY = "legacy"  # a clean 0.1.x install: migrates
    OUTDATED_CONFIG = "outdated_config"  # current layout, config v3/v4: migrates
    CURRENT = "current"  # already migrated: nothing to do
    CORRUPT_CONFIG = "corrupt_config"  # legacy config that is not JSON
    NEWER_CONFIG = "newer_config"  # config written by a newer agent
    CONFLICTING_LAYOUTS = "conflicting_layouts"  # both layouts, different agent ids
    UNREADABLE_STATE = "unreadable_state"  # a legacy directory the agent cannot list
    PERMISSION_DENIED = "permission_denied"  # the agent's user cannot create /etc/redflag
    DISK_FULL = "disk_full"  # the new config does not fit on its filesystem
    LOOSE_SECRET = "loose_secret"  # a world-readable key the agent cannot tighten
    LEGACY_LEFT_BEHIND = "legacy_left_behind"  # the legacy directory cannot be removed
    NEVER_MIGRATES = "never_migrates"  # enrolled and checking in, migration never run
    SILENT = "silent"  # enrolled, then never heard from again


# Hosts whose agent must run as an unprivileged user for the failure to be real.
CONFINED_KINDS = frozenset(
    {
        HostKind.UNREADABLE_STATE,
        HostKind.PERMISSION_DENIED,
        HostKind.LOOSE_SECRET,
        HostKind.LEGACY_LEFT_BEHIND,
    }
)
# How often each kind appears after the first host of every kind.
KIND_WEIGHTS: dict[HostKind, int] = {
    HostKind.LEGACY: 36,
    HostKind.OUTDATED_CONFIG: 10,
    HostKind.CURRENT: 12,
    HostKind.CORRUPT_CONFIG: 5,
    HostKind.NEWER_CONFIG: 3,
    HostKind.CONFLICTING_LAYOUTS: 4,
    HostKind.UNREADABLE_STATE: 3,
    HostKind.PERMISSION_DENIED: 6,
    HostKind.DISK_FULL: 4,
    HostKind.LOOSE_SECRET: 5,
    HostKind.LEGACY_LEFT_BEHIND: 3,
    HostKind.NEVER_MIGRATES: 5,
    HostKind.SILENT: 4,
}


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the server must show for a host of a kind once its agent has run."""

    state: MigrationState
    event_type: EventType | None  # the last migration event
    failed_step: str | None = None
    error: str | None = None  # a fragment of the error message
    checks_in: bool = True


EXPECTATIONS: dict[HostKind, Expectation] = {
    HostKind.LEGACY: Expectation(MigrationState.MIGRATED, EventType.MIGRATION_EXECUTION_SUCCESS),
    HostKind.OUTDATED_CONFIG: Expectation(
        MigrationState.MIGRATED, EventType.MIGRATION_EXECUTION_SUCCESS
    ),
    HostKind.CURRENT: Expectation(
        MigrationState.NOT_NEEDED, EventType.MIGRATION_DETECTION_NOT_NEEDED
    ),
    HostKind.CORRUPT_CONFIG: Expectation(
        MigrationState.FAILED, EventType.MIGRATION_DETECTION_FAILED, error="is not valid JSON"
    ),
    HostKind.NEWER_CONFIG: Expectation(
        MigrationState.FAILED,
        EventType.MIGRATION_DETECTION_FAILED,
        error="newer than this agent supports",
    ),
    HostKind.CONFLICTING_LAYOUTS: Expectation(
        MigrationState.FAILED, EventType.MIGRATION_DETECTION_FAILED, error="conflicting layouts"
    ),
    HostKind.UNREADABLE_STATE: Expectation(
        MigrationState.FAILED,
        EventType.MIGRATION_DETECTION_FAILED,
        error="cannot read directory",
    ),
    HostKind.PERMISSION_DENIED: Expectation(
        MigrationState.FAILED,
        EventType.MIGRATION_EXECUTION_FAILED,
        failed_step="directory_migration",
        error="Permission denied",
    ),
    HostKind.DISK_FULL: Expectation(
        MigrationState.FAILED,
        EventType.MIGRATION_EXECUTION_FAILED,
        failed_step="write_config",
        error="No space left on device",
    ),
    HostKind.LOOSE_SECRET: Expectation(
        MigrationState.PARTIAL,
        EventType.MIGRATION_EXECUTION_PARTIAL,
        error="could not restrict /etc/redflag/agent/client.key to mode 0600",
    ),
    HostKind.LEGACY_LEFT_BEHIND: Expectation(
        MigrationState.PARTIAL,
        EventType.MIGRATION_EXECUTION_PARTIAL,
        error="could not remove legacy /var/lib/aggregator",
    ),
    HostKind.NEVER_MIGRATES: Expectation(MigrationState.NEVER_REPORTED, None),
    HostKind.SILENT: Expectation(MigrationState.NEVER_REPORTED, None, checks_in=False),
}


@dataclass(frozen=True, slots=True)
class OsRelease:
    os_id: str
    name: str
    version_id: str
    pretty_name: str
    package_manager: str


OPERATING_SYSTEMS: tuple[tuple[OsRelease, int], ...] = (
    (OsRelease("ubuntu", "Ubuntu", "22.04", "Ubuntu 22.04.4 LTS", "apt"), 20),
    (OsRelease("ubuntu", "Ubuntu", "24.04", "Ubuntu 24.04.1 LTS", "apt"), 10),
    (OsRelease("ubuntu", "Ubuntu", "20.04", "Ubuntu 20.04.6 LTS", "apt"), 5),
    (OsRelease("debian", "Debian GNU/Linux", "12", "Debian GNU/Linux 12 (bookworm)", "apt"), 18),
    (OsRelease("debian", "Debian GNU/Linux", "11", "Debian GNU/Linux 11 (bullseye)", "apt"), 6),
    (OsRelease("rocky", "Rocky Linux", "9.4", "Rocky Linux 9.4 (Blue Onyx)", "dnf"), 10),
    (OsRelease("rocky", "Rocky Linux", "8.10", "Rocky Linux 8.10 (Green Obsidian)", "dnf"), 4),
    (OsRelease("almalinux", "AlmaLinux", "9.4", "AlmaLinux 9.4 (Seafoam Ocelot)", "dnf"), 6),
    (
        OsRelease(
            "rhel", "Red Hat Enterprise Linux", "9.4", "Red Hat Enterprise Linux 9.4 (Plow)", "dnf"
        ),
        6,
    ),
    (OsRelease("fedora", "Fedora Linux", "40", "Fedora Linux 40 (Server Edition)", "dnf"), 3),
    (OsRelease("amzn", "Amazon Linux", "2023", "Amazon Linux 2023.5.20240805", "dnf"), 5),
    (OsRelease("opensuse-leap", "openSUSE Leap", "15.5", "openSUSE Leap 15.5", "zypper"), 3),
)
ROLES = (
    "web", "api", "db", "cache", "mq", "build", "ci-runner", "k8s-node", "mail", "vpn",
    "log", "mon", "backup", "files", "ldap", "proxy", "git", "batch",
)  # fmt: skip
SITES = ("fra1", "ams2", "lon1", "nyc3", "sfo2", "sin1", "syd1", "tor1")
# Releases of the agent that wrote a current-layout config before 0.2.0.
INTERIM_RELEASES = {3: ("0.1.19", "0.1.20"), 4: ("0.1.21", "0.1.22")}


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One planned host: everything needed to lay it out again, identically."""

    index: int
    hostname: str
    kind: HostKind
    os: OsRelease
    seed: int

    @property
    def confined(self) -> bool:
        return self.kind in CONFINED_KINDS

    @property
    def expectation(self) -> Expectation:
        return EXPECTATIONS[self.kind]


def plan_host(
    index: int, *, seed: int = 7, substitutes: dict[HostKind, HostKind] | None = None
) -> HostSpec:
    """Host number `index` of the fleet, with `substitutes` for kinds this machine lacks."""
    rng = random.Random(f"{seed}:{index}")
    order = list(HostKind)
    if index < len(order):
        kind = order[index]
    else:
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    kind = (substitutes or {}).get(kind, kind)
    os_release = rng.choices(
        [release for release, _ in OPERATING_SYSTEMS],
        weights=[weight for _, weight in OPERATING_SYSTEMS],
    )[0]
    hostname = f"{rng.choice(ROLES)}-{rng.choice(SITES)}-{index + 1:02d}"
    return HostSpec(index, hostname, kind, os_release, rng.getrandbits(32))


def plan_fleet(
    hosts: int, *, seed: int = 7, substitutes: dict[HostKind, HostKind] | None = None
) -> list[HostSpec]:
    """The first `hosts` hosts: one of every kind first, then kinds by their weights."""
    return [plan_host(index, seed=seed, substitutes=substitutes) for index in range(hosts)]


def substitute_kinds(user: AgentUser, tiny_disk: TinyDisk | None) -> dict[HostKind, HostKind]:
    """Host kinds this machine cannot produce, each with the nearest kind it can."""
    substitutes: dict[HostKind, HostKind] = {}
    if tiny_disk is None:
        substitutes[HostKind.DISK_FULL] = HostKind.PERMISSION_DENIED
    if user.stranger is None:
        substitutes[HostKind.LOOSE_SECRET] = HostKind.LEGACY_LEFT_BEHIND
    return substitutes


# --- laying a host out ----------------------------------------------------------------------


def build_host(spec: HostSpec, root: Path, user: AgentUser) -> Host:
    """Lay out the host's files under `root` (which must be empty or missing)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    rng = random.Random(spec.seed)
    host = Host(root)
    host.with_temp_dirs()
    host.with_machine_id(f"{rng.getrandbits(128):032x}", spec.hostname)
    host.with_os_release(spec.os.os_id, spec.os.name, spec.os.version_id, spec.os.pretty_name)
    _LAYOUTS[spec.kind](host, spec, rng)
    if spec.confined:
        user.give(root)
        _CONFINEMENTS[spec.kind](host, user)
    return host


def _agent_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _legacy_settings(spec: HostSpec, rng: random.Random, **overrides: Any) -> dict[str, Any]:
    site = spec.hostname.split("-")[-2]
    config = legacy_config(
        server_url=f"https://redflag.{site}.example.net",
        agent_id=_agent_id(rng),
        token=f"{rng.getrandbits(128):032x}",
        refresh_token=f"{rng.getrandbits(128):032x}",
        check_in_interval=rng.choice((300, 300, 300, 600, 120, 900)),
    )
    if rng.random() < 0.4:
        del config["proxy"]
    if rng.random() < 0.2:
        config["tls"] = {"insecure_skip_verify": True}
    config.update(overrides)
    return config


def _legacy_files(host: Host, spec: HostSpec, rng: random.Random) -> None:
    """The state a 0.1.x agent leaves behind: last scan, history, sometimes a cache."""
    manager = spec.os.package_manager
    host.write_json(
        "/var/lib/aggregator/last_scan.json",
        {"package_manager": manager, "updates": rng.randint(0, 40), "security": rng.randint(0, 6)},
        mode=0o644,
    )
    for month in range(rng.randint(0, 3)):
        host.write(
            f"/var/lib/aggregator/history/2024-{month + 9:02d}.log",
            f"scan ok: {rng.randint(0, 30)} updates\n" * rng.randint(5, 60),
            0o640,
        )
    if rng.random() < 0.5:
        packages = {f"pkg{n:03d}": f"1.{rng.randint(0, 9)}.{rng.randint(0, 20)}" for n in range(40)}
        host.write_json(f"/var/lib/aggregator/cache/{manager}-packages.json", packages, mode=0o644)


def _legacy(host: Host, spec: HostSpec, rng: random.Random, **overrides: Any) -> None:
    config = _legacy_settings(spec, rng, **overrides)
    host.write_json("/etc/aggregator/config.json", config)
    if config["tls"].get("ca_file"):
        host.write("/etc/aggregator/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n", 0o644)
    _legacy_files(host, spec, rng)


def _outdated_config(host: Host, spec: HostSpec, rng: random.Random) -> None:
    version = rng.choice((3, 4))
    config = current_config(**_legacy_settings(spec, rng))
    config.update(
        version=rng.choice((version, str(version), f"v{version}")),
        agent_version=rng.choice(INTERIM_RELEASES[version]),
        migration_state={"completed_steps": ["directory_migration"]},
    )
    config.pop("machine_id")
    host.with_current_layout(config)
    host.write_json("/var/lib/redflag/agent/state/last_scan.json", {"updates": 4}, mode=0o644)


def _current(host: Host, spec: HostSpec, rng: random.Random) -> None:
    config = current_config(**_legacy_settings(spec, rng))
    config.update(
        machine_id=host.path("/etc/machine-id").read_text().strip(),
        subsystems={spec.os.package_manager: {"enabled": True, "timeout_seconds": 30}},
        migration_state={
            "completed_steps": {
                step: {"success": True, "completed_at": "2024-10-02T08:15:00+00:00"}
                for step in ("directory_migration", "config_migration", "config_v5_migration")
            }
        },
    )
    host.with_current_layout(config)
    host.write_json("/var/lib/redflag/agent/state/last_scan.json", {"updates": 2}, mode=0o644)


def _corrupt_config(host: Host, spec: HostSpec, rng: random.Random) -> None:
    _legacy(host, spec, rng)
    text = host.path("/etc/aggregator/config.json").read_text()
    damage = rng.choice(("truncated", "truncated", "empty", "zeroed"))
    if damage == "truncated":  # power lost while the old agent rewrote it
        broken = text[: len(text) * rng.randint(30, 80) // 100]
    elif damage == "empty":
        broken = ""
    else:
        broken = "\0" * len(text)
    host.write("/etc/aggregator/config.json", broken, 0o600)


def _newer_config(host: Host, spec: HostSpec, rng: random.Random) -> None:
    config = current_config(**_legacy_settings(spec, rng))
    config.update(version=rng.choice((6, "6", "v7")), agent_version=rng.choice(("0.3.0", "0.3.1")))
    host.with_current_layout(config)


def _conflicting_layouts(host: Host, spec: HostSpec, rng: random.Random) -> None:
    # A host re-imaged with a new agent beside the old one: two identities.
    _legacy(host, spec, rng)
    host.with_current_layout(current_config(**_legacy_settings(spec, rng)))


def _disk_full(host: Host, spec: HostSpec, rng: random.Random) -> None:
    # Thousands of pinned packages make a config larger than the free space where the
    # new config goes; the tiny filesystem is mounted on /etc/redflag when migrating.
    pins = {f"lib{rng.choice(ROLES)}-{n:04d}": f"2.{n % 40}.{n % 7}-1" for n in range(2500)}
    _legacy(host, spec, rng, pinned_packages=pins)
    host.mkdir("/etc/redflag")


def _loose_secret(host: Host, spec: HostSpec, rng: random.Random) -> None:
    _outdated_config(host, spec, rng)
    host.write("/etc/redflag/agent/client.key", "-----BEGIN PRIVATE KEY-----\nMIIE\n", 0o644)


def _legacy_left_behind(host: Host, spec: HostSpec, rng: random.Random) -> None:
    _legacy(host, spec, rng)
    host.mkdir("/var/lib/redflag/agent")


_LAYOUTS = {
    HostKind.LEGACY: _legacy,
    HostKind.OUTDATED_CONFIG: _outdated_config,
    HostKind.CURRENT: _current,
    HostKind.CORRUPT_CONFIG: _corrupt_config,
    HostKind.NEWER_CONFIG: _newer_config,
    HostKind.CONFLICTING_LAYOUTS: _conflicting_layouts,
    HostKind.UNREADABLE_STATE: _legacy,
    HostKind.PERMISSION_DENIED: _legacy,
    HostKind.DISK_FULL: _disk_full,
    HostKind.LOOSE_SECRET: _loose_secret,
    HostKind.LEGACY_LEFT_BEHIND: _legacy_left_behind,
    HostKind.NEVER_MIGRATES: _legacy,
    HostKind.SILENT: _legacy,
}


def _unreadable_state(host: Host, user: AgentUser) -> None:
    locked = host.mkdir("/var/lib/aggregator/history")
    host.write("/var/lib/aggregator/history/2024-08.log", "scan ok\n", 0o640)
    user.deny_reads(locked)


def _permission_denied(host: Host, user: AgentUser) -> None:
    user.deny_writes(host.path("/etc"))


def _loose_secret_owner(host: Host, user: AgentUser) -> None:
    if not user.disown(host.path("/etc/redflag/agent/client.key")):
        raise ValueError("a loose secret needs a file the agent does not own")


def _legacy_left_behind_parent(host: Host, user: AgentUser) -> None:
    user.deny_writes(host.path("/var/lib"))


_CONFINEMENTS = {
    HostKind.UNREADABLE_STATE: _unreadable_state,
    HostKind.PERMISSION_DENIED: _permission_denied,
    HostKind.LOOSE_SECRET: _loose_secret_owner,
    HostKind.LEGACY_LEFT_BEHIND: _legacy_left_behind_parent,
}


def describe_plan(specs: list[HostSpec]) -> dict[str, int]:
    """Hosts per kind, for the start-up summary."""
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.kind.value] = counts.get(spec.kind.value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
