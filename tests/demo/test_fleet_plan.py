"""The demo's pure parts: the fleet plan, the layouts, the agent command lines, the manifest."""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.detection import DetectionOutcome, detect
from agent.layout import Layout
from demo.confinement import AgentUser, AgentUserMode, TinyDisk
from demo.driver import Action, AgentRunner, FleetHost
from demo.fleet import CONFINED_KINDS, HostKind, build_host, plan_fleet, plan_host
from demo.layouts import remove_tree
from demo.supervisor import (
    DemoError,
    Manifest,
    absolute_database_url,
    check_in_interval,
    join_window,
)
from demo.updates import PackageManager, Update
from tests.demo.conftest import sandbox_directory


@pytest.fixture
def sandbox() -> Iterator[Path]:
    path = sandbox_directory("redflag-demo-plan-")
    yield path
    remove_tree(path)


def test_host_number_i_is_the_same_host_whatever_the_fleet_size() -> None:
    assert plan_fleet(60)[:20] == plan_fleet(20)
    assert plan_host(41) == plan_fleet(50)[41]


def test_the_first_hosts_are_one_of_every_kind() -> None:
    first = plan_fleet(len(HostKind))

    assert [spec.kind for spec in first] == list(HostKind)


def test_hostnames_stay_unique_in_a_large_fleet() -> None:
    names = [spec.hostname for spec in plan_fleet(3000)]

    assert len(set(names)) == len(names)


def test_substituted_kinds_never_appear() -> None:
    fleet = plan_fleet(200, substitutes={HostKind.DISK_FULL: HostKind.PERMISSION_DENIED})

    kinds = {spec.kind for spec in fleet}
    assert HostKind.DISK_FULL not in kinds
    assert HostKind.PERMISSION_DENIED in kinds


@pytest.mark.parametrize(
    ("hosts", "interval", "window"),
    [(5, 60, 90.0), (50, 60, 90.0), (500, 500, 500.0), (10_000, 3600, 10_000.0)],
)
def test_check_ins_come_about_once_a_second_within_the_servers_limits(
    hosts: int, interval: int, window: float
) -> None:
    assert check_in_interval(hosts) == interval
    assert join_window(hosts) == window


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./var/redflag.db", "sqlite:////srv/app/var/redflag.db"),
        ("sqlite:////data/redflag.db", "sqlite:////data/redflag.db"),
        ("postgresql+psycopg://u:secret@db/redflag", "postgresql+psycopg://u:secret@db/redflag"),
    ],
)
def test_relative_sqlite_paths_are_made_absolute_for_every_process(url: str, expected: str) -> None:
    assert absolute_database_url(url, Path("/srv/app")) == expected


@pytest.mark.parametrize(
    ("kind", "outcome", "message"),
    [
        (HostKind.LEGACY, DetectionOutcome.NEEDED, None),
        (HostKind.OUTDATED_CONFIG, DetectionOutcome.NEEDED, None),
        (HostKind.CURRENT, DetectionOutcome.NOT_NEEDED, None),
        (HostKind.CORRUPT_CONFIG, DetectionOutcome.FAILED, "is not valid JSON"),
        (HostKind.NEWER_CONFIG, DetectionOutcome.FAILED, "newer than this agent supports"),
        (HostKind.CONFLICTING_LAYOUTS, DetectionOutcome.FAILED, "conflicting layouts"),
        (HostKind.DISK_FULL, DetectionOutcome.NEEDED, None),
    ],
)
def test_each_layout_is_what_the_agents_detection_expects(
    sandbox: Path, kind: HostKind, outcome: DetectionOutcome, message: str | None
) -> None:
    spec = next(spec for spec in plan_fleet(len(HostKind)) if spec.kind is kind)
    build_host(spec, sandbox / spec.hostname, AgentUser(AgentUserMode.SELF))

    found = detect(Layout.at(sandbox / spec.hostname))

    assert found.outcome is outcome
    if message is not None:
        assert found.failure is not None
        assert message in found.failure.message


def test_host_names_itself_and_its_os(sandbox: Path) -> None:
    spec = plan_host(0)
    root = sandbox / spec.hostname

    build_host(spec, root, AgentUser(AgentUserMode.SELF))

    assert (root / "etc/hostname").read_text() == spec.hostname + "\n"
    assert f'VERSION_ID="{spec.os.version_id}"' in (root / "etc/os-release").read_text()
    assert len((root / "etc/machine-id").read_text().strip()) == 32


def test_layouts_that_take_permissions_away_are_still_removed(sandbox: Path) -> None:
    locked = sandbox / "host" / "var/lib/aggregator/history"
    locked.mkdir(parents=True)
    (locked / "2024-09.log").write_text("scan ok\n")
    locked.chmod(0o000)
    (sandbox / "host" / "etc").mkdir()
    (sandbox / "host" / "etc").chmod(0o555)

    remove_tree(sandbox / "host")

    assert not (sandbox / "host").exists()


def test_agent_commands_confine_the_hosts_that_need_it() -> None:
    user = AgentUser(AgentUserMode.NOBODY)
    runner = AgentRunner("http://127.0.0.1:8000", user, TinyDisk(("unshare", "--mount")))
    confined = FleetHost(plan_host(list(HostKind).index(HostKind.PERMISSION_DENIED)), Path("/h"))
    disk_full = FleetHost(plan_host(list(HostKind).index(HostKind.DISK_FULL)), Path("/d"))

    assert confined.spec.kind in CONFINED_KINDS
    assert runner.command(confined, Action.CHECK_IN)[:5] == [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", runner.python,
    ]  # fmt: skip
    migrate = runner.command(disk_full, Action.MIGRATE)
    assert migrate[:4] == ["unshare", "--mount", "--", "sh"]
    assert migrate[6] == "/d/etc/redflag"
    assert migrate[-5:] == ["--root", "/d", "migrate", "--max-wait", "10"]
    assert runner.command(disk_full, Action.REGISTER)[0] == runner.python


def test_package_manager_discovers_an_update_then_installs_it_or_fails() -> None:
    outcomes: list[Update] = []
    manager = PackageManager("dnf", random.Random(3))

    for _ in range(40):
        outcomes.append(manager.next_update())

    for before, after in itertools.pairwise(outcomes):
        if before.outcome == "discovered":
            assert after.outcome in ("installed", "failed")
            assert after.package == before.package
    assert {u.outcome for u in outcomes} >= {"discovered", "installed"}
    failed = [u for u in outcomes if u.outcome == "failed"]
    assert all(u.error and "--error" in u.arguments() for u in failed)
    assert all(u.package_manager == "dnf" for u in outcomes)


def test_manifest_refuses_another_database_or_server(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "fleet.json")
    manifest.update(server_url="http://127.0.0.1:8000", database="sqlite:////a.db", hosts=[])
    again = Manifest.load(tmp_path / "fleet.json")

    again.check(server_url="http://127.0.0.1:8000", database="sqlite:////a.db")
    with pytest.raises(
        DemoError, match=re.escape("enrolled in sqlite:////a.db, not sqlite:////b.db")
    ):
        again.check(server_url="http://127.0.0.1:8000", database="sqlite:////b.db")
    with pytest.raises(DemoError, match="use the same --api-port"):
        again.check(server_url="http://127.0.0.1:9000", database="sqlite:////a.db")


def test_manifest_keeps_hosts_it_is_not_told_about(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "fleet.json")
    manifest.update(hosts=[{"index": 0, "agent_id": "a"}, {"index": 1, "agent_id": "b"}])

    manifest.update(hosts=[{"index": 0, "agent_id": "c"}])

    assert Manifest.load(tmp_path / "fleet.json").agent_ids() == ["c", "b"]
    assert os.stat(tmp_path / "fleet.json").st_size > 0
