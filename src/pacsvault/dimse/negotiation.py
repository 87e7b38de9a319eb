"""Association acceptance: the AccessPolicy decides, then contexts are offered per peer.

pynetdicom's own acceptor checks (one list of calling AE titles, one called AE
title) cannot express "this AE title, from this address, for these services".
:class:`PolicyACSE` replaces the acceptor negotiation: it asks the AccessPolicy,
rejects with the A-ASSOCIATE-RJ reason the policy gives, and otherwise offers a
peer only the presentation contexts of the services it was granted. Storage is
open to every SOP class, including private ones and those newer than the
dictionaries, so a registered modality is never refused for being unfamiliar.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, cast

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import _config, evt, sop_class
from pynetdicom.acse import ACSE
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import _QR_CLASSES, _STORAGE_CLASSES, _VERIFICATION_CLASSES
from pynetdicom.transport import RequestHandler

from pacsvault.security.peers import Peer, Service
from pacsvault.security.policy import IdentityClaim
from pacsvault.security.tls import TlsInfo
from pacsvault.security.users import User

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from pacsvault.security.policy import AccessPolicy

log = logging.getLogger("pacsvault.dimse")

# Dispatch every C-STORE to the storage service, whatever its SOP class. Acceptance
# is decided by PolicyACSE below, never by pynetdicom's unrestricted negotiation.
_config.UNRESTRICTED_STORAGE_SERVICE = True

QUERY_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Service.FIND,  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.2.1": Service.FIND,  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Service.MOVE,
    "1.2.840.10008.5.1.4.1.2.2.2": Service.MOVE,
    "1.2.840.10008.5.1.4.1.2.1.3": Service.GET,
    "1.2.840.10008.5.1.4.1.2.2.3": Service.GET,
}

UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)
STORAGE_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)
_STORAGE_UIDS = frozenset(_STORAGE_CLASSES.values())
_NON_STORAGE = frozenset(_QR_CLASSES.values()) | frozenset(_VERIFICATION_CLASSES.values())


def service_of(abstract_syntax: str) -> Service | None:
    """The service an abstract syntax belongs to, or None when we do not offer it.

    Anything that is not a known non-storage SOP class (private, unknown, or a known
    storage class) counts as storage.
    """
    if abstract_syntax in _VERIFICATION_CLASSES.values():
        return Service.ECHO
    if abstract_syntax in QUERY_MODELS:
        return QUERY_MODELS[abstract_syntax]
    uid = UID(abstract_syntax)
    if uid in _STORAGE_UIDS or uid.is_private or not hasattr(sop_class, uid.keyword or "-"):
        return Service.STORE if uid not in _NON_STORAGE else None
    return None


def contexts_for(peer: Peer, requested: list[PresentationContext]) -> list[PresentationContext]:
    """Acceptor contexts for exactly the requested abstract syntaxes *peer* may use.

    Transfer syntaxes keep the requestor's order of preference; query/retrieve and
    verification take the uncompressed ones only.
    """
    out: dict[str, PresentationContext] = {}
    for rq in requested:
        ab = str(rq.abstract_syntax)
        service = service_of(ab)
        if service is None or service not in peer.services or ab in out:
            continue
        allowed = STORAGE_TRANSFER_SYNTAXES if service is Service.STORE else UNCOMPRESSED
        proposed = [
            str(ts) for r in requested if r.abstract_syntax == ab for ts in r.transfer_syntax
        ]
        syntaxes = [ts for ts in dict.fromkeys(proposed) if ts in allowed]
        if not syntaxes:
            continue
        cx = PresentationContext()
        cx.abstract_syntax = ab
        cx.transfer_syntax = syntaxes
        if service is Service.STORE and Service.GET in peer.services:
            cx.scu_role, cx.scp_role = True, True  # C-GET: we act as storage SCU
        out[ab] = cx
    return list(out.values())


def tls_of(assoc: Association) -> TlsInfo | None:
    """What TLS established for this association's connection (None: cleartext)."""
    return cast(TlsInfo | None, getattr(assoc, "pacsvault_tls", None))


def user_of(assoc: Association) -> User | None:
    """The user a verified identity negotiation named, if any."""
    return cast(User | None, getattr(assoc, "pacsvault_user", None))


def peer_of(assoc: Association) -> Peer | None:
    """The registered peer an accepted association belongs to."""
    return cast(Peer | None, getattr(assoc, "pacsvault_peer", None))


class PolicyACSE(ACSE):
    """ACSE whose acceptor negotiation is decided by the AccessPolicy."""

    policy: AccessPolicy

    def _negotiate_as_acceptor(self) -> None:
        rq = self.requestor.primitive
        assert rq is not None
        self.requestor.ae_title = rq.calling_ae_title
        item = self.requestor.user_identity
        claim = (
            IdentityClaim(item.user_identity_type, item.primary_field, item.secondary_field)
            if item is not None and item.user_identity_type is not None
            else None
        )
        decision = self.policy.check_association(
            str(rq.called_ae_title),
            str(rq.calling_ae_title),
            self.requestor.address,
            tls=tls_of(self.assoc),
            identity=claim,
        )
        if decision.reject is not None:
            self._reject(*decision.reject)
            return
        self.assoc.pacsvault_peer = cast(Peer, decision.peer)  # type: ignore[attr-defined]
        self.assoc.pacsvault_user = decision.user  # type: ignore[attr-defined]
        peer = cast(Peer, decision.peer)

        # Only established associations count: silent or half-open connections must not
        # use up the limit for everyone else (they time out on their own).
        active = [
            a for a in self.assoc.ae.active_associations if a.is_acceptor and a.is_established
        ]
        if len(active) >= self.assoc.ae.maximum_associations:
            log.warning("association rejected: local limit of associations reached")
            self._reject(0x02, 0x03, 0x02)
            return

        for item in self._check_sop_class_extended():
            self.acceptor.add_negotiation_item(item)
        self.acceptor._common_ext = self._check_sop_class_common_extended()

        roles = {
            uid: (item.scu_role, item.scp_role)
            for uid, item in self.requestor.role_selection.items()
        }
        requested = rq.presentation_context_definition_list
        result, ac_roles = negotiate_as_acceptor(requested, contexts_for(peer, requested), roles)
        self.assoc._accepted_cx = {
            cast(int, cx.context_id): cx for cx in result if cx.result == 0x00
        }
        self.assoc._rejected_cx = [cx for cx in result if cx.result != 0x00]
        for role_item in ac_roles:
            self.acceptor.add_negotiation_item(role_item)

        self.send_accept()
        evt.trigger(self.assoc, evt.EVT_ACCEPTED, {})
        self.assoc.is_established = True
        evt.trigger(self.assoc, evt.EVT_ESTABLISHED, {})

    def _reject(self, result: int, source: int, reason: int) -> None:
        self.send_reject(result, source, reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class _TransportRefused(Exception):
    """The connection failed before an association could be negotiated."""


def request_handler(
    policy: AccessPolicy, tls: ssl.SSLContext | None = None, handshake_timeout: float = 30.0
) -> type[RequestHandler]:
    """A request handler class whose associations negotiate through *policy*.

    With *tls*, the TLS handshake runs in the connection's own thread (a slow or
    failing client never holds up the listener) and a failure is refused, logged,
    audited and counted towards lockout like any other.
    """

    class _PolicyACSE(PolicyACSE):
        pass

    _PolicyACSE.policy = policy

    class _Handler(RequestHandler):
        def handle(self) -> None:
            try:
                super().handle()
            except _TransportRefused:
                with contextlib.suppress(OSError):
                    self.request.close()

        def _create_association(self) -> Association:
            sock = cast(socket.socket, self.request)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A peer that goes quiet mid-PDU must not hold a thread forever.
            sock.settimeout(self.ae.network_timeout)
            info = None
            if tls is not None:
                address = str(self.client_address[0])
                try:
                    sock.settimeout(handshake_timeout)
                    tls_sock = tls.wrap_socket(sock, server_side=True)
                    tls_sock.settimeout(self.ae.network_timeout)
                except (ssl.SSLError, OSError) as exc:
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    policy.transport_failure(address, f"TLS handshake failed: {reason}")
                    raise _TransportRefused from None
                self.request = tls_sock
                info = TlsInfo(str(tls_sock.version()), tls_sock.getpeercert(binary_form=True))
            assoc = super()._create_association()
            assoc.pacsvault_tls = info  # type: ignore[attr-defined]
            assoc.acse = _PolicyACSE(assoc)
            return assoc

    return _Handler
