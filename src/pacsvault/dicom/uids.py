"""UID validation (PS3.5 section 9.1), strict where it matters and lenient where it is safe.

A *valid* UID is 1 to 64 characters of digits and dots, made of non-empty numeric
components, none of which has a leading zero unless it is the single digit "0".
Modalities in the field emit UIDs with leading zeros (``999.999.01.23``); refusing
them loses studies, and they are harmless as file names and keys. So pacsvault
accepts every *safe* UID: digits and dots only, at most 64 characters, no empty
component. Every UID is checked here before it becomes part of a path, a key or a
query; anything else (spaces, letters, newlines, ``..``) is refused.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
_SAFE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_VALID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_safe_uid(value: object) -> bool:
    """True if *value* is a string of digit components joined by dots, 1-64 characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _SAFE_RE.fullmatch(value) is not None
    )


def is_valid_uid(value: object) -> bool:
    """True if *value* is a safe UID that also conforms to PS3.5 (no leading zeros)."""
    return is_safe_uid(value) and _VALID_RE.fullmatch(value) is not None  # type: ignore[arg-type]


class InvalidUID(ValueError):
    """Raised when a UID is not safe to use. The message never echoes the value."""


def require_uid(value: object, what: str) -> str:
    """Return *value* if it is a safe UID, else raise :class:`InvalidUID` naming *what*."""
    if not is_safe_uid(value):
        raise InvalidUID(f"{what} is missing or not a valid UID")
    return value  # type: ignore[return-value]
