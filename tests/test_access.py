"""The access policy at the DICOM door: who may associate, from where, for what."""

from __future__ import annotations

from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from conftest import CLIENT_AET, SERVER_AET, cli, dcmtk

PHI_NAME = "SECRETNAME^PATIENT"


def echo(port: int, calling: str = CLIENT_AET, called: str = SERVER_AET):
    return dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port))


def pynetdicom_echo(port: int, calling: str, source: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AET, bind_address=(source, 0))
    try:
        if not assoc.is_established:
            return False
        return assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def test_registered_peer_is_accepted(server) -> None:
    assert echo(server.port).returncode == 0


def test_unregistered_calling_ae_is_rejected(server) -> None:
    proc = echo(server.port, calling="STRANGER")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
    assert "calling AE title is not a registered peer" in server.log_text()
    refused = [r for r in server.audit() if r[0] == "association" and r[1] == "refused"]
    assert refused and refused[-1][3] == "127.0.0.1"


def test_wrong_called_ae_is_rejected(server) -> None:
    proc = echo(server.port, called="NOTPACSVAULT")
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stderr + proc.stdout
    assert "called AE title is not ours" in server.log_text()


def test_registered_ae_from_wrong_address_is_rejected(data_dir: Path, make_server) -> None:
    cli(
        data_dir,
        "peer",
        "add",
        "ct",
        "--aet",
        "CTSCANNER",
        "--host",
        "127.0.0.2",
        "--allow",
        "echo,store",
    )
    server = make_server(data_dir)
    proc = echo(server.port, calling="CTSCANNER")  # echoscu connects from 127.0.0.1
    assert proc.returncode != 0
    # Same answer as an unknown AE title, so a guesser cannot tell which titles exist.
    assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
    assert "not the address registered for peer ct" in server.log_text()
    # The same AE title from its registered address is accepted.
    assert pynetdicom_echo(server.port, "CTSCANNER", "127.0.0.2")
    assert not pynetdicom_echo(server.port, "CTSCANNER", "127.0.0.3")


def test_peer_registered_by_network(data_dir: Path, make_server) -> None:
    cli(
        data_dir,
        "peer",
        "add",
        "ward",
        "--aet",
        "WARD",
        "--host",
        "127.0.0.0/24",
        "--allow",
        "echo",
    )
    server = make_server(data_dir)
    assert pynetdicom_echo(server.port, "WARD", "127.0.0.7")
    assert not pynetdicom_echo(server.port, "WARD", "127.0.1.7")


def test_store_only_peer_cannot_query(data_dir: Path, make_server, tmp_path: Path) -> None:
    from conftest import write_data_set
    from pacsvault.dicom.synthetic import Spec

    cli(
        data_dir,
        "peer",
        "add",
        "modality",
        "--aet",
        "MODALITY",
        "--host",
        "127.0.0.1",
        "--allow",
        "store",
    )
    server = make_server(data_dir)
    files = write_data_set(tmp_path / "f", Spec(patients=1, studies_per_patient=1))
    store = dcmtk(
        "storescu",
        "-aet",
        "MODALITY",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.port),
        *[str(p) for p, _ in files],
    )
    assert store.returncode == 0, store.stderr
    find = dcmtk(
        "findscu",
        "-aet",
        "MODALITY",
        "-aec",
        SERVER_AET,
        "-P",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientName=*",
        "127.0.0.1",
        str(server.port),
    )
    assert find.returncode != 0
    assert "No Acceptable Presentation Contexts" in find.stderr + find.stdout
    # Nor echo, which it was not granted either: only the storage contexts are offered.
    assert echo(server.port, calling="MODALITY").returncode != 0

    # pynetdicom sees the query model refused at negotiation (abstract syntax not supported).
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
    try:
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
        assert {cx.result for cx in assoc.rejected_contexts} == {0x03}
        assert len(assoc.rejected_contexts) == 2
    finally:
        assoc.release()


def test_refusals_never_log_patient_data(server, tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientName = PHI_NAME
    query = tmp_path / "q.dcm"
    ds.save_as(query, implicit_vr=True, little_endian=True)
    proc = dcmtk(
        "findscu",
        "-aet",
        "STRANGER",
        "-aec",
        SERVER_AET,
        "-P",
        "127.0.0.1",
        str(server.port),
        str(query),
    )
    assert proc.returncode != 0
    ok = dcmtk(
        "findscu",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "-P",
        "127.0.0.1",
        str(server.port),
        str(query),
    )
    assert ok.returncode == 0
    assert "SECRETNAME" not in server.log_text()
    assert not any("SECRETNAME" in str(row) for row in server.audit())
    queries = [r for r in server.audit() if r[0] == "query"]
    assert queries and "PatientName" in (queries[-1][4] or "")
