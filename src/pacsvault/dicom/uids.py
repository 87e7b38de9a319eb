"""UID validation (PS3.5 section 9.1).

A valid UID is 1 to 64 characters of digits and dots, made of non-empty numeric
components, none of which has a leading zero unless it is the single digit "0".
Every UID is checked here before it becomes part of a path, a key or a query.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """Return True if *value* is a string that is a valid DICOM UID."""
    if not isinstance(value, str):
        return False
    return 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.match(value) is not None


class InvalidUID(ValueError):
    """Raised when a UID fails PS3.5 validation. The message never echoes the value."""


def require_uid(value: object, what: str) -> str:
    """Return *value* if it is a valid UID, else raise :class:`InvalidUID` naming *what*."""
    if not is_valid_uid(value):
        raise InvalidUID(f"{what} is missing or not a valid UID")
    return value  # type: ignore[return-value]
