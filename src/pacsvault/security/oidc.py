"""OpenID Connect bearer tokens: checked against the configured issuer's keys (JWKS).

A token is accepted when its signature verifies with a key the issuer publishes, it
was issued by that issuer for our audience, it has not expired, and one of the
values of the configured role claim maps to a pacsvault role. The user it names
need not exist locally; a local user of the same name lends its physician links.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from typing import TYPE_CHECKING, Any

import jwt

from pacsvault.security.identity import Principal, Proof, Refusal, RefusalReason
from pacsvault.security.users import Role, User

if TYPE_CHECKING:
    from pacsvault.security.policy import AccessPolicy

log = logging.getLogger("pacsvault.oidc")

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
_NAME_RE = re.compile(r"[^A-Za-z0-9_.@-]")


class OidcVerifier:
    """Verifies OpenID Connect access tokens of one issuer."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str = "",
        role_claim: str = "roles",
        roles: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.role_claim = role_claim
        self.roles = {claim: Role(role) for claim, role in (roles or {}).items()}
        self.timeout = timeout
        self._jwks_url = jwks_url
        self._client: jwt.PyJWKClient | None = None

    def _keys(self) -> jwt.PyJWKClient:
        if self._client is None:
            url = self._jwks_url or self._discover()
            self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=600,
                                           timeout=int(self.timeout))  # fmt: skip
        return self._client

    def _discover(self) -> str:
        """The issuer's jwks_uri, from its OpenID configuration document."""
        url = f"{self.issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=self.timeout) as response:
            document: dict[str, Any] = json.load(response)
        return str(document["jwks_uri"])

    def role_of(self, claims: dict[str, Any]) -> Role | None:
        """The most privileged mapped role among the token's role claim values."""
        values = claims.get(self.role_claim, [])
        if isinstance(values, str):
            values = values.split()
        mapped = [self.roles[v] for v in values if isinstance(v, str) and v in self.roles]
        order = list(Role)
        return min(mapped, key=order.index) if mapped else None

    def verify(self, token: str, address: str, policy: AccessPolicy) -> Principal | Refusal:
        """The principal a token names, or why it is refused (never raises)."""
        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, key.key, algorithms=ALGORITHMS, audience=self.audience,
                issuer=self.issuer, options={"require": ["exp", "iss", "sub"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            return Refusal(RefusalReason.IDENTITY, "OIDC token expired")
        except (jwt.PyJWKClientError, jwt.InvalidTokenError, OSError, ValueError, KeyError) as exc:
            return Refusal(RefusalReason.IDENTITY, f"OIDC token refused ({type(exc).__name__})")
        role = self.role_of(claims)
        if role is None:
            return Refusal(RefusalReason.IDENTITY, "OIDC token carries no mapped role")
        name = _NAME_RE.sub("_", str(claims.get("preferred_username") or claims["sub"]))[:64]
        local = policy.identities.users.get(name) if policy.identities else None
        physicians = local.physicians if local is not None and not local.disabled else ()
        return policy.user_principal(User(name, role, False, physicians), address, Proof.JWT)
