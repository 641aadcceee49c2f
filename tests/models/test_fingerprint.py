"""The same failure on many hosts gives one fingerprint; different failures do not."""

from __future__ import annotations

import random
import re

import pytest

from models import fingerprint as fingerprint_module
from models.fingerprint import error_signature, fingerprint

FAILED = "migration_execution_failed"

SAME_FAILURE = [
    (
        "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied",
        "copy /srv/sandbox/host-17/var/lib/aggregator/cache/x.json: [Errno 13] Permission denied",
    ),
    (
        "write /etc/redflag/agent/config.json.tmp-4411: [Errno 28] No space left on device",
        "write /etc/redflag/agent/config.json.tmp-98: [Errno 28] No space left on device",
    ),
    (
        "agent id 7c9e6679-7425-40de-944b-e07fc1f90ae7 in legacy config differs from 16fd2706-8baf-433b-82eb-8c7fada847da",
        "agent id 0b4e3e7c-2f7f-4f8a-9d5a-1c2b3d4e5f60 in legacy config differs from 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
    ),
    (
        "checksum mismatch for state/last_scan.json: expected 3f2a9c81d0e4b7 got 9e1b77aa0c3d12",
        "checksum mismatch for state/last_scan.json: expected 0000aaaa1111bb got ffff22223333cc",
    ),
    (
        "cannot reach server https://redflag.example.com:8443/api/v1 (10.0.0.12:8443): connection refused",
        "cannot reach server https://rf.corp.internal:443/api/v1 (192.168.7.3:443): connection refused",
    ),
    (
        "process 4411 held the lock for 32 s on web-01.corp.example.org",
        "process 17 held the lock for 905 s on db-7.eu.example.net",
    ),
    (
        "free disk 10485760 bytes below the required 52428800 bytes",
        "free disk 0 bytes below the required 52428800 bytes",
    ),
    (
        "config version 7 is newer than this agent supports (5)",
        "config version 12 is newer than this agent supports (5)",
    ),
    (
        "invalid JSON in /etc/aggregator/config.json: Expecting value: line 1 column 1 (char 0)",
        "invalid JSON in /etc/aggregator/config.json: Expecting value: line 14 column 3 (char 402)",
    ),
    (
        "inode 0x7ffe12ab busy on device [fe80::1ff:fe23:4567:890a]:22",
        "inode 0x10 busy on device [::1]:2222",
    ),
    (
        "rename C:\\ProgramData\\RedFlag\\tmp123 failed",
        "rename C:\\ProgramData\\RedFlag\\tmp999 failed",
    ),
]

DIFFERENT_FAILURES = [
    (
        "copy /var/lib/aggregator/a.json: [Errno 13] Permission denied",
        "copy /var/lib/aggregator/a.json: [Errno 28] No space left on device",
    ),
    (
        "invalid JSON in /etc/aggregator/config.json: Expecting value",
        "config /etc/aggregator/config.json is not a JSON object",
    ),
    (
        "config version 7 is newer than this agent supports (5)",
        "config version field 'seven' is not a number",
    ),
    (
        "checksum mismatch for state/last_scan.json: expected abcdef12 got 12abcdef",
        "validation failed: state/last_scan.json missing after copy",
    ),
    (
        "cannot read directory /var/lib/aggregator: [Errno 13] Permission denied",
        "cannot remove directory /var/lib/aggregator: [Errno 39] Directory not empty",
    ),
    ("agent id a in legacy config differs from b", "legacy and current layouts both exist"),
    (
        "could not tighten mode of /etc/redflag/agent/config.json to 0600",
        "could not remove legacy directory /etc/aggregator",
    ),
    (
        "step backup failed: [Errno 28] No space left on device",
        "step copy_state failed: [Errno 28] No space left on device",
    ),
    ("rollback failed after step convert_config", "rollback completed after step convert_config"),
    ("Traceback: KeyError: 'server_url'", "Traceback: KeyError: 'agent_id'"),
]


@pytest.mark.parametrize(("first", "second"), SAME_FAILURE)
def test_same_failure_on_different_hosts_groups_together(first: str, second: str) -> None:
    assert error_signature(first) == error_signature(second)
    assert fingerprint(FAILED, first) == fingerprint(FAILED, second)


@pytest.mark.parametrize(("first", "second"), DIFFERENT_FAILURES)
def test_different_failures_stay_apart(first: str, second: str) -> None:
    assert fingerprint(FAILED, first) != fingerprint(FAILED, second)


def test_event_type_is_part_of_the_fingerprint() -> None:
    message = "invalid JSON in /etc/aggregator/config.json"
    assert fingerprint("migration_detection_failed", message) != fingerprint(FAILED, message)


def test_reporting_hosts_short_name_is_masked() -> None:
    first = fingerprint(FAILED, "lock held by web-01 agent", hostname="web-01")
    second = fingerprint(FAILED, "lock held by mailhub agent", hostname="mailhub")
    assert first == second


def test_signature_shows_the_rule_that_made_the_group() -> None:
    signature = error_signature("copy /var/lib/aggregator/x.json: [Errno 13] Permission denied")
    assert signature == "copy <path>: [Errno <n>] Permission denied"


def test_fingerprint_is_short_hex() -> None:
    value = fingerprint(FAILED, "anything")
    assert len(value) == 16
    int(value, 16)


def _every_mask_everywhere(message: str) -> str:
    """The signature as the masks define it: each applied in turn, nothing skipped."""
    text = message[: fingerprint_module.SIGNATURE_INPUT_CHARS]
    for mask in fingerprint_module._MASKS:
        text = mask.pattern.sub(mask.placeholder, text)
    return re.sub(r"\s+", " ", text).strip()


_SKIP_MESSAGES = [
    "copy /var/lib/aggregator/last_scan.json: [Errno 13] Permission denied",
    "GET https://redflag.example.org:8443/api failed: 0xdeadbeef from [fe80::1]:8080",
    r"cannot open C:\ProgramData\RedFlag\config.json (error 5) on 10.0.0.7:443",
    "checksum 9f86d081884c7d65 != 3c59dc048e885024 for 123e4567-e89b-12d3-a456-426614174000",
    "plain words only",
    "ports 1:2:3 and 0X1F and web-01.corp.example.com",
    "\x1c odd\u00a0spaces\u2003here \t\n",
]
_PIECES = [
    "10.0.0.7",
    "10.1.2",
    "1.2.3.4:80",
    "::1",
    "fe80::1ff:fe23:4567:890a",
    "a:b",
    "1:2:3",
    "[::1]:8443",
    "0x1F",
    "0X",
    "0xg",
    "deadbeef1",
    "/var/lib/x.json",
    "C:\\x",
    "http://a.b/c",
    "host.example.org",
    "web-01",
    "x.y",
    "a.bc",
    ".json",
    "123e4567-e89b-12d3-a456-426614174000",
    "42",
    "3.14",
    ":",
    ".",
    " ",
    "\t",
    "\u00a0",
    "\x1f",
    "(",
    "'",
    "=",
]


def test_skipping_masks_whose_text_is_absent_changes_no_signature() -> None:
    rng = random.Random(5)
    messages = list(_SKIP_MESSAGES)
    for _ in range(3000):
        messages.append(
            "".join(rng.choice([*_PIECES, " ", "err"]) for _ in range(rng.randrange(1, 12)))
        )
    for message in messages:
        assert error_signature(message) == _every_mask_everywhere(message), message
