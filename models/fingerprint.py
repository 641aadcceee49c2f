"""Error fingerprints: the same failure on many hosts must give one group.

A fingerprint is a hash of the event type and the error message with everything that
varies from host to host masked: UUIDs, IP addresses, paths, URLs, hostnames, hex ids and
numbers. The masked message (the "signature") is kept beside the hash so that an admin
can read the rule that made a group.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple


class _Mask(NamedTuple):
    """A pattern, what replaces it, and what every match of it contains: literal text, and
    a pattern (`hint`) that starts with a literal, so that searching for it is much cheaper
    than trying the mask at every position. A mask whose text or hint is absent is skipped,
    which saves most of the regex work on a typical message."""

    pattern: re.Pattern[str]
    placeholder: str
    required: tuple[str, ...]
    hint: re.Pattern[str] | None = None


def _mask(
    pattern: str, placeholder: str, *required: str, flags: int = 0, hint: str | None = None
) -> _Mask:
    compiled_hint = re.compile(hint, flags) if hint is not None else None
    return _Mask(re.compile(pattern, flags), placeholder, required, compiled_hint)


# Order matters: the wide patterns (URLs, UUIDs, paths) go first so that the narrow ones
# (hex, numbers) do not cut them into pieces.
_MASKS: tuple[_Mask, ...] = (
    _mask(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", "<url>", "://", flags=re.IGNORECASE),
    _mask(
        r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b",
        "<uuid>",
        flags=re.IGNORECASE,
    ),
    _mask(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<ip>", ".", hint=r"\.\d{1,3}\."),
    _mask(
        r"(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])",
        "<ip>",
        ":",
        flags=re.IGNORECASE,
        hint=r":[0-9a-f]{0,4}:",
    ),
    _mask(r"\[[0-9a-f:]*:[0-9a-f:]*\](?::\d+)?", "<ip>", "[", ":", flags=re.IGNORECASE),
    # Absolute POSIX paths and Windows drive paths; a path ends at whitespace, a quote or
    # a closing bracket, and trailing punctuation is not part of it.
    _mask(r"(?:(?<=\s)|(?<=^)|(?<=[\"'(\[=:]))(?:/[^\s'\"()\[\]<>,;]+)+(?<![.:])", "<path>", "/"),
    _mask(r"\b[a-z]:\\[^\s'\"]+", "<path>", ":\\", flags=re.IGNORECASE),
    # Fully qualified host names: two or more dot-separated labels ending in a letter TLD.
    _mask(
        r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\b(?!\()",
        "<host>",
        ".",
        flags=re.IGNORECASE,
        hint=r"\.[a-z]{2}",
    ),
    _mask(r"\b0x[0-9a-f]+\b", "<hex>", "0", flags=re.IGNORECASE, hint=r"0x[0-9a-f]"),
    _mask(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", "<hex>", flags=re.IGNORECASE),
    _mask(r"\d+(?:\.\d+)*", "<n>"),
)

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
        text = _mask_hostname(text, hostname)
    for mask in _MASKS:
        if all(part in text for part in mask.required) and (
            mask.hint is None or mask.hint.search(text)
        ):
            text = mask.pattern.sub(mask.placeholder, text)
    # Whitespace runs collapsed to one space, none at either end (`str.split` takes the
    # characters `\s` matches as whitespace).
    return " ".join(text.split())


def _mask_hostname(text: str, hostname: str) -> str:
    """Every occurrence of hostname in text, in any case, replaced by "<host>".

    ASCII text and names, nearly all of them, are searched in lower case: a pattern per
    host would be compiled again and again once a fleet has more hosts than `re` caches.
    """
    if not (text.isascii() and hostname.isascii()):
        return re.sub(re.escape(hostname), "<host>", text, flags=re.IGNORECASE)
    lowered, needle = text.lower(), hostname.lower()
    parts: list[str] = []
    start = 0
    while (found := lowered.find(needle, start)) != -1:
        parts += (text[start:found], "<host>")
        start = found + len(needle)
    return "".join([*parts, text[start:]]) if parts else text


def fingerprint(event_type: str, message: str, *, hostname: str | None = None) -> str:
    """A short stable id for (event type, signature): equal for the same failure."""
    signature = error_signature(message, hostname=hostname)
    digest = hashlib.sha256(f"{event_type}\x1f{signature}".encode()).hexdigest()
    return digest[:FINGERPRINT_LENGTH]
