"""What pacsvault takes from pynetdicom, checked so an upgrade that changes it fails loudly.

pacsvault runs its own DICOM upper layer; from pynetdicom it uses only the
A-ASSOCIATE PDU codecs, a few service primitives and two of its SOP class tables,
both private (``_STORAGE_CLASSES``, ``_VERIFICATION_CLASSES``). It overrides nothing.
The test harness patches one private detail of pynetdicom's requestor
(tests/pynetdicom_fix.py), checked here too. pyproject.toml pins the minor version;
bump it only with this file green.
"""

from __future__ import annotations

import importlib.metadata

from pynetdicom import sop_class
from pynetdicom.association import Association

from pacsvault.dimse.negotiation import (
    AssociateRequest,
    Negotiated,
    ProposedContext,
    decode_request,
    encode_accept,
    service_of,
)
from pacsvault.dimse.requestor import _request_pdu
from pacsvault.security.peers import Service


def test_the_pinned_version_is_the_one_installed() -> None:
    version = importlib.metadata.version("pynetdicom")
    assert version.startswith("3.0."), version


def test_private_sop_class_tables_exist_and_hold_what_we_expect() -> None:
    for table in ("_STORAGE_CLASSES", "_VERIFICATION_CLASSES"):
        assert isinstance(getattr(sop_class, table), dict) and getattr(sop_class, table)
    assert service_of("1.2.840.10008.1.1") is Service.ECHO
    assert service_of("1.2.840.10008.5.1.4.1.1.2") is Service.STORE  # CT
    assert service_of("1.2.840.10008.5.1.4.1.2.2.1") is Service.FIND
    assert service_of("1.2.840.10008.5.1.4.1.2.2.3") is Service.GET
    assert service_of("1.2.3.4.5.6.7") is Service.STORE  # private / unknown: storage
    assert service_of("1.2.840.10008.5.1.4.31") is None  # worklist: not offered
    assert service_of("1.2.840.10008.1.20.1") is None  # storage commitment: not storage
    assert service_of("1.2.840.10008.5.1.4.1.1.1.1") is Service.STORE  # DX for presentation
    assert service_of("1.2.840.10008.5.1.4.1.1.9999") is Service.STORE  # newer than pydicom


def test_associate_rq_and_ac_round_trip() -> None:
    contexts = [
        ProposedContext(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
        ProposedContext(3, "1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.1",
                                                          "1.2.840.10008.1.2")),
    ]  # fmt: skip
    rq = decode_request(_request_pdu("CALLING", "CALLED", contexts))
    assert (rq.calling_ae, rq.called_ae) == ("CALLING", "CALLED")
    assert rq.application_context == "1.2.840.10008.3.1.1.1"
    assert rq.contexts == contexts
    assert rq.max_length == 64 * 1024 and rq.identity is None
    negotiated = Negotiated(
        [(1, 0, "1.2.840.10008.1.2"), (3, 3, "1.2.840.10008.1.2.1")],
        {},
        [("1.2.840.10008.5.1.4.1.1.2", False, True)],
    )
    ac = encode_accept(rq, negotiated, 1 << 20, identity_response=b"")
    assert ac[0] == 0x02 and int.from_bytes(ac[2:6], "big") == len(ac) - 6
    from pynetdicom.pdu import A_ASSOCIATE_AC

    pdu = A_ASSOCIATE_AC()
    pdu.decode(ac)
    prim = pdu.to_primitive()
    results = {cx.context_id: cx.result for cx in prim.presentation_context_definition_results_list}
    assert results == {1: 0, 3: 3}
    kinds = {type(i).__name__ for i in prim.user_information}
    assert {"MaximumLengthNotification", "ImplementationClassUIDNotification",
            "SCP_SCU_RoleSelectionNegotiation", "UserIdentityNegotiation"} <= kinds  # fmt: skip
    assert isinstance(rq, AssociateRequest)


def test_the_requestor_internals_the_test_harness_patches_exist() -> None:
    from pynetdicom import AE

    assoc = Association(AE(), "requestor")
    assert hasattr(assoc, "_reactor_checkpoint")
    assert "_is_paused" in Association._run_reactor.__code__.co_names
