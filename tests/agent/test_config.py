"""The config schema rules and conversion, as pure functions."""

from __future__ import annotations

import pytest

from agent.config import (
    ConfigError,
    MigrationStep,
    StepRecord,
    completed_steps,
    config_version,
    convert_config,
    describe_version,
    is_secret_file,
    parse_config,
)


def convert(**overrides: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "legacy": {"agent_id": "a", "tls": {"ca_file": "/etc/aggregator/ca.pem"}},
        "current": None,
        "steps": list(MigrationStep),
        "agent_version": "0.2.0",
        "machine_id": "m" * 32,
        "path_map": {"/etc/aggregator/ca.pem": "/etc/redflag/agent/ca.pem"},
        "records": [StepRecord(MigrationStep.CONFIG_MIGRATION, "2025-01-01T00:00:00+00:00", "/b")],
        "migration_from": "<=0.1.18 (config v0, /etc/aggregator)",
        "migrated_at": "2025-01-01T00:00:01+00:00",
    }
    arguments.update(overrides)
    return convert_config(**arguments).config  # type: ignore[arg-type]


def test_legacy_config_without_version_is_version_zero() -> None:
    assert config_version({"agent_id": "a"}) == 0
    assert config_version({"version": None}) == 0


def test_non_object_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="JSON null, not an object"):
        parse_config(b"null")


def test_conversion_rewrites_moved_paths_and_adds_the_new_settings() -> None:
    config = convert()

    assert config["tls"] == {"ca_file": "/etc/redflag/agent/ca.pem"}
    assert config["version"] == 5
    assert config["machine_id"] == "m" * 32
    assert isinstance(config["subsystems"], dict)


def test_conversion_keeps_an_existing_machine_id_and_subsystems() -> None:
    config = convert(current={"machine_id": "mine", "subsystems": {"apt": {}}, "agent_id": "a"})

    assert config["machine_id"] == "mine"
    assert config["subsystems"] == {"apt": {}}


def test_conversion_upgrades_a_list_migration_state_and_keeps_old_entries() -> None:
    config = convert(current={"migration_state": {"completed_steps": ["directory_migration"]}})

    state = config["migration_state"]
    assert isinstance(state, dict)
    assert state["completed_steps"]["directory_migration"] == {"success": True}
    assert state["completed_steps"]["config_migration"]["backup_path"] == "/b"
    assert completed_steps(config) == {"directory_migration", "config_migration"}


def test_security_settings_are_only_added_by_security_hardening() -> None:
    config = convert(steps=[MigrationStep.CONFIG_MIGRATION])

    assert "machine_id" not in config
    assert "subsystems" not in config


@pytest.mark.parametrize(
    ("name", "secret"),
    [("config.json", True), ("agent.key", True), ("api_token", True), ("last_scan.json", False)],
)
def test_secret_files_are_recognised_by_name(name: str, secret: bool) -> None:
    assert is_secret_file(name) is secret


def test_version_label_reads_like_the_console_groups_it() -> None:
    assert describe_version("0.1.18", 3, "/etc/aggregator") == "0.1.18 (config v3, /etc/aggregator)"
    assert describe_version(None, None, "/etc/x") == "unknown (config unknown, /etc/x)"
