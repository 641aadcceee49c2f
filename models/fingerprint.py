"""Error fingerprints: the same failure on many hosts must give one group.

A fingerprint is a hash of the event type and the error message with everything that
varies from host to host masked: UUIDs, IP addresses, paths, URLs, hostnames, hex ids and
numbers. The masked message (the "signature") is kept beside the hash so that an admin
can read the rule that made a group.
"""

from __future__ import annotations

import hashlib
import re

# Order matters: the wide patterns (URLs, UUIDs, paths) go first so that the narrow ones
# (hex, numbers) do not cut them into pieces.
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE), "<url>"),
    (
        re.compile(
            r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b",
            re.IGNORECASE,
        ),
        "<uuid>",
    ),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (
        re.compile(r"(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])", re.IGNORECASE),
        "<ip>",
    ),
    (re.compile(r"\[[0-9a-f:]*:[0-9a-f:]*\](?::\d+)?", re.IGNORECASE), "<ip>"),
    # Absolute POSIX paths and Windows drive paths; a path ends at whitespace, a quote or
    # a closing bracket, and trailing punctuation is not part of it.
    (re.compile(r"(?:(?<=\s)|(?<=^)|(?<=[\"'(\[=:]))(?:/[^\s'\"()\[\]<>,;]+)+(?<![.:])"), "<path>"),
    (re.compile(r"\b[a-z]:\\[^\s'\"]+", re.IGNORECASE), "<path>"),
    # Fully qualified host names: two or more dot-separated labels ending in a letter TLD.
    (
        re.compile(
            r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\b(?!\()",
            re.IGNORECASE,
        ),
        "<host>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b", re.IGNORECASE), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", re.IGNORECASE), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)*"), "<n>"),
)
# Literal text each mask cannot match without, in the same order: a mask whose text is
# absent is skipped, which saves most of the regex work on a typical message.
_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("://",),
    (),
    (".",),
    (":",),
    ("[", ":"),
    ("/",),
    (":\\",),
    (".",),
    ("0",),
    (),
    (),
)
_SPACES = re.compile(r"\s+")

FINGERPRINT_LENGTH = 16
# Only the head of a message decides its group: it bounds the regex work per event, and a
# failure is named by its first lines, not by the tail of a traceback.
SIGNATURE_INPUT_CHARS = 4096


def error_signature(message: str, *, hostname: str | None = None) -> str:
    """The message with its host-specific parts masked and whitespace collapsed.

    `hostname` is the reporting host's own name; a short name like `web-01` is not
    recognisable as a host by shape alone, so the caller passes it in to be masked too.
    """
    text = message[:SIGNATURE_INPUT_CHARS]
    if hostname and len(hostname) >= 3:
        text = re.sub(re.escape(hostname), "<host>", text, flags=re.IGNORECASE)
    for (pattern, placeholder), required in zip(_MASKS, _REQUIRED, strict=True):
        if all(part in text for part in required):
            text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()


def fingerprint(event_type: str, message: str, *, hostname: str | None = None) -> str:
    """A short stable id for (event type, signature): equal for the same failure."""
    signature = error_signature(message, hostname=hostname)
    digest = hashlib.sha256(f"{event_type}\x1f{signature}".encode()).hexdigest()
    return digest[:FINGERPRINT_LENGTH]
