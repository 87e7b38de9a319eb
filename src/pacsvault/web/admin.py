"""The admin API under ``/api``: status, users, peers, tokens, shares, lockouts, audit search.

Every route needs an authenticated caller with the ``admin`` permission (the audit
search: ``audit``), checked through the one policy before anything else of the request
is read (:class:`GuardedRoute`). Every change is a call to the same
:class:`~pacsvault.storage.admin.Administration` service the command line uses, which
checks the permission again and writes the change and its audit record in one
transaction; reads use the same repositories and the same
:meth:`~pacsvault.site.Site.status` and
:class:`~pacsvault.storage.audit.AuditFilters` as ``pacsvault status``, ``... list`` and
``audit search``. Secrets the services generate (passwords, API tokens, second-factor
secrets, peer keys) are in the response once; only hashes of passwords and tokens are
kept.

Every refusal is an HTTP error with its reason in ``detail`` and an audit record: 401
(no credentials or wrong ones), 403 (a permission not granted, a session's change
without its CSRF token), and 400, 404 or 413 once the caller is known. Bodies are at
most :data:`MAX_BODY` bytes. A browser session must send its CSRF token with every
change (``web.auth`` enforces it); a bearer token needs none.
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
import time
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from pacsvault import __version__
from pacsvault.dicom.uids import InvalidUID
from pacsvault.security import totp
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Actor, Permission, Principal
from pacsvault.security.peers import (
    CLIENT_CERT_CA,
    IdentityMode,
    Peer,
    PeerError,
    Service,
    TlsMode,
    UnknownPeer,
    new_peer,
)
from pacsvault.security.tokens import TokenRecord, TokenScope, TokenState
from pacsvault.security.users import Role, UnknownUser, User, UserError
from pacsvault.site import Site
from pacsvault.storage.audit import AuditFilters, parse_time
from pacsvault.web.auth import SESSION_COOKIE, Unauthorized, client_address
from pacsvault.web.deps import REFUSAL_ACTIONS, current_principal, invalid_fields, require, site_of

#: The largest request body an admin route reads (all of them are small JSON objects).
MAX_BODY = 64 * 1024

#: The longest lifetime a token or share may be given, in seconds (ten years).
MAX_LIFETIME = 10 * 365 * 86400

#: The most audit records one search returns.
MAX_AUDIT_RECORDS = 100_000


# -- authentication and authorization before the body -----------------------------------


class _BoundedRequest(Request):
    """A request whose body is read up to :data:`MAX_BODY` bytes (413 beyond)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise HTTPException(413, f"request body larger than {MAX_BODY} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


def printable(text: str, limit: int = 200) -> str:
    """*text* for an audit detail: control characters replaced, at most *limit* long."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


class GuardedRoute(APIRoute):
    """A route that admits only callers holding :attr:`permission`, and audits refusals.

    The caller is authenticated and its permission checked before FastAPI reads the
    request body (it parses a JSON body before it resolves dependencies), so a caller
    without the permission gets 401 or 403 whatever it sends, learns nothing from
    the answer and cannot make the server buffer a body. The admitted principal is kept
    in ``request.state`` for :func:`admitted`. Every refusal is audited: the policy
    records wrong bearer tokens, dead sessions, missing CSRF tokens and permissions not
    granted; this class records requests without any credentials and, once the caller
    is admitted, every 4xx answer (invalid input, nothing of that name, too large).
    """

    permission: ClassVar[Permission] = Permission.ADMIN

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            bounded = _BoundedRequest(request.scope, request.receive)
            who = await run_in_threadpool(self.admit, bounded)
            try:
                return await handler(bounded)
            except (HTTPException, RequestValidationError) as exc:
                await run_in_threadpool(self.refused, bounded, who, exc)
                raise

        return guarded

    def admit(self, request: Request) -> Principal:
        """The caller, if it holds :attr:`permission`; else 401 or 403 (audited)."""
        try:
            who = current_principal(request)
        except Unauthorized:
            bearer = request.headers.get("authorization", "")[:7].lower() == "bearer "
            if not bearer and not request.cookies.get(SESSION_COOKIE):
                # Wrong tokens and dead sessions are audited by the policy; this is none.
                site_of(request).policy.refuse(
                    Actor.unknown(client_address(request)), Action.LOGIN,
                    f"no credentials for {request.method} {self.path}",
                )  # fmt: skip
            raise
        require(request, who, self.permission)
        request.state.principal = who
        return who

    def refused(self, request: Request, who: Principal, exc: Exception) -> None:
        """Audit the refusal *exc* of an admitted caller's request (a 4xx answer)."""
        if isinstance(exc, RequestValidationError):
            status, why = 400, f"invalid request: {invalid_fields(exc)}"
        else:
            assert isinstance(exc, HTTPException)
            status, why = exc.status_code, str(exc.detail)
        if 400 <= status < 500:
            site_of(request).policy.refuse(
                who.actor, REFUSAL_ACTIONS[self.permission],
                f"{request.method} {self.path}: {status} {printable(why)}",
            )  # fmt: skip


class AdminRoute(GuardedRoute):
    """A route for holders of the ``admin`` permission."""

    permission = Permission.ADMIN


class AuditRoute(GuardedRoute):
    """A route for holders of the ``audit`` permission (auditors and admins)."""

    permission = Permission.AUDIT


def admitted(request: Request) -> Principal:
    """The caller its :class:`GuardedRoute` admitted."""
    who = request.state.principal
    assert isinstance(who, Principal)
    return who


Who = Annotated[Principal, Depends(admitted)]


@contextmanager
def service_errors() -> Iterator[None]:
    """A service's refusal as an HTTP error with its reason: 404 for a user or peer that
    does not exist, 400 for any other bad request."""
    try:
        yield
    except (UnknownUser, UnknownPeer) as exc:
        raise HTTPException(404, str(exc)) from None
    except (PeerError, UserError, InvalidUID) as exc:
        raise HTTPException(400, str(exc)) from None


# -- models ------------------------------------------------------------------------------


def storable(value: str) -> str:
    """*value* unless it holds a NUL or a lone surrogate (text the index cannot store)."""
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    return value


def iso_time(value: str) -> str:
    """*value* if it is a time ``audit search`` understands (ISO 8601)."""
    parse_time(value)
    return value


Name = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(storable)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(storable)]
UserPath = Annotated[str, Path(min_length=1, max_length=64, description="a user name")]
PeerPath = Annotated[str, Path(min_length=1, max_length=64, description="a peer name")]
TimeText = Annotated[
    str,
    Field(min_length=1, max_length=64,
          description="ISO 8601 date or time, e.g. 2026-11-23 or 2026-11-23T10:00Z; "
                      "without a zone: the server's local time"),
    AfterValidator(iso_time),
]  # fmt: skip
Lifetime = Annotated[StrictInt, Field(ge=1, le=MAX_LIFETIME, description="seconds from now")]


class Body(BaseModel):
    """A request body: these fields and no others (numbers and booleans are never text)."""

    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """Why a request failed."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Invalid request; the reason is in detail"},
    401: {"model": Problem, "description": "No credentials, or credentials that prove nothing"},
    403: {"model": Problem, "description": "Not permitted, or a session without its CSRF token"},
    404: {"model": Problem, "description": "No such user, peer, token, share or link"},
    413: {"model": Problem, "description": "Request body too large"},
}


def timestamp(value: float | None) -> dt.datetime | None:
    """A stored epoch time as an aware UTC datetime (None stays None)."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def expiry(seconds: int | None) -> float | None:
    return time.time() + seconds if seconds else None


# -- status ------------------------------------------------------------------------------


class Counts(BaseModel):
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


class Listener(BaseModel):
    """A listener as configured."""

    kind: Literal["dicom", "dicom-tls", "https", "http-redirect"]
    address: str
    port: int
    enabled: bool


class Status(BaseModel):
    """The site at a glance (as ``pacsvault status``): never patient data."""

    version: str
    ae_title: str
    counts: Counts
    identity_conflicts: int = Field(
        description="studies whose patient name or birth date differs from the patient's first"
    )
    listeners: list[Listener]
    tls_certificate: str
    peers: int
    users: int
    lockouts: int


# -- users -------------------------------------------------------------------------------


class UserOut(BaseModel):
    name: str
    role: Role
    disabled: bool
    physicians: list[str] = Field(description="linked ReferringPhysicianName values")
    second_factor: bool


class NewUser(Body):
    name: Name = Field(description="1-64 letters, digits, '.', '_', '@' or '-'")
    role: Role


class UserCreated(UserOut):
    password: str = Field(description="the generated password, shown this once")


class NewPassword(BaseModel):
    name: str
    password: str = Field(description="the generated password, shown this once")


class RoleChange(Body):
    role: Role


class SecondFactorChange(Body):
    enabled: StrictBool


class SecondFactor(BaseModel):
    name: str
    enabled: bool
    secret: str | None = Field(None, description="base32 TOTP secret, shown this once")
    otpauth_uri: str | None = Field(None, description="for an authenticator app, shown once")


class PhysicianLink(Body):
    physician: Text = Field(description="a ReferringPhysicianName, e.g. Smith^John")


class Changed(BaseModel):
    changed: bool


def user_out(site: Site, name: str) -> UserOut:
    """The user *name*, or 404."""
    user: User | None = site.users.get(name)
    if user is None:
        raise HTTPException(404, f"no user named '{name}'")
    return UserOut(name=user.name, role=user.role, disabled=user.disabled,
                   physicians=list(user.physicians),
                   second_factor=bool(site.users.totp_secret(user.name)))  # fmt: skip


# -- peers -------------------------------------------------------------------------------


class PeerIn(Body):
    """A peer to register (as ``pacsvault peer add``)."""

    name: Name
    ae_title: Name
    host: Name = Field(description="an IP address or a CIDR network")
    port: StrictInt | None = Field(
        None, ge=1, le=65535, description="needed as a C-MOVE destination"
    )
    services: list[Service] = Field(min_length=1, max_length=len(Service))
    tls: TlsMode = TlsMode.OPTIONAL
    client_cert: Name = Field(CLIENT_CERT_CA, description="ca, none or sha256:<64 hex digits>")
    user_identity: IdentityMode = IdentityMode.OPTIONAL


class PeerOut(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int | None
    services: list[Service]
    tls: TlsMode
    client_cert: str
    user_identity: IdentityMode


class PeerCertificate(BaseModel):
    """A client certificate from the local CA; the private key is shown this once."""

    peer: str
    key_pem: str
    cert_pem: str
    ca_pem: str


def peer_out(peer: Peer) -> PeerOut:
    return PeerOut(name=peer.name, ae_title=peer.ae_title, host=peer.host, port=peer.port,
                   services=sorted(peer.services), tls=peer.tls, client_cert=peer.client_cert,
                   user_identity=peer.user_identity)  # fmt: skip


def certificate_zip(cert: PeerCertificate) -> bytes:
    """The key, certificate and CA certificate as a zip (the files ``peer cert`` writes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{cert.peer}.key", cert.key_pem)
        z.writestr(f"{cert.peer}.crt", cert.cert_pem)
        z.writestr("ca.crt", cert.ca_pem)
    return out.getvalue()


# -- tokens, shares, lockouts -----------------------------------------------------------


class TokenOut(BaseModel):
    """An API token, never its secret."""

    id: str
    user: str
    scope: TokenScope
    state: TokenState
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class NewTokenIn(Body):
    user: Name
    scope: TokenScope = TokenScope.READ
    expires_in: Lifetime | None = None


class TokenCreated(BaseModel):
    id: str
    user: str
    scope: TokenScope
    expires_at: dt.datetime | None
    token: str = Field(description="send as 'Authorization: Bearer <token>'; shown this once")


def token_out(t: TokenRecord, now: float) -> TokenOut:
    return TokenOut(id=t.id, user=t.user_name, scope=t.scope, state=t.state(now),
                    created_at=timestamp(t.created_at), expires_at=timestamp(t.expires_at),
                    revoked_at=timestamp(t.revoked_at),
                    last_used_at=timestamp(t.last_used_at))  # fmt: skip


class ShareOut(BaseModel):
    id: int
    study_uid: str
    user: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    created_by: str | None


def share_out(row: dict[str, Any]) -> ShareOut:
    return ShareOut(id=row["id"], study_uid=row["study_instance_uid"], user=row["user_name"],
                    created_at=timestamp(row["created_at"]),
                    expires_at=timestamp(row["expires_at"]),
                    created_by=row["created_by"])  # fmt: skip


class NewShare(Body):
    study_uid: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(storable)]
    user: Name
    expires_in: Lifetime | None = Field(None, description="seconds; none: until revoked")


class LockoutOut(BaseModel):
    key: str = Field(description="address:IP, account:NAME or peer:NAME")
    until: dt.datetime
    reason: str


class Cleared(BaseModel):
    cleared: int = Field(description="how many lockouts were lifted")


# -- audit -------------------------------------------------------------------------------


class AuditSearch(Body):
    """The filters of ``pacsvault audit search`` (all optional, all must match)."""

    patient: Text | None = Field(None, description="a patient ID, matched by its pseudonym")
    user: Name | None = None
    peer: Name | None = None
    study: Name | None = Field(None, description="a Study Instance UID")
    action: Action | None = None
    outcome: Outcome | None = None
    since: TimeText | None = None
    until: TimeText | None = None
    limit: StrictInt = Field(1000, ge=1, le=MAX_AUDIT_RECORDS)

    def filters(self) -> AuditFilters:
        return AuditFilters(
            user=self.user, peer=self.peer, patient=self.patient, study=self.study,
            action=self.action.value if self.action else None,
            outcome=self.outcome.value if self.outcome else None,
            since=parse_time(self.since) if self.since else None,
            until=parse_time(self.until) if self.until else None,
        )  # fmt: skip


class AuditRecord(BaseModel):
    seq: int
    time: dt.datetime
    event_code: str
    action: str
    outcome: str
    actor: str | None
    address: str | None
    study_uid: str | None
    patient_ref: str | None = Field(description="the patient's pseudonym, never its ID")
    detail: str | None


class AuditResult(BaseModel):
    records: list[AuditRecord]
    truncated: bool = Field(description="more records matched than the limit")


def audit_record(row: dict[str, Any]) -> AuditRecord:
    fields = {k: row[k] for k in AuditRecord.model_fields if k != "time"}
    return AuditRecord(time=timestamp(row["time"]), **fields)


# -- routes ------------------------------------------------------------------------------

admin = APIRouter(prefix="/api", route_class=AdminRoute, responses=ERRORS)
auditor = APIRouter(prefix="/api", route_class=AuditRoute, responses=ERRORS)


@admin.get("/status", tags=["admin"])
def status(request: Request) -> Status:
    """Counts, listeners as configured, identity conflicts: never patient data."""
    site = site_of(request)
    now = site.status()
    return Status(
        version=__version__,
        ae_title=site.settings.dicom.ae_title,
        counts=Counts(**now.counts),
        identity_conflicts=now.identity_conflicts,
        listeners=[Listener.model_validate(x, from_attributes=True) for x in now.listeners],
        tls_certificate=now.certificate,
        peers=now.peers,
        users=now.users,
        lockouts=len(now.lockouts),
    )


# users


@admin.get("/users", tags=["users"])
def list_users(request: Request) -> list[UserOut]:
    """Every user, with role, state and physician links."""
    site = site_of(request)
    return [user_out(site, u.name) for u in site.users.list()]


@admin.post("/users", tags=["users"], status_code=201)
def add_user(request: Request, who: Who, new: NewUser) -> UserCreated:
    """Add a user with a generated password (in the response, once)."""
    site = site_of(request)
    with service_errors():
        password = site.admin.add_user(who, new.name, new.role.value)
    return UserCreated(**user_out(site, new.name).model_dump(), password=password)


@admin.get("/users/{name}", tags=["users"])
def get_user(request: Request, name: UserPath) -> UserOut:
    """One user."""
    return user_out(site_of(request), name)


def _set_disabled(request: Request, who: Principal, name: str, disabled: bool) -> UserOut:
    site = site_of(request)
    with service_errors():
        site.admin.set_user_disabled(who, name, disabled)
    return user_out(site, name)


@admin.post("/users/{name}/disable", tags=["users"])
def disable_user(request: Request, who: Who, name: UserPath) -> UserOut:
    """Disable a user: its logins, sessions (ended now) and tokens stop working."""
    return _set_disabled(request, who, name, True)


@admin.post("/users/{name}/enable", tags=["users"])
def enable_user(request: Request, who: Who, name: UserPath) -> UserOut:
    """Enable a disabled user."""
    return _set_disabled(request, who, name, False)


@admin.post("/users/{name}/password", tags=["users"])
def reset_password(request: Request, who: Who, name: UserPath) -> NewPassword:
    """Give a user a new generated password (in the response, once); ends its sessions."""
    with service_errors():
        password = site_of(request).admin.reset_password(who, name)
    return NewPassword(name=name, password=password)


@admin.put("/users/{name}/role", tags=["users"])
def set_role(request: Request, who: Who, name: UserPath, change: RoleChange) -> UserOut:
    """Change a user's role."""
    site = site_of(request)
    with service_errors():
        site.admin.set_role(who, name, change.role.value)
    return user_out(site, name)


@admin.put("/users/{name}/second-factor", tags=["users"])
def set_second_factor(
    request: Request, who: Who, name: UserPath, change: SecondFactorChange
) -> SecondFactor:
    """Give a user a new TOTP second factor (secret and otpauth URI, once) or remove it."""
    with service_errors():
        secret = site_of(request).admin.set_second_factor(who, name, change.enabled)
    uri = totp.provisioning_uri(secret, name) if secret else None
    return SecondFactor(name=name, enabled=secret is not None, secret=secret, otpauth_uri=uri)


@admin.post("/users/{name}/physicians", tags=["users"])
def link_physician(request: Request, who: Who, name: UserPath, link: PhysicianLink) -> Changed:
    """Let a referrer read the studies of a referring physician (false: linked already)."""
    with service_errors():
        return Changed(changed=site_of(request).admin.link_physician(who, name, link.physician))


@admin.delete("/users/{name}/physicians/{physician:path}", tags=["users"])
def unlink_physician(
    request: Request,
    who: Who,
    name: UserPath,
    physician: Annotated[str, Path(min_length=1, max_length=256)],
) -> Changed:
    """Remove a physician link (404 when there was none)."""
    with service_errors():
        done = site_of(request).admin.unlink_physician(who, name, physician)
    if not done:
        raise HTTPException(404, "no such link")
    return Changed(changed=True)


# peers


@admin.get("/peers", tags=["peers"])
def list_peers(request: Request) -> list[PeerOut]:
    """Every registered DICOM peer."""
    return [peer_out(p) for p in site_of(request).peers.list()]


@admin.post("/peers", tags=["peers"], status_code=201)
def add_peer(request: Request, who: Who, new: PeerIn) -> PeerOut:
    """Register a peer: who may associate, from where, for which services."""
    with service_errors():
        peer = new_peer(new.name, new.ae_title, new.host, new.port, frozenset(new.services),
                        tls=new.tls, client_cert=new.client_cert,
                        user_identity=new.user_identity)  # fmt: skip
        return peer_out(site_of(request).admin.add_peer(who, peer))


@admin.get("/peers/{name}", tags=["peers"])
def get_peer(request: Request, name: PeerPath) -> PeerOut:
    """One peer."""
    peer = site_of(request).peers.get(name)
    if peer is None:
        raise HTTPException(404, f"no peer named '{name}'")
    return peer_out(peer)


@admin.delete("/peers/{name}", tags=["peers"])
def remove_peer(request: Request, who: Who, name: PeerPath) -> Changed:
    """Remove a peer."""
    with service_errors():
        site_of(request).admin.remove_peer(who, name)
    return Changed(changed=True)


@admin.post(
    "/peers/{name}/certificate",
    tags=["peers"],
    response_model=PeerCertificate,
    responses={200: {"content": {"application/zip": {}},
                     "description": "JSON, or with format=zip the three files"}},
)  # fmt: skip
def issue_certificate(
    request: Request,
    who: Who,
    name: PeerPath,
    format: Annotated[Literal["json", "zip"], Query()] = "json",
) -> PeerCertificate | Response:
    """Issue a client certificate from the local CA (CN = the peer name); the key is in
    the response once and kept nowhere."""
    site = site_of(request)
    # In the data directory (0700), not a shared /tmp, for the moment the key is on disk.
    with tempfile.TemporaryDirectory(dir=site.data_dir, prefix=".peer-cert-") as tmp:
        with service_errors():
            paths = site.admin.issue_peer_certificate(who, name, FilePath(tmp))
        key, cert, ca = (p.read_text(encoding="ascii") for p in paths)
    issued = PeerCertificate(peer=name, key_pem=key, cert_pem=cert, ca_pem=ca)
    if format == "zip":
        disposition = f'attachment; filename="{name}-certificate.zip"'
        return Response(certificate_zip(issued), media_type="application/zip",
                        headers={"Content-Disposition": disposition})  # fmt: skip
    return issued


# tokens


@admin.get("/tokens", tags=["tokens"])
def list_tokens(
    request: Request, user: Annotated[str | None, Query(max_length=64)] = None
) -> list[TokenOut]:
    """API tokens (all, or one user's), never their secrets."""
    now = time.time()
    return [token_out(t, now) for t in site_of(request).web_sessions.tokens(user)]


@admin.post("/tokens", tags=["tokens"], status_code=201)
def create_token(request: Request, who: Who, new: NewTokenIn) -> TokenCreated:
    """A new API token for a user (its text in the response, once)."""
    expires_at = expiry(new.expires_in)
    with service_errors():
        token = site_of(request).admin.create_token(who, new.user, new.scope.value, expires_at)
    return TokenCreated(id=token.id, user=new.user, scope=new.scope,
                        expires_at=timestamp(expires_at), token=token.text)  # fmt: skip


@admin.delete("/tokens/{token_id}", tags=["tokens"])
def revoke_token(
    request: Request, who: Who, token_id: Annotated[str, Path(max_length=64)]
) -> Changed:
    """Revoke a token (404 when there is no active token of that id)."""
    if not site_of(request).admin.revoke_token(who, token_id):
        raise HTTPException(404, f"no active token {token_id}")
    return Changed(changed=True)


# shares


@admin.get("/shares", tags=["shares"])
def list_shares(request: Request) -> list[ShareOut]:
    """The studies shared with users, while in force."""
    return [share_out(s) for s in site_of(request).users.shares()]


@admin.post("/shares", tags=["shares"], status_code=201)
def share_study(request: Request, who: Who, new: NewShare) -> ShareOut:
    """Share one study with a user, until revoked or for *expires_in* seconds."""
    site = site_of(request)
    with service_errors():
        share_id = site.admin.share_study(who, new.study_uid, new.user, expiry(new.expires_in))
    row = site.users.get_share(share_id)
    assert row is not None  # shares are deleted only by a revocation
    return share_out(row)


@admin.delete("/shares/{share_id}", tags=["shares"])
def revoke_share(
    request: Request, who: Who, share_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
) -> Changed:
    """Revoke a share (404 when there is none of that id)."""
    if not site_of(request).admin.revoke_share(who, share_id):
        raise HTTPException(404, f"no share {share_id}")
    return Changed(changed=True)


# lockouts


@admin.get("/lockouts", tags=["lockouts"])
def list_lockouts(request: Request) -> list[LockoutOut]:
    """Lockouts in force."""
    return [LockoutOut(key=e.key, until=timestamp(e.until), reason=e.reason)
            for e in site_of(request).lockout.entries()]  # fmt: skip


@admin.delete("/lockouts", tags=["lockouts"])
def clear_all_lockouts(request: Request, who: Who) -> Cleared:
    """Lift every lockout and forget every failure count."""
    return Cleared(cleared=site_of(request).admin.clear_lockout(who, None))


@admin.delete("/lockouts/{key}", tags=["lockouts"])
def clear_lockout(
    request: Request,
    who: Who,
    key: Annotated[
        str, Path(min_length=1, max_length=128, description="address:IP, account:NAME or peer:NAME")
    ],
) -> Cleared:
    """Lift one lockout and forget its failure count."""
    return Cleared(cleared=site_of(request).admin.clear_lockout(who, key))


# audit


@auditor.post("/audit/search", tags=["audit"])
def search_audit(request: Request, who: Who, q: AuditSearch) -> AuditResult:
    """Audit records matching every filter, in chain order (``audit`` permission).

    A POST, so that a patient ID is never part of a URL. The search itself is
    recorded, with the filters used but never their values.
    """
    site = site_of(request)
    filters = q.filters()
    rows = site.audit.search(filters.query(site.archive.pseudonyms, limit=q.limit + 1))
    truncated = len(rows) > q.limit
    rows = rows[: q.limit]
    site.audit.record(Action.AUDIT_USE, Outcome.SUCCESS, who.actor,
                      detail=filters.describe("search", len(rows)))  # fmt: skip
    return AuditResult(records=[audit_record(r) for r in rows], truncated=truncated)


#: Every route of the admin API.
router = APIRouter()
router.include_router(admin)
router.include_router(auditor)
