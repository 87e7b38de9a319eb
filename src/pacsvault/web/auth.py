"""Who is calling over HTTPS: a browser session or a bearer token, as a Principal.

Every route but ``/healthz`` and the login page needs one or the other. A session is
a cookie (``__Host-pv_session``: Secure, HttpOnly, SameSite=Strict, path /) whose
secret is stored hashed, with idle and absolute limits; every state change made
with a session must carry the session's CSRF token in ``X-CSRF-Token`` (the token is
handed out at login and by ``GET /api/session``; a request without it is refused and
audited). Programs and viewers send ``Authorization: Bearer`` instead, which needs no
CSRF token since no browser attaches it on its own. The one AccessPolicy decides both.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from pacsvault.security.audit import Action
from pacsvault.security.identity import Actor, Principal, Refusal
from pacsvault.security.policy import AccessPolicy
from pacsvault.security.tokens import digest, new_secret
from pacsvault.storage.web_sessions import WebSessionRepository

SESSION_COOKIE = "__Host-pv_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthorized(HTTPException):
    """401: no credentials, or credentials that prove nothing (the same answer for all)."""

    def __init__(self, detail: str = "authentication required") -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": 'Bearer realm="pacsvault"'})


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


@dataclass(frozen=True)
class NewSession:
    secret: str  # for the cookie
    csrf: str  # for the page, sent back in X-CSRF-Token


class Sessions:
    """Starts and ends browser sessions; checks CSRF tokens."""

    def __init__(self, repo: WebSessionRepository, absolute: float) -> None:
        self.repo = repo
        self.absolute = absolute

    def start(self, principal: Principal, address: str) -> NewSession:
        assert principal.user is not None
        new = NewSession(new_secret(), new_secret())
        self.repo.create_session(digest(new.secret), principal.user.name, digest(new.csrf),
                                 address, time.time() + self.absolute)  # fmt: skip
        return new

    def end(self, secret: str) -> bool:
        return self.repo.end_session(digest(secret))

    def csrf_ok(self, secret: str, token: str | None) -> bool:
        record = self.repo.session(digest(secret))
        return (
            bool(token)
            and record is not None
            and hmac.compare_digest(digest(token or ""), record.csrf_hash)
        )

    def new_csrf(self, secret: str) -> str | None:
        """A fresh CSRF token for the session (the old one stops working)."""
        token = new_secret()
        if not self.repo.set_csrf(digest(secret), digest(token)):
            return None
        return token


class AnonymousRecords:
    """Which requests without credentials are recorded in the audit trail: the first from
    an address in each *window* seconds, so that a scan is on record while a flood
    from one address cannot fill the trail (or the disk) one durable record a request."""

    def __init__(self, window: float = 60.0, addresses: int = 10_000) -> None:
        self.window = window
        self.addresses = addresses
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def should_record(self, address: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(address, -self.window) < self.window:
                return False
            if len(self._last) >= self.addresses:  # forget the quiet ones
                self._last = {a: t for a, t in self._last.items() if now - t < self.window}
                if len(self._last) >= self.addresses:
                    return False
            self._last[address] = now
            return True


ANONYMOUS = AnonymousRecords()
#: Where this records a request without credentials: DICOMweb (the admin API records
#: its own, naming the operation; a page without a session goes to the login page).
RECORDED_AREAS = frozenset({"/dicom-web"})


def authenticate(request: Request, policy: AccessPolicy, sessions: Sessions) -> Principal:
    """The principal of *request*, or 401. A session's state change without its CSRF
    token is refused with 403 (it may be a forged cross-site request)."""
    address = client_address(request)
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        outcome = policy.authenticate_bearer(header[7:].strip(), address)
        if isinstance(outcome, Refusal):
            raise Unauthorized("invalid token")
        return outcome
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        area = "/".join(request.url.path.split("/")[:2])
        if area in RECORDED_AREAS and ANONYMOUS.should_record(address):
            policy.refuse(Actor.unknown(address), Action.LOGIN,
                          f"no credentials for {request.method} {area}")  # fmt: skip
        raise Unauthorized()
    outcome = policy.authenticate_session(secret, address)
    if isinstance(outcome, Refusal):
        raise Unauthorized("session expired or unknown: log in again")
    if request.method not in SAFE_METHODS and not sessions.csrf_ok(
        secret, request.headers.get(CSRF_HEADER)
    ):
        policy.refuse(outcome.actor, Action.LOGIN, "session request without its CSRF token")
        raise HTTPException(403, "missing or wrong CSRF token")
    return outcome
