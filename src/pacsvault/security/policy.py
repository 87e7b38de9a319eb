"""The AccessPolicy: the one object that decides who may do what to which study.

Front doors authenticate callers into a :class:`Principal` (or get a :class:`Refusal`
with a neutral reason), ask :meth:`AccessPolicy.authorize` before each action, and
the Archive applies :meth:`AccessPolicy.scope` to every find, retrieve and metadata
read. Per-peer grants and per-user roles both map to :class:`Permission`. Refusals
are logged (no patient data), audited and counted towards lockout here, so no front
door can forget to. The policy holds no SQL: it reads peers, users, shares and
lockout counters through the small protocols below, which storage implements.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pacsvault.security import tokens, totp
from pacsvault.security.audit import Action, AuditUnavailable, Outcome
from pacsvault.security.authn import USERNAME, IdentityVerifier
from pacsvault.security.identity import (
    Actor,
    Permission,
    Principal,
    Proof,
    Refusal,
    RefusalReason,
    Scope,
    physician_key,
)
from pacsvault.security.peers import (
    CLIENT_CERT_CA,
    CLIENT_CERT_NONE,
    IdentityMode,
    Peer,
    Service,
    TlsMode,
)
from pacsvault.security.tls import TlsInfo
from pacsvault.security.tokens import SessionRecord, TokenRecord
from pacsvault.security.users import Role, User

if TYPE_CHECKING:
    from pacsvault.security.oidc import OidcVerifier

log = logging.getLogger("pacsvault.policy")

#: What each granted DICOM service lets a peer do.
SERVICE_PERMISSIONS: Mapping[Service, Permission] = {
    Service.ECHO: Permission.ECHO,
    Service.STORE: Permission.STORE,
    Service.FIND: Permission.QUERY,
    Service.GET: Permission.RETRIEVE,
    Service.MOVE: Permission.MOVE,
}

#: What each role lets a user do (the studies it sees are the policy's scope).
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.RADIOLOGIST: frozenset(
        {
            Permission.ECHO,
            Permission.STORE,
            Permission.QUERY,
            Permission.RETRIEVE,
            Permission.MOVE,
            Permission.EXPORT,
        }
    ),
    Role.REFERRER: frozenset({Permission.ECHO, Permission.QUERY, Permission.RETRIEVE}),
    Role.UPLOADER: frozenset({Permission.ECHO, Permission.STORE}),
    Role.AUDITOR: frozenset({Permission.ECHO, Permission.AUDIT}),
}

#: The operator at this machine's console may do everything (it can read the files).
OPERATOR_PERMISSIONS = frozenset(Permission)


def address_key(address: str) -> str:
    return f"address:{address}"


def account_key(name: str) -> str:
    return f"account:{name}"


def peer_key(name: str) -> str:
    """The lockout key of a peer that proved itself with its client certificate."""
    return f"peer:{name}"


class PeerDirectory(Protocol):
    """The registered peers."""

    def by_ae_title(self, ae_title: str) -> Peer | None: ...


class ShareDirectory(Protocol):
    """Studies shared with users, until their expiry."""

    def studies_shared_with(self, user: str) -> list[str]: ...


class WebCredentials(Protocol):
    """Browser sessions, API tokens and second-factor secrets (storage.web_sessions, users)."""

    def session_holder(self, id_hash: str) -> tuple[SessionRecord, User | None] | None: ...

    def touch_session(self, id_hash: str, now: float) -> None: ...

    def token_holder(self, token_id: str) -> tuple[TokenRecord, User | None] | None: ...

    def token_used(self, token_id: str, now: float) -> None: ...


class LockoutCounters(Protocol):
    """Failure counters and lockouts, shared by every node."""

    def locked(self, *keys: str) -> bool: ...

    def failure(self, *keys: str, reason: str) -> list[str]: ...


class AuditSink(Protocol):
    """Where the policy records decisions (raises AuditUnavailable unless best effort)."""

    def record(
        self,
        action: Action,
        outcome: Outcome,
        actor: Actor | None,
        *,
        detail: str | None = None,
        best_effort: bool = False,
    ) -> None: ...


class NotPermitted(Exception):
    """The principal may not do what it asked (the refusal has been audited)."""


@dataclass(frozen=True)
class IdentityClaim:
    """A user identity item as received (PS3.7 D.3.3.7): type, primary, secondary field."""

    id_type: int
    primary: bytes
    secondary: bytes | None = None


@dataclass(frozen=True)
class AssociationRequest:
    """What a DICOM association request asserts, and what the transport established."""

    called_ae: str
    calling_ae: str
    address: str
    tls: TlsInfo | None = None
    identity: IdentityClaim | None = None


#: Seconds between two writes of a token's last use (`token list` shows it).
TOKEN_USE_RESOLUTION = 60.0


class AccessPolicy:
    """Decides every request, DIMSE and HTTP alike (see the module docstring)."""

    def __init__(
        self,
        *,
        ae_title: str,
        peers: PeerDirectory,
        audit: AuditSink,
        identities: IdentityVerifier | None = None,
        lockout: LockoutCounters | None = None,
        shares: ShareDirectory | None = None,
        cleartext_networks: list[str] | None = None,
        web: WebCredentials | None = None,
        session_idle: float = 900.0,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.peers = peers
        self.audit = audit
        self.identities = identities
        self.lockout = lockout
        self.shares = shares
        self.cleartext_networks = [
            ipaddress.ip_network(n, strict=False) for n in (cleartext_networks or [])
        ]
        self.web = web
        self.session_idle = session_idle
        self.oidc = oidc

    # -- authentication --------------------------------------------------------------------

    def authenticate_association(self, rq: AssociationRequest) -> Principal | Refusal:
        """Decide on an association request: the principal, or a refusal (logged, audited,
        counted towards lockout)."""
        called, calling = rq.called_ae.strip(), rq.calling_ae.strip()
        outcome, account = self._decide(called, calling, rq)
        transport = f"TLS {rq.tls.version}" if rq.tls else "cleartext"
        if isinstance(outcome, Principal):
            log.info("association accepted: %s over %s", outcome.actor.describe(), transport)
            try:
                self.audit.record(Action.ASSOCIATION, Outcome.SUCCESS, outcome.actor,
                                  detail=f"called {called} over {transport}")  # fmt: skip
            except AuditUnavailable:
                # Nothing is served unrecorded: a transient refusal, the peer may retry.
                return Refusal(RefusalReason.BUSY, "audit trail unavailable")
            return outcome
        log.warning(
            "association rejected: calling %r called %r from %s over %s: %s",
            calling, called, rq.address, transport, outcome.why,
        )  # fmt: skip
        self.audit.record(Action.ASSOCIATION, Outcome.REFUSED, Actor.unknown(rq.address, calling),
                          detail=outcome.why, best_effort=True)  # fmt: skip
        # A caller that proved with its certificate which peer it is answers for its own
        # failures; everybody else's count against the address they come from.
        proven = self.peers.by_ae_title(calling)
        source = (
            peer_key(proven.name)
            if proven is not None and self.proven_by_certificate(proven, rq.tls)
            else address_key(rq.address)
        )
        self._count_failure(source, account, outcome.why)
        return outcome

    def _decide(
        self, called: str, calling: str, rq: AssociationRequest
    ) -> tuple[Principal | Refusal, str | None]:
        """The decision, and the account a failed identity check counts against.

        A lockout never changes the answer to an attempt that fails anyway (a locked
        source learns nothing from its answers). An attempt that would succeed gets
        the refusal an unknown AE title gets, unless the caller proved it is the peer
        with a client certificate issued to it: the address lock is aimed at guessers,
        and must not be a lever against a modality that shares an address with one. A
        locked account is refused like a wrong passcode.
        """
        outcome, account = self._evaluate(called, calling, rq)
        if self.lockout is None or isinstance(outcome, Refusal):
            return outcome, account
        claimed = self._claimed_account(rq.identity)
        if claimed and self.lockout.locked(account_key(claimed)):
            return Refusal(RefusalReason.IDENTITY, "account is locked out"), None
        peer = outcome.peer
        assert peer is not None
        if Proof.CERTIFICATE in outcome.proofs:
            if self.lockout.locked(peer_key(peer.name)):
                return Refusal(RefusalReason.UNKNOWN_CALLER, "peer is locked out"), None
        elif self.lockout.locked(address_key(rq.address)):
            return Refusal(RefusalReason.UNKNOWN_CALLER, "source address is locked out"), None
        return outcome, account

    def _evaluate(
        self, called: str, calling: str, rq: AssociationRequest
    ) -> tuple[Principal | Refusal, str | None]:
        if called != self.ae_title:
            return Refusal(RefusalReason.WRONG_RECIPIENT, "called AE title is not ours"), None
        if rq.tls is None and not self._cleartext_allowed(rq.address):
            why = "cleartext DICOM from a network not listed in dicom.cleartext_networks"
            return Refusal(RefusalReason.TRANSPORT, why), None
        peer = self.peers.by_ae_title(calling)
        if peer is None:
            why = "calling AE title is not a registered peer"
            return Refusal(RefusalReason.UNKNOWN_CALLER, why), None
        if not peer.matches_address(rq.address):
            # Same answer as an unknown AE: a guesser must not learn which titles exist.
            why = f"source address is not the address registered for peer {peer.name}"
            return Refusal(RefusalReason.UNKNOWN_CALLER, why), None
        if (why := self._transport(peer, rq.tls)) is not None:
            return Refusal(RefusalReason.TRANSPORT, f"{why} ({peer.name})"), None
        user, proof = None, None
        if rq.identity is not None and self.identities is not None:
            claim = rq.identity
            result = self.identities.verify(
                claim.id_type, claim.primary, claim.secondary, tls=rq.tls is not None
            )
            user = result.user
            if claim.id_type != USERNAME and not result.ok:
                why = f"user identity refused: {result.reason}"
                return Refusal(RefusalReason.IDENTITY, why), result.claimed
            proof = Proof.JWT if claim.id_type == 5 else Proof.PASSCODE
        if peer.user_identity is IdentityMode.REQUIRED and user is None:
            why = f"peer {peer.name} requires a verified user identity"
            return Refusal(RefusalReason.IDENTITY, why), None
        proofs = {Proof.ADDRESS}
        if self.proven_by_certificate(peer, rq.tls):
            proofs.add(Proof.CERTIFICATE)
        if proof is not None:
            proofs.add(proof)
        return self.peer_principal(peer, rq.address, calling, user, frozenset(proofs)), None

    def peer_principal(
        self,
        peer: Peer,
        address: str,
        calling: str,
        user: User | None = None,
        proofs: frozenset[Proof] = frozenset({Proof.ADDRESS}),
    ) -> Principal:
        """A registered peer (and the user it vouched for) as a principal.

        It may do what the peer was granted and, with a user, only what the user's role
        also allows: a workstation's user cannot do more than the workstation.
        """
        permissions = frozenset(SERVICE_PERMISSIONS[s] for s in peer.services)
        if user is not None:
            permissions &= ROLE_PERMISSIONS[user.role]
            actor = Actor.of_user(user, address, calling)
        else:
            actor = Actor.of_peer(peer, address, calling)
        return Principal(actor, permissions, proofs, peer, user)

    def user_principal(self, user: User, address: str | None, proof: Proof) -> Principal:
        """A user who logged in (web) or presented a token, as a principal."""
        return Principal(
            Actor.of_user(user, address), ROLE_PERMISSIONS[user.role], frozenset({proof}),
            None, user,
        )  # fmt: skip

    @staticmethod
    def operator(name: str | None = None) -> Principal:
        """The operator of this machine running a local command."""
        return Principal(Actor.operator(name), OPERATOR_PERMISSIONS, frozenset({Proof.LOCAL}))

    def _claimed_account(self, identity: IdentityClaim | None) -> str | None:
        if identity is None or self.identities is None:
            return None
        return self.identities.claimed_name(identity.id_type, identity.primary)

    def _cleartext_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip.is_loopback or any(ip in net for net in self.cleartext_networks)

    def _transport(self, peer: Peer, tls: TlsInfo | None) -> str | None:
        """Why *peer*'s transport is not acceptable, or None when it is."""
        if tls is None:
            return "peer requires TLS" if peer.tls is TlsMode.REQUIRED else None
        if peer.tls is TlsMode.OFF:
            return "peer is registered for cleartext only"
        if peer.client_cert == CLIENT_CERT_NONE:
            return None
        if tls.peer_cert_der is None:
            return "no client certificate"
        if self.proven_by_certificate(peer, tls):
            return None
        if peer.client_cert == CLIENT_CERT_CA:
            return "client certificate was not issued to this peer"
        return "client certificate does not match the pinned fingerprint"

    @staticmethod
    def proven_by_certificate(peer: Peer | None, tls: TlsInfo | None) -> bool:
        """True when *tls* carries a client certificate that identifies *peer* itself."""
        if peer is None or tls is None or tls.peer_cert_der is None:
            return False
        if peer.client_cert == CLIENT_CERT_CA:
            return tls.peer_common_name == peer.name
        if peer.client_cert.startswith("sha256:"):
            return f"sha256:{tls.peer_fingerprint}" == peer.client_cert
        return False

    def _count_failure(self, source: str, account: str | None, why: str) -> None:
        if self.lockout is None:
            return
        keys = [source] + ([account_key(account)] if account else [])
        self.lockout.failure(*keys, reason=why)

    def transport_failure(self, address: str, why: str, *, count: bool = True) -> None:
        """A connection that failed before any association (a TLS handshake, a malformed
        request). Logged and audited; counted towards the address's lockout when *count*
        (bytes that are not DICOM at all, e.g. a port scanner's, are not counted)."""
        log.warning("connection refused from %s: %s", address, why)
        self.audit.record(Action.ASSOCIATION, Outcome.REFUSED, Actor.unknown(address),
                          detail=why, best_effort=True)  # fmt: skip
        if count:
            self._count_failure(address_key(address), None, why)

    # -- the web door ----------------------------------------------------------------------

    def authenticate_login(
        self, name: str, password: str, code: str | None, address: str
    ) -> Principal | Refusal:
        """A browser login: password and, when the user has one, the second factor.

        Every failure gets the same refusal (a guesser learns nothing), is audited and
        counts towards the lockout of both the address and the account; a locked one is
        refused even with the right password.
        """
        keys = [address_key(address), account_key(name)]
        if self.lockout is not None and self.lockout.locked(*keys):
            return self._login_refused(name, address, "address or account is locked out",
                                       count=False)  # fmt: skip
        user = self.identities.users.authenticate(name, password) if self.identities else None
        if user is None:
            return self._login_refused(name, address, "wrong user name or password")
        secret = self.identities.users.totp_secret(name) if self.identities else None
        proofs = {Proof.PASSCODE}
        if secret:
            if not code or not totp.verify(secret, code):
                return self._login_refused(name, address, "second factor missing or wrong")
            proofs.add(Proof.TOTP)
        principal = self.user_principal(user, address, Proof.SESSION)
        principal = Principal(principal.actor, principal.permissions,
                              frozenset(proofs | {Proof.SESSION}), None, user)  # fmt: skip
        self.audit.record(Action.LOGIN, Outcome.SUCCESS, principal.actor, detail="web login")
        return principal

    def _login_refused(self, name: str, address: str, why: str, *, count: bool = True) -> Refusal:
        log.warning("login refused from %s: %s", address, why)
        self.audit.record(Action.LOGIN, Outcome.REFUSED, Actor.unknown(address, None),
                          detail=why, best_effort=True)  # fmt: skip
        if count:
            self._count_failure(address_key(address), name, why)
        return Refusal(RefusalReason.IDENTITY, why)

    def authenticate_session(self, secret: str, address: str) -> Principal | Refusal:
        """The user of a browser session cookie, if the session is alive (idle and absolute
        limits); the session's last use is updated, at most every ``session_idle / 50``
        seconds (10 s at most): a viewer fetching hundreds of frames a second does not
        write the session hundreds of times, and the idle limit is still kept to 2%.
        A refusal is audited (it does not count towards a lockout: a session secret
        cannot be guessed, and an expired one is no attack)."""
        outcome = self._session(secret, address)
        if isinstance(outcome, Refusal):
            self.audit.record(Action.LOGIN, Outcome.REFUSED, Actor.unknown(address, None),
                              detail=f"session: {outcome.why}", best_effort=True)  # fmt: skip
        return outcome

    def _session(self, secret: str, address: str) -> Principal | Refusal:
        if self.web is None or self.identities is None:
            return Refusal(RefusalReason.IDENTITY, "no web sessions here")
        id_hash = tokens.digest(secret)
        held = self.web.session_holder(id_hash)
        now = time.time()
        if held is None:
            return Refusal(RefusalReason.IDENTITY, "no session, or it expired")
        record, user = held
        if now > record.expires_at or now - record.last_seen > self.session_idle:
            return Refusal(RefusalReason.IDENTITY, "no session, or it expired")
        if user is None or user.disabled:
            return Refusal(RefusalReason.IDENTITY, "the session's user is disabled")
        if now - record.last_seen >= min(10.0, self.session_idle / 50):
            self.web.touch_session(id_hash, now)
        return self.user_principal(user, address, Proof.SESSION)

    def authenticate_bearer(self, token: str, address: str) -> Principal | Refusal:
        """An ``Authorization: Bearer`` token: one of ours (``pvt_...``) or, when an issuer
        is configured, an OpenID Connect access token. Failures count towards the address's
        lockout."""
        if self.lockout is not None and self.lockout.locked(address_key(address)):
            return Refusal(RefusalReason.IDENTITY, "source address is locked out")
        parsed = tokens.parse_token(token)
        if parsed is not None:
            outcome = self._api_token(*parsed, address)
        elif self.oidc is not None:
            outcome = self.oidc.verify(token, address, self)
        else:
            outcome = Refusal(RefusalReason.IDENTITY, "not a token this server issued")
        if isinstance(outcome, Refusal):
            self.audit.record(Action.LOGIN, Outcome.REFUSED, Actor.unknown(address, None),
                              detail=f"bearer token: {outcome.why}", best_effort=True)  # fmt: skip
            self._count_failure(address_key(address), None, outcome.why)
        return outcome

    def _api_token(self, token_id: str, secret: str, address: str) -> Principal | Refusal:
        if self.web is None or self.identities is None:
            return Refusal(RefusalReason.IDENTITY, "no tokens here")
        held = self.web.token_holder(token_id)
        now = time.time()
        if held is None or not tokens.same_secret(secret, held[0].secret_hash):
            return Refusal(RefusalReason.IDENTITY, "unknown token")
        record, user = held
        state = record.state(now)
        if state != "active":
            why = "was revoked" if state == "revoked" else "expired"
            return Refusal(RefusalReason.IDENTITY, f"token {token_id} {why}")
        if user is None or user.disabled:
            return Refusal(RefusalReason.IDENTITY, "the token's user is disabled")
        # Last use is for `token list`, to the minute: not a write on every request.
        if record.last_used_at is None or now - record.last_used_at >= TOKEN_USE_RESOLUTION:
            self.web.token_used(token_id, now)
        base = self.user_principal(user, address, Proof.TOKEN)
        return Principal(base.actor, base.permissions & tokens.SCOPE_PERMISSIONS[record.scope],
                         base.proofs, None, user)  # fmt: skip

    # -- authorization ---------------------------------------------------------------------

    def authorize(self, principal: Principal, permission: Permission) -> bool:
        """True when *principal* may perform *permission*."""
        return permission in principal.permissions

    def require(self, principal: Principal, permission: Permission, action: Action) -> bool:
        """Like :meth:`authorize`, and a refusal is logged and audited as *action*."""
        if self.authorize(principal, permission):
            return True
        self.refuse(principal.actor, action, f"{permission.value} not granted")
        return False

    def refuse(self, actor: Actor, action: Action, why: str) -> None:
        """Record a refused request (a permission not granted, an unknown destination...)."""
        log.warning("request refused: %s: %s", actor.describe(), why)
        self.audit.record(action, Outcome.REFUSED, actor, detail=why, best_effort=True)

    def scope(self, principal: Principal) -> Scope:
        """The studies *principal* may see: the only place per-study visibility is decided.

        Peers, the operator and every role but ``referrer`` see every study; a referrer
        sees the studies whose ReferringPhysicianName is linked to its account, and the
        studies shared with it that have not expired. A principal without a permission
        to read sees nothing.
        """
        readable = {Permission.QUERY, Permission.RETRIEVE, Permission.MOVE, Permission.EXPORT}
        if not readable & principal.permissions:
            return Scope.nothing()
        user = principal.user
        if user is None or user.role is not Role.REFERRER:
            return Scope.everything()
        physicians = tuple(sorted({physician_key(p) for p in user.physicians if p.strip()}))
        studies = tuple(self.shares.studies_shared_with(user.name)) if self.shares else ()
        return Scope(False, physicians, studies)

    def move_destination(self, principal: Principal, destination_aet: str) -> Peer | None:
        """The registered destination a C-MOVE from *principal* may send to, or None."""
        if not self.authorize(principal, Permission.MOVE):
            return None
        dest = self.peers.by_ae_title(destination_aet)
        if dest is None or not dest.can_receive:
            return None
        return dest
