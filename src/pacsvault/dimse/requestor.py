"""Associations we open ourselves: to a C-MOVE destination, to send it stored instances."""

from __future__ import annotations

import logging
import socket
import struct

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)

from pacsvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsvault.dimse.channel import Aborted, Channel, Released
from pacsvault.dimse.negotiation import APPLICATION_CONTEXT, Context, ProposedContext
from pacsvault.dimse.outbound import StoreRequester, as_presentation_contexts
from pacsvault.dimse.wire import A_ASSOCIATE_AC as AC_TYPE
from pacsvault.dimse.wire import A_ASSOCIATE_RJ, A_RELEASE_RP, ConnectionClosed, Wire, WireError
from pacsvault.security.peers import Service

log = logging.getLogger("pacsvault.dimse")

#: Our maximum PDU length on associations we open (what the destination may send us).
MAX_PDU = 64 * 1024


class RequestorError(Exception):
    """The association could not be opened (refused, unreachable, no context accepted)."""


class RequestorAssociation(StoreRequester):
    """An association we opened, on which we send C-STORE requests."""

    def __init__(self, wire: Wire, channel: Channel) -> None:
        super().__init__()
        self.wire = wire
        self.channel = channel
        self.contexts = channel.contexts

    def release(self) -> None:
        """Release the association (A-RELEASE), then close the connection."""
        try:
            self.channel.send_release_request()
            while True:
                pdu_type, length = self.wire.read_pdu_header(1024)
                self.wire.skip(length)
                if pdu_type == A_RELEASE_RP:
                    break
        except (WireError, Aborted, Released):
            pass
        finally:
            self.wire.close()


def _request_pdu(calling: str, called: str, contexts: list[ProposedContext]) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = UID(APPLICATION_CONTEXT)
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    prim.presentation_context_definition_list = as_presentation_contexts(contexts)
    ml = MaximumLengthNotification()
    ml.maximum_length_received = MAX_PDU
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    prim.user_information = [ml, impl, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def associate(
    host: str,
    port: int,
    *,
    calling_aet: str,
    called_aet: str,
    contexts: list[ProposedContext],
    timeout: float,
) -> RequestorAssociation:
    """Open an association to *host*:*port* proposing *contexts* (storage, as SCU)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RequestorError(f"cannot connect ({type(exc).__name__})") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = Wire(sock)
    try:
        wire.send(_request_pdu(calling_aet, called_aet, contexts))
        pdu_type, length = wire.read_pdu_header(256 * 1024)
        body = wire.read_body(length)
        if pdu_type == A_ASSOCIATE_RJ:
            raise RequestorError("association rejected by the destination")
        if pdu_type != AC_TYPE:
            raise RequestorError(f"unexpected answer (PDU type 0x{pdu_type:02X})")
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BxL", pdu_type, length) + body)
        prim = ac.to_primitive()
    except (WireError, ConnectionClosed) as exc:
        wire.close()
        raise RequestorError(str(exc)) from None
    except RequestorError:
        wire.close()
        raise
    except Exception as exc:
        wire.close()
        raise RequestorError(f"malformed A-ASSOCIATE-AC ({type(exc).__name__})") from None
    proposed = {p.id: p for p in contexts}
    accepted: dict[int, Context] = {}
    for cx in prim.presentation_context_definition_results_list:
        cid = int(cx.context_id)  # type: ignore[arg-type]
        if cx.result == 0 and cid in proposed and cx.transfer_syntax:
            accepted[cid] = Context(
                cid, proposed[cid].abstract_syntax, str(cx.transfer_syntax[0]), Service.STORE
            )
    max_send = 0
    for item in prim.user_information:
        if isinstance(item, MaximumLengthNotification):
            max_send = int(item.maximum_length_received or 0)
    sock.settimeout(timeout)
    channel = Channel(wire, accepted, max_send=max_send, max_receive=MAX_PDU)
    return RequestorAssociation(wire, channel)
