"""Association negotiation (PS3.7 annex D, PS3.8 9.3.2-9.3.3): what a peer is offered.

The AccessPolicy decides *whether* a peer may associate; this module decides *what*
it gets: the presentation contexts of the services it was granted, and the SCU/SCP
roles on storage contexts. A peer granted ``get`` may receive C-GET sub-operations
(the requestor acts as storage SCP through role selection), but only a peer granted
``store`` may send us C-STORE requests. Storage is open to every SOP class, including
private ones and those newer than the dictionaries, so a registered modality is never
refused for being unfamiliar.

A-ASSOCIATE PDUs are decoded and encoded with pynetdicom's PDU classes (public API);
nothing of pynetdicom's association machinery is used or overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES, _VERIFICATION_CLASSES

from pacsvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsvault.dicom.transcode import UNCOMPRESSED
from pacsvault.security.peers import Peer, Service

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

QUERY_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": Service.FIND,  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.2.1": Service.FIND,  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2": Service.MOVE,
    "1.2.840.10008.5.1.4.1.2.2.2": Service.MOVE,
    "1.2.840.10008.5.1.4.1.2.1.3": Service.GET,
    "1.2.840.10008.5.1.4.1.2.2.3": Service.GET,
}

STORAGE_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in AllTransferSyntaxes)
_STORAGE_UIDS = frozenset(str(u) for u in _STORAGE_CLASSES.values())
_VERIFICATION_UIDS = frozenset(str(u) for u in _VERIFICATION_CLASSES.values())

# Presentation context results (PS3.8 9.3.3.2)
ACCEPTED = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def service_of(abstract_syntax: str) -> Service | None:
    """The service an abstract syntax belongs to, or None when we do not offer it.

    Known storage SOP classes, and UIDs no dictionary knows yet (private ones, or
    classes newer than pydicom's), count as storage; every other known SOP class
    (worklist, storage commitment, print...) is not offered.
    """
    if abstract_syntax in _VERIFICATION_UIDS:
        return Service.ECHO
    if abstract_syntax in QUERY_MODELS:
        return QUERY_MODELS[abstract_syntax]
    if abstract_syntax in _STORAGE_UIDS:
        return Service.STORE
    uid = UID(abstract_syntax)
    name = uid.name
    if uid.is_private or name == abstract_syntax:
        return Service.STORE  # unknown to the dictionaries: a newer storage class
    if "Storage" in name and not name.startswith("Storage Commitment"):
        return Service.STORE
    return None


@dataclass(frozen=True)
class Context:
    """An accepted presentation context.

    ``requestor_scu``: the peer may send requests on it (C-STORE to us, C-FIND...).
    ``requestor_scp``: the peer accepts C-STORE sub-operations from us (C-GET).
    """

    id: int
    abstract_syntax: str
    transfer_syntax: str
    service: Service
    requestor_scu: bool = True
    requestor_scp: bool = False


@dataclass(frozen=True)
class ProposedContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class Negotiated:
    """Results for every proposed context, the accepted ones, and role replies."""

    results: list[tuple[int, int, str]]  # (context id, result, transfer syntax)
    accepted: dict[int, Context]
    roles: list[tuple[str, bool, bool]]  # (SOP class, SCU role, SCP role) replies


def negotiate(
    peer: Peer,
    proposed: list[ProposedContext],
    roles: dict[str, tuple[bool, bool]],
) -> Negotiated:
    """Decide every proposed context for *peer* (roles: the requestor's role proposals)."""
    out = Negotiated([], {}, [])
    replied: set[str] = set()
    for cx in proposed:
        ab = cx.abstract_syntax
        service = service_of(ab)
        first_ts = cx.transfer_syntaxes[0] if cx.transfer_syntaxes else ""
        if service is None or not _granted(peer, service):
            out.results.append((cx.id, ABSTRACT_SYNTAX_NOT_SUPPORTED, first_ts))
            continue
        scu, scp = True, False
        if service is Service.STORE:
            proposed_scu, proposed_scp = roles.get(ab, (True, False))
            scu = proposed_scu and Service.STORE in peer.services
            scp = proposed_scp and Service.GET in peer.services
            if not (scu or scp):
                out.results.append((cx.id, ABSTRACT_SYNTAX_NOT_SUPPORTED, first_ts))
                continue
        allowed = STORAGE_TRANSFER_SYNTAXES if service is Service.STORE else UNCOMPRESSED
        ts = next((t for t in cx.transfer_syntaxes if t in allowed), None)
        if ts is None:
            out.results.append((cx.id, TRANSFER_SYNTAXES_NOT_SUPPORTED, first_ts))
            continue
        out.results.append((cx.id, ACCEPTED, ts))
        out.accepted[cx.id] = Context(cx.id, ab, ts, service, scu, scp)
        if ab in roles and ab not in replied:
            replied.add(ab)
            out.roles.append((ab, scu, scp))
    return out


def _granted(peer: Peer, service: Service) -> bool:
    if service is Service.STORE:
        return bool({Service.STORE, Service.GET} & set(peer.services))
    return service in peer.services


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ that pacsvault uses."""

    calling_ae: str
    called_ae: str
    application_context: str
    contexts: list[ProposedContext]
    roles: dict[str, tuple[bool, bool]]
    max_length: int  # the requestor's maximum PDU length (0: unlimited)
    identity: UserIdentityNegotiation | None


class MalformedRequest(ValueError):
    """An A-ASSOCIATE-RQ body that cannot be decoded."""


def decode_request(body: bytes) -> AssociateRequest:
    """Decode an A-ASSOCIATE-RQ PDU (its 6-byte header included)."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(body)
        prim = pdu.to_primitive()
        contexts = [
            ProposedContext(
                int(cx.context_id),  # type: ignore[arg-type]
                str(cx.abstract_syntax),
                tuple(str(ts) for ts in cx.transfer_syntax),
            )
            for cx in prim.presentation_context_definition_list
        ]
        roles: dict[str, tuple[bool, bool]] = {}
        max_length = 0
        identity = None
        for item in prim.user_information:
            if isinstance(item, MaximumLengthNotification):
                max_length = int(item.maximum_length_received or 0)
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles[str(item.sop_class_uid)] = (bool(item.scu_role), bool(item.scp_role))
            elif isinstance(item, UserIdentityNegotiation):
                identity = item
        return AssociateRequest(
            str(prim.calling_ae_title).strip(),
            str(prim.called_ae_title).strip(),
            str(prim.application_context_name or ""),
            contexts,
            roles,
            max_length,
            identity,
        )
    except Exception as exc:
        raise MalformedRequest(f"malformed A-ASSOCIATE-RQ ({type(exc).__name__})") from None


def encode_accept(
    request: AssociateRequest,
    negotiated: Negotiated,
    max_length: int,
    identity_response: bytes | None = None,
) -> bytes:
    """The A-ASSOCIATE-AC PDU (header included) for *request*."""
    prim = A_ASSOCIATE()
    prim.application_context_name = UID(APPLICATION_CONTEXT)
    prim.calling_ae_title = request.calling_ae or "ANY"
    prim.called_ae_title = request.called_ae or "ANY"
    prim.result = 0x00
    prim.result_source = 0x01
    results = []
    for cid, result, ts in negotiated.results:
        cx = PresentationContext()
        cx.context_id = cid
        cx.result = result
        if ts:
            cx.transfer_syntax = [UID(ts)]
        results.append(cx)
    prim.presentation_context_definition_results_list = results
    info: list = []
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_length
    info.append(ml)
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    info.append(impl)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    info.append(version)
    for ab, scu, scp in negotiated.roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = UID(ab)
        role.scu_role = scu
        role.scp_role = scp
        info.append(role)
    if identity_response is not None:
        item = UserIdentityNegotiation()
        item.server_response = identity_response
        info.append(item)
    prim.user_information = info
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    return pdu.encode()
