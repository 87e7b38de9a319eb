"""Secrets handed to clients: API tokens and session cookies, stored only as hashes.

An API token reads ``pvt_<id>_<secret>``: the id names it in lists and revocations,
the secret (256 random bits) proves it. Only SHA-256 of the secret is stored: the
secret is random, so a slow hash would add cost without adding safety.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pacsvault.security.identity import Permission

_TOKEN_RE = re.compile(r"^pvt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

#: What a token is at a given time: it works only while active.
TokenState = Literal["active", "revoked", "expired"]


class TokenScope(StrEnum):
    """What a token may do, within what its user's role allows."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


SCOPE_PERMISSIONS: dict[TokenScope, frozenset[Permission]] = {
    TokenScope.READ: frozenset(
        {
            Permission.ECHO,
            Permission.QUERY,
            Permission.RETRIEVE,
            Permission.EXPORT,
            Permission.AUDIT,
        }
    ),
    TokenScope.WRITE: frozenset(
        {
            Permission.ECHO,
            Permission.QUERY,
            Permission.RETRIEVE,
            Permission.EXPORT,
            Permission.AUDIT,
            Permission.STORE,
        }
    ),
    TokenScope.ADMIN: frozenset(Permission),
}


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def same_secret(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)


@dataclass(frozen=True)
class NewToken:
    id: str
    secret: str

    @property
    def text(self) -> str:
        """What the user is shown once and sends as ``Authorization: Bearer``."""
        return f"pvt_{self.id}_{self.secret}"


def new_token() -> NewToken:
    return NewToken(secrets.token_hex(8), secrets.token_urlsafe(32))


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None (never raises)."""
    match = _TOKEN_RE.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def new_secret() -> str:
    """A session cookie or CSRF token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class SessionRecord:
    user_name: str
    csrf_hash: str
    created_at: float
    last_seen: float
    expires_at: float


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user_name: str
    secret_hash: str
    scope: TokenScope
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def state(self, now: float) -> TokenState:
        """Whether the token still works at *now*: revoked, expired or active."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now > self.expires_at:
            return "expired"
        return "active"
