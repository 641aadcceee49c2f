"""The agent config schema across versions: parsing, version rules and conversion, all pure."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CURRENT_CONFIG_VERSION = 5
# The last release of the legacy layout; its configs carry no version, so an unversioned
# config says only "this release or an earlier one".
LEGACY_AGENT_VERSION = "<=0.1.18"
SECRET_FILE_PATTERNS = ("config.json", "*.key", "*token*", "*secret*", "*credential*")
DEFAULT_SUBSYSTEM_NAMES = ("apt", "dnf", "docker", "storage", "system")
DEFAULT_SUBSYSTEM_TIMEOUT_SECONDS = 30

_VERSION_TEXT = re.compile(r"^[vV]?(\d+)(?:\.\d+)*$")


class MigrationStep(StrEnum):
    """The migrations detection can ask for, in the order execution runs them."""

    DIRECTORY_MIGRATION = "directory_migration"
    CONFIG_MIGRATION = "config_migration"
    CONFIG_V5_MIGRATION = "config_v5_migration"
    SECURITY_HARDENING = "security_hardening"


class ConfigError(ValueError):
    """A config that this agent cannot read or must not touch."""


def parse_config(data: bytes) -> dict[str, Any]:
    """The config object in a file's bytes; the error says what is wrong, not where."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"holds a JSON {_json_kind(value)}, not an object")
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def config_version(config: Mapping[str, Any]) -> int:
    """The schema version; 0 for a legacy config, which has none.

    Later agents wrote it as a number or as a string (`5`, `"5"`, `"v5"`, `"5.0"`).
    """
    raw = config.get("version")
    if raw is None:
        return 0
    version: int | None = None
    if isinstance(raw, bool):
        version = None
    elif isinstance(raw, int):
        version = raw
    elif isinstance(raw, float) and raw.is_integer():
        version = int(raw)
    elif isinstance(raw, str) and (match := _VERSION_TEXT.match(raw.strip())):
        version = int(match.group(1))
    if version is None or version < 0:
        raise ConfigError(f"has an unrecognised schema version {raw!r}")
    if version > CURRENT_CONFIG_VERSION:
        raise ConfigError(
            f"has schema version {version}, newer than this agent supports "
            f"({CURRENT_CONFIG_VERSION}); upgrade the agent instead of migrating"
        )
    return version


def completed_steps(config: Mapping[str, Any]) -> set[str]:
    """Steps the config's `migration_state` records as done successfully."""
    state = config.get("migration_state")
    if not isinstance(state, dict):
        return set()
    done: set[str] = set()
    steps = state.get("completed_steps")
    if isinstance(steps, dict):
        done.update(
            name
            for name, record in steps.items()
            if not (isinstance(record, dict) and record.get("success") is False)
        )
    elif isinstance(steps, list):
        done.update(name for name in steps if isinstance(name, str))
    # Older agents kept a flat list under this name.
    legacy_list = state.get("completed_migrations")
    if isinstance(legacy_list, list):
        done.update(name for name in legacy_list if isinstance(name, str))
    return done


def agent_id_of(config: Mapping[str, Any]) -> str | None:
    value = config.get("agent_id")
    return str(value) if value not in (None, "") else None


def missing_security_settings(config: Mapping[str, Any]) -> list[str]:
    """Security settings a current config must carry and this one lacks."""
    missing = []
    if not config.get("machine_id"):
        missing.append("machine_id")
    if not isinstance(config.get("subsystems"), dict):
        missing.append("subsystems")
    return missing


def is_secret_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in SECRET_FILE_PATTERNS)


def default_subsystems() -> dict[str, Any]:
    return {
        name: {"enabled": True, "timeout_seconds": DEFAULT_SUBSYSTEM_TIMEOUT_SECONDS}
        for name in DEFAULT_SUBSYSTEM_NAMES
    }


def describe_version(agent_version: str | None, version: int | None, config_dir: str) -> str:
    """A migration endpoint as admins and the console group it, e.g. `0.2.0 (config v5, /etc/x)`."""
    config = "config unknown" if version is None else f"config v{version}"
    return f"{agent_version or 'unknown'} ({config}, {config_dir})"


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What `migration_state` remembers about one completed step."""

    step: MigrationStep
    completed_at: str
    backup_path: str


@dataclass(slots=True)
class ConvertedConfig:
    config: dict[str, Any]
    rewritten_paths: dict[str, str] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)


def convert_config(
    *,
    legacy: Mapping[str, Any] | None,
    current: Mapping[str, Any] | None,
    steps: Collection[MigrationStep],
    agent_version: str,
    machine_id: str,
    path_map: Mapping[str, str],
    records: Collection[StepRecord],
    migration_from: str,
    migrated_at: str,
) -> ConvertedConfig:
    """The current-schema config: every old setting kept, the new ones added.

    The current config wins over the legacy one where both set a key (it is the newer
    truth); string values naming a file that moved are rewritten to its new place, so TLS
    and similar file settings keep working once the legacy directories are gone.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(legacy or {}))
    merged.update(copy.deepcopy(dict(current or {})))
    result = ConvertedConfig(config={})
    merged = _rewrite_paths(merged, path_map, result.rewritten_paths, "")

    if MigrationStep.SECURITY_HARDENING in steps:
        if not merged.get("machine_id"):
            merged["machine_id"] = machine_id
            result.added.append("machine_id")
        if not isinstance(merged.get("subsystems"), dict):
            merged["subsystems"] = default_subsystems()
            result.added.append("subsystems")
    merged["version"] = CURRENT_CONFIG_VERSION
    merged["agent_version"] = agent_version

    state = merged.get("migration_state")
    state = dict(state) if isinstance(state, dict) else {}
    done = state.get("completed_steps")
    if isinstance(done, list):
        done = {name: {"success": True} for name in done if isinstance(name, str)}
    done = dict(done) if isinstance(done, dict) else {}
    for record in records:
        done[record.step.value] = {
            "completed_at": record.completed_at,
            "backup_path": record.backup_path,
            "agent_version": agent_version,
            "success": True,
        }
    state["completed_steps"] = done
    state["last_migration"] = {
        "at": migrated_at,
        "from": migration_from,
        "agent_version": agent_version,
        "steps": [record.step.value for record in records],
        "backup_path": next(iter(records)).backup_path if records else None,
        "success": True,
    }
    merged["migration_state"] = state
    result.config = merged
    return result


def _rewrite_paths(value: Any, path_map: Mapping[str, str], seen: dict[str, str], key: str) -> Any:
    if isinstance(value, str) and value in path_map:
        seen[key] = path_map[value]
        return path_map[value]
    if isinstance(value, dict):
        return {
            k: _rewrite_paths(v, path_map, seen, f"{key}.{k}" if key else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_paths(v, path_map, seen, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def render_config(config: Mapping[str, Any]) -> bytes:
    """Config bytes as the agent writes them: stable, readable, newline-terminated."""
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
