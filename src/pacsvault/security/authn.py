"""DICOM User Identity Negotiation (PS3.7 D.3.3.7): checking what a requestor claims to be.

Only identities that prove something are accepted: username + passcode (argon2id,
over TLS unless the settings allow otherwise) and JWT (HS256 or RS256 with a
configured key; ``exp`` and ``sub`` required, ``aud`` checked; the subject must be
an enabled local user). A bare username proves nothing and is ignored; Kerberos
and SAML are not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import jwt

from pacsvault.config import SecuritySettings
from pacsvault.security.users import User

USERNAME, USERNAME_PASSCODE, JWT = 1, 2, 5  # PS3.7 D.3.3.7: 3 Kerberos, 4 SAML unused


@dataclass(frozen=True)
class IdentityResult:
    """The verified user, or why there is none. ``claimed`` names the account for lockout."""

    user: User | None
    reason: str
    claimed: str | None = None

    @property
    def ok(self) -> bool:
        return self.user is not None


class AccountDirectory(Protocol):
    """The users, as the identity checks need them."""

    def get(self, name: str) -> User | None: ...

    def authenticate(self, name: str, password: str) -> User | None: ...

    def totp_secret(self, name: str) -> str | None: ...


class IdentityVerifier:
    """Verifies user identity negotiation items against the users and JWT keys."""

    def __init__(self, users: AccountDirectory, settings: SecuritySettings, audience: str) -> None:
        self.users = users
        self.settings = settings
        self.audience = settings.jwt_audience or audience

    def verify(
        self, id_type: int, primary: bytes, secondary: bytes | None, *, tls: bool
    ) -> IdentityResult:
        """Check one identity item. Never raises for bad input."""
        if id_type == USERNAME_PASSCODE:
            name = primary.decode("utf-8", "replace")
            if not tls and not self.settings.allow_passcode_without_tls:
                return IdentityResult(None, "passcode refused over cleartext", name)
            user = self.users.authenticate(name, (secondary or b"").decode("utf-8", "replace"))
            return IdentityResult(user, "" if user else "wrong user name or passcode", name)
        if id_type == JWT:
            return self._jwt(primary.decode("ascii", "replace"))
        if id_type == USERNAME:
            return IdentityResult(None, "a user name without a passcode proves nothing")
        return IdentityResult(None, "unsupported user identity type")

    def claimed_name(self, id_type: int, primary: bytes) -> str | None:
        """The account an identity item names, before any check (for lockout only)."""
        if id_type == USERNAME_PASSCODE:
            return primary.decode("utf-8", "replace")
        if id_type == JWT:
            try:
                sub = jwt.decode(
                    primary.decode("ascii", "replace"), options={"verify_signature": False}
                ).get("sub")
            except (jwt.InvalidTokenError, ValueError):
                return None
            return str(sub) if sub else None
        return None

    def _key(self, alg: str) -> str | bytes | None:
        s = self.settings
        if alg == "HS256" and s.jwt_hs256_key_file:
            return Path(s.jwt_hs256_key_file).read_bytes().strip()
        if alg == "RS256" and s.jwt_rs256_public_key_file:
            return Path(s.jwt_rs256_public_key_file).read_bytes()
        return None

    def _jwt(self, token: str) -> IdentityResult:
        try:
            alg = jwt.get_unverified_header(token).get("alg", "")
            key = self._key(alg)
            if key is None:
                return IdentityResult(None, "JWT algorithm not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return IdentityResult(None, "JWT expired")
        except (jwt.InvalidTokenError, OSError, ValueError):
            return IdentityResult(None, "JWT invalid")
        name = str(claims["sub"])
        user = self.users.get(name)
        if user is None or user.disabled:
            return IdentityResult(None, "JWT subject is not an enabled user", name)
        return IdentityResult(user, "", name)
