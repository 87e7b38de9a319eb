"""The AccessPolicy: the one object that decides who may associate and do what.

Every DICOM service consults it (and the HTTP side will consult the same object):
association acceptance by called AE, calling AE, source address and transport;
service grants per peer; and which C-MOVE destinations a peer may send to. It
records every refusal in the audit trail itself, so no front door can forget to.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from pacsvault.security.audit import Action, AuditTrail, AuditUnavailable, Outcome
from pacsvault.security.authn import USERNAME, IdentityVerifier
from pacsvault.security.identity import Actor
from pacsvault.security.lockout import Lockout, account_key, address_key, peer_key
from pacsvault.security.peers import (
    CLIENT_CERT_CA,
    CLIENT_CERT_NONE,
    IdentityMode,
    Peer,
    PeerRegistry,
    Service,
    TlsMode,
)
from pacsvault.security.tls import TlsInfo
from pacsvault.security.users import User

log = logging.getLogger("pacsvault.policy")

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07


@dataclass(frozen=True)
class IdentityClaim:
    """A user identity negotiation item as received (PS3.7 D.3.3.7)."""

    id_type: int
    primary: bytes
    secondary: bytes | None = None


@dataclass(frozen=True)
class AssociationDecision:
    """The outcome of an association request: a peer (and user), or a rejection."""

    peer: Peer | None
    reject: tuple[int, int, int] | None
    why: str
    user: User | None = None

    @property
    def accepted(self) -> bool:
        return self.reject is None


_RJ_CALLED = (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED)
_RJ_CALLING = (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED)
_RJ_OTHER = (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON)
_RJ_BUSY = (0x02, SOURCE_SERVICE_USER, REASON_NO_REASON)  # rejected transient


class AccessPolicy:
    """Decides, for every DICOM request, whether the caller may proceed."""

    def __init__(
        self,
        peers: PeerRegistry,
        ae_title: str,
        audit: AuditTrail,
        *,
        cleartext_networks: list[str] | None = None,
        lockout: Lockout | None = None,
        identities: IdentityVerifier | None = None,
    ) -> None:
        self.peers = peers
        self.ae_title = ae_title
        self.audit = audit
        self.lockout = lockout
        self.identities = identities
        self.cleartext_networks = [
            ipaddress.ip_network(n, strict=False) for n in (cleartext_networks or [])
        ]

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

    def _decide(
        self,
        called: str,
        calling: str,
        address: str,
        tls: TlsInfo | None,
        identity: IdentityClaim | None,
    ) -> tuple[AssociationDecision, str | None]:
        """The decision, and the account a failed identity check counts against.

        A lockout never changes the answer to an attempt that fails anyway (a locked
        source learns nothing from its answers). An attempt that would succeed gets
        the refusal an unknown AE title gets, unless the caller proved it is the peer
        with a client certificate issued to it: the address lock is aimed at
        guessers, and must not be a lever against a modality that shares an address
        with one. A locked account is refused like a wrong passcode.
        """
        decision, account = self._evaluate(called, calling, address, tls, identity)
        if self.lockout is None:
            return decision, account
        claimed = self._claimed_account(identity)
        if decision.accepted and claimed and self.lockout.locked(account_key(claimed)):
            return AssociationDecision(None, _RJ_OTHER, "account is locked out"), None
        if not decision.accepted:
            return decision, account
        peer = decision.peer
        assert peer is not None
        if self.proven_by_certificate(peer, tls):
            if self.lockout.locked(peer_key(peer.name)):
                return AssociationDecision(None, _RJ_CALLING, "peer is locked out"), None
        elif self.lockout.locked(address_key(address)):
            return AssociationDecision(None, _RJ_CALLING, "source address is locked out"), None
        return decision, account

    def _claimed_account(self, identity: IdentityClaim | None) -> str | None:
        if identity is None or self.identities is None:
            return None
        return self.identities.claimed_name(identity.id_type, identity.primary)

    def proven_by_certificate(self, peer: Peer | None, tls: TlsInfo | None) -> bool:
        """True when *tls* carries a client certificate that identifies *peer* itself."""
        if peer is None or tls is None or tls.peer_cert_der is None:
            return False
        if peer.client_cert == CLIENT_CERT_CA:
            return tls.peer_common_name == peer.name
        if peer.client_cert.startswith("sha256:"):
            return f"sha256:{tls.peer_fingerprint}" == peer.client_cert
        return False

    def _evaluate(
        self,
        called: str,
        calling: str,
        address: str,
        tls: TlsInfo | None,
        identity: IdentityClaim | None,
    ) -> tuple[AssociationDecision, str | None]:
        if called != self.ae_title:
            return AssociationDecision(None, _RJ_CALLED, "called AE title is not ours"), None
        if tls is None and not self._cleartext_allowed(address):
            why = "cleartext DICOM from a network not listed in dicom.cleartext_networks"
            return AssociationDecision(None, _RJ_OTHER, why), None
        peer = self.peers.by_ae_title(calling)
        if peer is None:
            why = "calling AE title is not a registered peer"
            return AssociationDecision(None, _RJ_CALLING, why), None
        if not peer.matches_address(address):
            # Same answer as an unknown AE: a guesser must not learn which titles exist.
            why = f"source address is not the address registered for peer {peer.name}"
            return AssociationDecision(None, _RJ_CALLING, why), None
        if (why := self._transport(peer, tls)) is not None:
            return AssociationDecision(None, _RJ_OTHER, f"{why} ({peer.name})"), None
        user = None
        if identity is not None and self.identities is not None:
            result = self.identities.verify(
                identity.id_type, identity.primary, identity.secondary, tls=tls is not None
            )
            user = result.user
            if identity.id_type != USERNAME and not result.ok:
                why = f"user identity refused: {result.reason}"
                return AssociationDecision(None, _RJ_OTHER, why), result.claimed
        if peer.user_identity is IdentityMode.REQUIRED and user is None:
            why = f"peer {peer.name} requires a verified user identity"
            return AssociationDecision(None, _RJ_OTHER, why), None
        return AssociationDecision(peer, None, f"registered peer {peer.name}", user), None

    def check_association(
        self,
        called_aet: str,
        calling_aet: str,
        address: str,
        *,
        tls: TlsInfo | None = None,
        identity: IdentityClaim | None = None,
    ) -> AssociationDecision:
        """Decide on an A-ASSOCIATE-RQ. Refusals are logged (no PHI), audited and counted."""
        called, calling = called_aet.strip(), calling_aet.strip()
        decision, account = self._decide(called, calling, address, tls, identity)
        peer, user = decision.peer, decision.user
        if user is not None:
            actor = Actor("user", user.name, address, calling)
        else:
            actor = Actor(
                "peer" if peer else "unknown", peer.name if peer else calling, address, calling
            )
        transport = f"TLS {tls.version}" if tls else "cleartext"
        if decision.accepted:
            log.info("association accepted: %s over %s", actor.describe(), transport)
            detail = f"called {called} over {transport}"
            try:
                self.audit.record(Action.ASSOCIATION, Outcome.SUCCESS, actor, detail=detail)
            except AuditUnavailable:
                # Nothing is served unrecorded: a transient refusal, the peer may retry.
                return AssociationDecision(None, _RJ_BUSY, "audit trail unavailable")
            return decision
        log.warning(
            "association rejected: calling %r called %r from %s over %s: %s",
            calling, called, address, transport, decision.why,
        )  # fmt: skip
        self.audit.record(
            Action.ASSOCIATION, Outcome.REFUSED, actor, detail=decision.why, best_effort=True
        )
        # A caller that proved with its certificate which peer it is answers for its own
        # failures; everybody else's count against the address they come from.
        proven = self.peers.by_ae_title(calling)
        source = (
            peer_key(proven.name)
            if proven is not None and self.proven_by_certificate(proven, tls)
            else address_key(address)
        )
        self._count_failure(source, account, decision.why)
        return decision

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
        self.audit.record(
            Action.ASSOCIATION,
            Outcome.REFUSED,
            Actor("unknown", "-", address),
            detail=why,
            best_effort=True,
        )
        if count:
            self._count_failure(address_key(address), None, why)

    def allows(self, peer: Peer | None, service: Service) -> bool:
        """True when *peer* was granted *service*."""
        return peer is not None and service in peer.services

    def refuse(self, actor: Actor, action: Action, why: str) -> None:
        """Record a refused request (a service the peer was not granted, an unknown destination)."""
        log.warning("request refused: %s: %s", actor.describe(), why)
        self.audit.record(action, Outcome.REFUSED, actor, detail=why, best_effort=True)

    def move_destination(self, peer: Peer, destination_aet: str) -> Peer | None:
        """The registered destination a C-MOVE from *peer* may send to, or None."""
        if not self.allows(peer, Service.MOVE):
            return None
        dest = self.peers.by_ae_title(destination_aet)
        if dest is None or not dest.can_receive:
            return None
        return dest
