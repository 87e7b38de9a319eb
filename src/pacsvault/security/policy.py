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

from pacsvault.security.audit import Action, AuditTrail, Outcome
from pacsvault.security.identity import Actor
from pacsvault.security.peers import Peer, PeerRegistry, Service

log = logging.getLogger("pacsvault.policy")

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07


@dataclass(frozen=True)
class AssociationDecision:
    """The outcome of an association request: a peer, or a rejection with its reason."""

    peer: Peer | None
    reject: tuple[int, int, int] | None
    why: str

    @property
    def accepted(self) -> bool:
        return self.reject is None


class AccessPolicy:
    """Decides, for every DICOM request, whether the caller may proceed."""

    def __init__(
        self,
        peers: PeerRegistry,
        ae_title: str,
        audit: AuditTrail,
        *,
        cleartext_networks: list[str] | None = None,
    ) -> None:
        self.peers = peers
        self.ae_title = ae_title
        self.audit = audit
        self.cleartext_networks = [
            ipaddress.ip_network(n, strict=False) for n in (cleartext_networks or [])
        ]

    def _cleartext_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip.is_loopback or any(ip in net for net in self.cleartext_networks)

    def check_association(
        self, called_aet: str, calling_aet: str, address: str, *, tls: bool = False
    ) -> AssociationDecision:
        """Decide on an A-ASSOCIATE-RQ. Refusals are logged (no PHI) and audited."""
        called, calling = called_aet.strip(), calling_aet.strip()
        decision: AssociationDecision
        if called != self.ae_title:
            decision = AssociationDecision(
                None,
                (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED),
                "called AE title is not ours",
            )
        elif not tls and not self._cleartext_allowed(address):
            decision = AssociationDecision(
                None,
                (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_NO_REASON),
                "cleartext DICOM from a network not listed in dicom.cleartext_networks",
            )
        else:
            peer = self.peers.by_ae_title(calling)
            if peer is None:
                decision = AssociationDecision(
                    None,
                    (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED),
                    "calling AE title is not a registered peer",
                )
            elif not peer.matches_address(address):
                # Same answer as an unknown AE: a guesser must not learn which titles exist.
                decision = AssociationDecision(
                    None,
                    (REJECTED_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED),
                    f"source address is not the address registered for peer {peer.name}",
                )
            else:
                decision = AssociationDecision(peer, None, f"registered peer {peer.name}")
        peer = decision.peer
        actor = Actor(
            "peer" if peer else "unknown", peer.name if peer else calling, address, calling
        )
        if decision.accepted:
            log.info("association accepted: %s", actor.describe())
            self.audit.record(Action.ASSOCIATION, Outcome.SUCCESS, actor, detail=f"called {called}")
        else:
            log.warning(
                "association rejected: calling %r called %r from %s: %s",
                calling,
                called,
                address,
                decision.why,
            )
            self.audit.record(Action.ASSOCIATION, Outcome.REFUSED, actor, detail=decision.why)
        return decision

    def allows(self, peer: Peer | None, service: Service) -> bool:
        """True when *peer* was granted *service*."""
        return peer is not None and service in peer.services

    def refuse(self, actor: Actor, action: Action, why: str) -> None:
        """Record a refused request (a service the peer was not granted, an unknown destination)."""
        log.warning("request refused: %s: %s", actor.describe(), why)
        self.audit.record(action, Outcome.REFUSED, actor, detail=why)

    def move_destination(self, peer: Peer, destination_aet: str) -> Peer | None:
        """The registered destination a C-MOVE from *peer* may send to, or None."""
        if not self.allows(peer, Service.MOVE):
            return None
        dest = self.peers.by_ae_title(destination_aet)
        if dest is None or not dest.can_receive:
            return None
        return dest
