"""The layout: every path resolved under the root, never outside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.layout import Layout, RootError


def test_paths_resolve_under_the_root(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)

    assert layout.legacy_config == tmp_path / "etc/aggregator/config.json"
    assert layout.config == tmp_path / "etc/redflag/agent/config.json"
    assert layout.state_dir == tmp_path / "var/lib/redflag/agent/state"
    assert layout.reporting_dir == tmp_path / "var/lib/redflag/agent/reporting"
    assert layout.fallback_spool_dirs(1000) == (
        tmp_path / "var/tmp/redflag-agent-1000",
        tmp_path / "tmp/redflag-agent-1000",
    )
    assert layout.logical(layout.config_dir) == "/etc/redflag/agent"
    assert layout.logical(tmp_path) == "/"


def test_default_root_is_the_real_root() -> None:
    assert Layout.at().config == Path("/etc/redflag/agent/config.json")


def test_paths_cannot_climb_out_of_the_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="would leave the root"):
        Layout.at(tmp_path).path("/etc/../../outside")


def test_missing_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RootError, match="is not an existing directory"):
        Layout.at(tmp_path / "missing")


def test_contains_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root/in").symlink_to(tmp_path / "root")
    (tmp_path / "root/out").symlink_to(tmp_path)
    layout = Layout.at(tmp_path / "root")

    assert layout.contains(layout.root / "in")
    assert not layout.contains(layout.root / "out")
