"""The demo's stand-in for each host's package manager: which update happens next.

The agent reports these through its real `report-update` command, as a package manager
hook would; only the choice of package and outcome is made up here.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

# (package, installed version, offered version) per package manager.
CATALOG: dict[str, tuple[tuple[str, str, str], ...]] = {
    "apt": (
        ("openssl", "3.0.11-1~deb12u2", "3.0.15-1~deb12u1"),
        ("curl", "7.88.1-10+deb12u5", "7.88.1-10+deb12u8"),
        ("openssh-server", "1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3"),
        ("nginx", "1.22.1-9", "1.22.1-9+deb12u1"),
        ("linux-image-amd64", "6.1.90-1", "6.1.112-1"),
        ("tzdata", "2024a-0+deb12u1", "2024b-0+deb12u1"),
        ("sudo", "1.9.13p3-1+deb12u1", "1.9.13p3-1+deb12u2"),
        ("libc6", "2.36-9+deb12u4", "2.36-9+deb12u8"),
    ),
    "dnf": (
        ("openssl", "1:3.0.7-25.el9_3", "1:3.0.7-27.el9"),
        ("kernel", "5.14.0-427.13.1.el9_4", "5.14.0-427.37.1.el9_4"),
        ("curl", "7.76.1-29.el9_4", "7.76.1-29.el9_4.1"),
        ("openssh-server", "8.7p1-38.el9", "8.7p1-38.el9_4.4"),
        ("glibc", "2.34-100.el9_4.2", "2.34-100.el9_4.3"),
        ("podman", "4.9.4-6.el9_4", "4.9.4-12.el9_4"),
    ),
    "zypper": (
        ("openssl-3", "3.1.4-150600.5.7.1", "3.1.4-150600.5.15.1"),
        ("kernel-default", "6.4.0-150600.23.7.3", "6.4.0-150600.23.22.1"),
        ("curl", "8.6.0-150600.4.3.1", "8.6.0-150600.4.6.1"),
    ),
}
FAILURES: dict[str, tuple[str, ...]] = {
    "apt": (
        "dpkg: error processing package {package} (--configure): installed {package} package "
        "post-installation script subprocess returned error exit status 1",
        "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 2817 "
        "(unattended-upgr)",
        "E: Failed to fetch http://deb.debian.org/debian/pool/main/{initial}/{package}/"
        "{package}_{to_version}_amd64.deb  404  Not Found [IP: 151.101.2.132 80]",
    ),
    "dnf": (
        "Error: Transaction test error: file /usr/lib64/lib{package}.so.3 from install of "
        "{package}-{to_version}.x86_64 conflicts with file from package "
        "{package}-{from_version}.x86_64",
        "Curl error (28): Timeout was reached for https://mirrors.example.net/mirrorlist?"
        "arch=x86_64&repo=BaseOS-9 [Connection timed out after 30001 milliseconds]",
    ),
    "zypper": (
        "Problem occurred during or after installation or removal of packages: "
        "Installation has been aborted as directed.",
    ),
}


@dataclass(frozen=True, slots=True)
class Update:
    """One `redflag-agent report-update` call."""

    outcome: str  # discovered | installed | failed | ignored
    package: str
    from_version: str
    to_version: str
    package_manager: str
    error: str | None = None

    def arguments(self) -> list[str]:
        arguments = [
            self.outcome,
            "--package", self.package,
            "--from-version", self.from_version,
            "--to-version", self.to_version,
            "--package-manager", self.package_manager,
        ]  # fmt: skip
        if self.error:
            arguments += ["--error", self.error]
        return arguments


class PackageManager:
    """Discovers an update, then installs it (or fails to), one step per call."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name if name in CATALOG else "apt"
        self.rng = rng
        self.pending: Update | None = None

    def next_update(self) -> Update:
        if self.pending is not None:
            found, self.pending = self.pending, None
            if self.rng.random() < 0.2:
                message = self.rng.choice(FAILURES[self.name]).format(
                    package=found.package,
                    initial=found.package[0],
                    from_version=found.from_version,
                    to_version=found.to_version,
                )
                return dataclasses.replace(found, outcome="failed", error=message)
            return dataclasses.replace(found, outcome="installed")
        package, installed, offered = self.rng.choice(CATALOG[self.name])
        update = Update("discovered", package, installed, offered, self.name)
        if self.rng.random() < 0.1:
            return dataclasses.replace(update, outcome="ignored")
        self.pending = update
        return update
