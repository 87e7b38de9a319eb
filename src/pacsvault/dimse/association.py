"""One accepted connection: the handshake, then requests until release or abort.

Everything a stranger can send before the AccessPolicy has accepted the
association is bounded: the first PDU must be an A-ASSOCIATE-RQ of at most
:data:`MAX_ASSOCIATE_RQ` bytes, within the handshake timeout. Anything else ends
the connection at once (an A-ABORT where a PDU was understood), is audited and
counts towards the lockout of the source address.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pacsvault.dimse import messages as m
from pacsvault.dimse.channel import Aborted, Channel, Message, Released
from pacsvault.dimse.handlers import DimseServices
from pacsvault.dimse.negotiation import (
    APPLICATION_CONTEXT,
    MalformedRequest,
    decode_request,
    encode_accept,
    negotiate,
)
from pacsvault.dimse.outbound import StoreRequester
from pacsvault.dimse.wire import (
    A_ASSOCIATE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    ConnectionClosed,
    Wire,
    WireError,
)
from pacsvault.security.identity import Actor, Principal, Refusal, RefusalReason
from pacsvault.security.peers import Peer
from pacsvault.security.policy import AccessPolicy, AssociationRequest, IdentityClaim
from pacsvault.security.tls import TlsInfo

log = logging.getLogger("pacsvault.dimse")

#: Largest A-ASSOCIATE-RQ accepted (128 presentation contexts and a JWT fit easily).
MAX_ASSOCIATE_RQ = 256 * 1024

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_USER, SOURCE_ACSE, SOURCE_PRESENTATION = 0x01, 0x02, 0x03
NO_REASON = 0x01
APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
CALLING_AE_NOT_RECOGNIZED = 0x03
CALLED_AE_NOT_RECOGNIZED = 0x07
PROTOCOL_VERSION_NOT_SUPPORTED = 0x02
LOCAL_LIMIT_EXCEEDED = 0x02

#: The A-ASSOCIATE-RJ (result, source, reason) for each policy refusal. A locked-out or
#: wrong-address caller gets the same answer as an unknown AE title.
REJECTIONS: dict[RefusalReason, tuple[int, int, int]] = {
    RefusalReason.UNKNOWN_CALLER: (REJECT_PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED),
    RefusalReason.WRONG_RECIPIENT: (REJECT_PERMANENT, SOURCE_USER, CALLED_AE_NOT_RECOGNIZED),
    RefusalReason.TRANSPORT: (REJECT_PERMANENT, SOURCE_USER, NO_REASON),
    RefusalReason.IDENTITY: (REJECT_PERMANENT, SOURCE_USER, NO_REASON),
    RefusalReason.BUSY: (REJECT_TRANSIENT, SOURCE_USER, NO_REASON),
}


@dataclass
class Limits:
    """What one association may use."""

    max_pdu: int  # our maximum PDU length (0: unlimited)
    handshake_timeout: float
    idle_timeout: float


class AcceptorAssociation(StoreRequester):
    """An established association with a registered peer."""

    we_are_scu_by_role = True

    def __init__(
        self,
        wire: Wire,
        channel: Channel,
        principal: Principal,
        calling_aet: str,
        services: DimseServices,
    ) -> None:
        super().__init__()
        self.wire = wire
        self.channel = channel
        self.contexts = channel.contexts
        self.principal = principal
        self.calling_aet = calling_aet
        self.services = services

    @property
    def actor(self) -> Actor:
        return self.principal.actor

    def run(self) -> None:
        """Serve requests until the peer releases or aborts, or breaks the protocol."""
        try:
            while True:
                msg = self.channel.next_message(
                    lambda cx, cmd: self.services.sink_for(self, cx, cmd)
                )
                self.cancelled = False
                self.services.dispatch(self, msg)
        except Released:
            self.channel.send_release_reply()
        except Aborted:
            log.info("association aborted by %s", self.actor.describe())
        except ConnectionClosed as exc:
            log.info("association with %s ended: %s", self.actor.describe(), exc)
        except WireError as exc:
            log.warning("aborting association with %s: %s", self.actor.describe(), exc)
            if exc.abort_reason is not None:
                self.wire.send_abort(reason=exc.abort_reason)

    def reply(
        self,
        msg: Message,
        command_field: int,
        status: int,
        comment: str | None = None,
        *,
        dataset: bytes | None = None,
        **extra: int | str,
    ) -> None:
        """Send a response to *msg* on its context."""
        if comment:
            extra["error_comment"] = comment[:64]
        fields = m.response(msg.command, command_field, status, **extra)
        self.channel.send(msg.context.id, fields, dataset)

    def cancel_requested(self, message_id: int) -> bool:
        """True once the peer has sent a C-CANCEL for *message_id* (checks without waiting)."""
        while not self.cancelled and self.wire.has_pending():
            msg = self.channel.next_message(lambda _c, _m: _refuse_dataset())
            if msg.command.command_field != m.C_CANCEL_RQ:
                raise WireError("a new request while one is in progress", ABORT_UNEXPECTED_PDU)
            if msg.command.get_int(m.RESPONDED_TO) == message_id:
                self.cancelled = True
        return self.cancelled


def _refuse_dataset() -> None:
    raise WireError("a new request while one is in progress", ABORT_UNEXPECTED_PDU)


def accept(
    sock: socket.socket,
    address: str,
    *,
    policy: AccessPolicy,
    services: DimseServices,
    limits: Limits,
    tls: ssl.SSLContext | None,
    admit: Callable[[Peer], bool],
) -> AcceptorAssociation | None:
    """Run the handshake on a new connection; the association, or None when refused.

    *admit* is asked (after the policy accepted the peer) whether a slot is free;
    when it is not, the peer gets a transient "local limit exceeded" rejection.
    The socket is closed when None is returned.
    """
    sock.settimeout(limits.handshake_timeout)
    info = None
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            policy.transport_failure(address, f"TLS handshake failed: {reason}")
            _close(sock)
            return None
        tls_sock: ssl.SSLSocket = sock  # type: ignore[assignment]
        info = TlsInfo(str(tls_sock.version()), tls_sock.getpeercert(binary_form=True))
    wire = Wire(sock)
    try:
        assoc = _handshake(wire, address, info, policy, services, limits, admit)
    except ConnectionClosed:
        wire.close()
        return None
    except WireError as exc:
        policy.transport_failure(address, f"association request refused: {exc}", count=False)
        if exc.abort_reason is not None:
            wire.send_abort(reason=exc.abort_reason)
        wire.close()
        return None
    if assoc is None:
        wire.close()
        return None
    sock.settimeout(limits.idle_timeout)
    return assoc


def _handshake(
    wire: Wire,
    address: str,
    tls: TlsInfo | None,
    policy: AccessPolicy,
    services: DimseServices,
    limits: Limits,
    admit: Callable[[Peer], bool],
) -> AcceptorAssociation | None:
    pdu_type, length = wire.read_pdu_header(MAX_ASSOCIATE_RQ)
    if pdu_type != A_ASSOCIATE_RQ:
        raise WireError(f"expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                        ABORT_UNEXPECTED_PDU)  # fmt: skip
    body = wire.read_body(length)
    try:
        request = decode_request(struct.pack(">BxL", pdu_type, length) + body)
    except MalformedRequest as exc:
        raise WireError(str(exc), ABORT_INVALID_PARAMETER) from None
    if not body[:2] or not (body[1] & 0x01):
        policy.transport_failure(address, "unsupported protocol version", count=False)
        wire.send_reject(REJECT_PERMANENT, SOURCE_ACSE, PROTOCOL_VERSION_NOT_SUPPORTED)
        return None
    if request.application_context != APPLICATION_CONTEXT:
        policy.transport_failure(address, "unsupported application context", count=False)
        wire.send_reject(REJECT_PERMANENT, SOURCE_USER, APPLICATION_CONTEXT_NOT_SUPPORTED)
        return None
    item = request.identity
    claim = (
        IdentityClaim(item.user_identity_type, item.primary_field, item.secondary_field)
        if item is not None and item.user_identity_type is not None
        else None
    )
    outcome = policy.authenticate_association(
        AssociationRequest(request.called_ae, request.calling_ae, address, tls, claim)
    )
    if isinstance(outcome, Refusal):
        wire.send_reject(*REJECTIONS[outcome.reason])
        return None
    peer = outcome.peer
    assert peer is not None
    if not admit(peer):
        log.warning("association rejected: association limit reached (%s)", peer.name)
        wire.send_reject(REJECT_TRANSIENT, SOURCE_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
        return None
    negotiated = negotiate(peer, request.contexts, request.roles)
    identity_response = (
        b"" if item is not None and item.positive_response_requested and outcome.user else None
    )
    wire.send(encode_accept(request, negotiated, limits.max_pdu, identity_response))
    channel = Channel(
        wire, negotiated.accepted, max_send=request.max_length, max_receive=limits.max_pdu
    )
    return AcceptorAssociation(wire, channel, outcome, request.calling_ae, services)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
