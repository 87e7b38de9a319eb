"""Users: named people with a role, linked physician names and an argon2id password hash.

The model, roles and password handling; the users themselves live in the index
(storage.users). There is no default user. Passwords are generated (never chosen at
a prompt that could echo) and shown once; only their argon2id hash is stored.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _HASHER.hash("pacsvault timing equaliser")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Role(StrEnum):
    """What a user is for; the access policy maps each role to permissions."""

    ADMIN = "admin"  # everything
    RADIOLOGIST = "radiologist"  # read every study, store
    REFERRER = "referrer"  # read only linked or shared studies
    UPLOADER = "uploader"  # store only
    AUDITOR = "auditor"  # the audit trail only


class UserError(ValueError):
    """Invalid user operation (unknown user, bad name or role...)."""


class UnknownUser(UserError):
    """There is no user of that name."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    disabled: bool = False
    physicians: tuple[str, ...] = field(default=())  # linked ReferringPhysicianName values


def validate_user_name(name: str) -> str:
    """*name* if it is a valid user name; raises UserError otherwise."""
    if not _NAME_RE.match(name):
        raise UserError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def parse_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"unknown role '{role}' (known: {', '.join(Role)})") from None


def generate_password() -> str:
    """A random password of about 128 bits."""
    return secrets.token_urlsafe(16)


def hash_password(password: str) -> str:
    """The argon2id hash to store for *password*."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when *password* matches *stored_hash*; the same cost when there is no user
    (None), so a timing difference does not tell which names exist."""
    try:
        _HASHER.verify(stored_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return stored_hash is not None
