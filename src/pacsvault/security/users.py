"""Users: named people with a role and an argon2id password hash, kept in the index.

There is no default user. Passwords are generated (never chosen at a prompt that
could echo) and shown once; only their argon2id hash is stored.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from pacsvault.storage import schema as s
from pacsvault.storage.index import Index

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _HASHER.hash("pacsvault timing equaliser")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class Role(StrEnum):
    """What a user is for; the access policy maps roles to permissions."""

    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    PHYSICIAN = "physician"
    TECHNOLOGIST = "technologist"
    AUDITOR = "auditor"


class UserError(ValueError):
    """Invalid user operation (unknown user, bad name or role...)."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    disabled: bool


def generate_password() -> str:
    """A random password of about 128 bits."""
    return secrets.token_urlsafe(16)


class UserRegistry:
    """Users stored in the index."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, name: str, role: str) -> str:
        """Create a user with a generated password; returns the password (shown once)."""
        if not _NAME_RE.match(name):
            raise UserError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
        try:
            role_value = Role(role)
        except ValueError:
            raise UserError(f"unknown role '{role}' (known: {', '.join(Role)})") from None
        password = generate_password()
        now = time.time()
        try:
            with self.index.engine.begin() as conn:
                conn.execute(
                    insert(s.users).values(
                        name=name,
                        role=role_value.value,
                        password_hash=_HASHER.hash(password),
                        disabled=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise UserError(f"user '{name}' exists") from None
        return password

    def _update(self, name: str, **values: object) -> None:
        with self.index.engine.begin() as conn:
            done = conn.execute(
                update(s.users)
                .where(s.users.c.name == name)
                .values(**values, updated_at=time.time())
            ).rowcount
        if not done:
            raise UserError(f"no user named '{name}'")

    def set_disabled(self, name: str, disabled: bool) -> None:
        self._update(name, disabled=int(disabled))

    def new_password(self, name: str) -> str:
        """Replace the user's password with a generated one; returns it (shown once)."""
        password = generate_password()
        self._update(name, password_hash=_HASHER.hash(password))
        return password

    def get(self, name: str) -> User | None:
        with self.index.engine.connect() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).mappings().first()
        return User(row["name"], Role(row["role"]), bool(row["disabled"])) if row else None

    def list(self) -> list[User]:
        with self.index.engine.connect() as conn:
            rows = conn.execute(select(s.users).order_by(s.users.c.name)).mappings().all()
        return [User(r["name"], Role(r["role"]), bool(r["disabled"])) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The enabled user whose password this is, else None (same cost either way)."""
        with self.index.engine.connect() as conn:
            row = conn.execute(select(s.users).where(s.users.c.name == name)).mappings().first()
        stored = row["password_hash"] if row else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None or row["disabled"]:
            return None
        return User(row["name"], Role(row["role"]), False)
