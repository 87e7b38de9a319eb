"""pynetdicom as a client: C-MOVE to a registered pynetdicom storage SCP, and refusals."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelMove

from conftest import CLIENT_AET, SERVER_AET, cli, dataset_bytes, free_port, write_data_set
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_move_to_a_pynetdicom_receiver(data_dir: Path, make_server, tmp_path: Path) -> None:
    dest_port = free_port()
    cli(
        data_dir,
        "peer",
        "add",
        "ws",
        "--aet",
        CLIENT_AET,
        "--host",
        "127.0.0.1",
        "--port",
        str(dest_port),
        "--allow",
        "store,find,move",
    )
    cli(
        data_dir,
        "peer",
        "add",
        "archive2",
        "--aet",
        "ARCHIVE2",
        "--host",
        "127.0.0.1",
        "--allow",
        "store",
    )  # registered, but without a port: not a move destination
    server = make_server(data_dir)
    files = write_data_set(tmp_path / "f", Spec(patients=2, studies_per_patient=1))
    store_ae = AE(ae_title=CLIENT_AET)
    for uid in SOP_CLASS_FOR.values():
        store_ae.add_requested_context(uid, EXPLICIT_LE)
    assoc = store_ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
    assert assoc.is_established
    assert all(assoc.send_c_store(ds).Status == 0 for _, ds in files)
    assoc.release()

    received: dict[str, bytes] = {}

    def on_store(event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0

    receiver = AE(ae_title=CLIENT_AET)
    for uid in SOP_CLASS_FOR.values():
        receiver.add_supported_context(uid, EXPLICIT_LE)
    scp = receiver.start_server(
        ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        mover = AE(ae_title=CLIENT_AET)
        mover.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
        assoc = mover.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
        assert assoc.is_established
        patient = files[0][1].PatientID
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = patient
        model = PatientRootQueryRetrieveInformationModelMove
        statuses = [s.Status for s, _ in assoc.send_c_move(query, CLIENT_AET, model)]
        assert statuses[-1] == 0x0000
        unknown = [s.Status for s, _ in assoc.send_c_move(query, "ARCHIVE2", model)]
        assert unknown[-1] == 0xA801
        assoc.release()
    finally:
        scp.shutdown()
    sent = {ds.SOPInstanceUID: p for p, ds in files if ds.PatientID == patient}
    assert received.keys() == sent.keys()
    # pynetdicom's C-STORE above re-encoded the datasets; what we stored is what it sent.
    for uid, path in sent.items():
        assert received[uid] == dataset_bytes(path)
