"""Auditing fails closed (issue 7, item 11): no patient data leaves without its record.

The audit table is made to refuse writes under a running server (a trigger that
aborts every insert, as a full disk would), then: a C-FIND answers a failure status
and sends no match, a C-GET sends nothing, a C-STORE is refused and keeps nothing,
and a new association is refused. When the trail works again, so does everything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from conftest import CLIENT_AET, SERVER_AET, Server, cli, write_data_set
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec
from test_robustness import start_tuned_server

EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_tuned_server(tmp_path, demo_patients=1)
    yield srv
    srv.stop()


def break_audit(data: Path, broken: bool) -> None:
    with sqlite3.connect(data / "index.sqlite") as conn:
        if broken:
            conn.execute(
                "CREATE TRIGGER audit_full BEFORE INSERT ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        else:
            conn.execute("DROP TRIGGER audit_full")


def _associate(server: Server):  # type: ignore[no-untyped-def]
    from pynetdicom import AE

    received: list[str] = []

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for cx in (Verification, StudyRootQueryRetrieveInformationModelFind,
               StudyRootQueryRetrieveInformationModelGet, *SOP_CLASS_FOR.values()):  # fmt: skip
        ae.add_requested_context(cx, EXPLICIT_LE)
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title=SERVER_AET,
        ext_neg=[build_role(uid, scp_role=True, scu_role=True) for uid in SOP_CLASS_FOR.values()],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    return assoc, received


def _study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    return ds


def test_nothing_leaves_without_its_audit_record(server: Server, tmp_path: Path) -> None:
    assoc, received = _associate(server)
    assert assoc.is_established
    records_before = len(server.audit())
    break_audit(server.data, True)
    try:
        find = [
            (int(s.Status), str(s.get("ErrorComment", "")), ds)
            for s, ds in assoc.send_c_find(
                _study_query(), StudyRootQueryRetrieveInformationModelFind
            )
        ]
        assert find == [(0xA700, "audit trail unavailable", None)]

        get = [
            int(s.Status)
            for s, _ in assoc.send_c_get(_study_query(), StudyRootQueryRetrieveInformationModelGet)
        ]
        assert get == [0xA700] and received == []

        (_path, ds), *_ = write_data_set(tmp_path / "new", Spec(patients=1, seed=99))
        ds.SOPInstanceUID = generate_uid()  # a new instance, not one of the demo's
        status = assoc.send_c_store(ds)
        assert int(status.Status) == 0xA700  # the index row and its record commit together
        assoc.release()

        # A new association is refused while nothing can be recorded.
        again, _ = _associate(server)
        assert not again.is_established
        assert len(server.audit()) == records_before  # the trail did not change
        assert "instances: 8" in cli(server.data, "status").stdout
        assert not any((server.data / "blobs" / "tmp").iterdir())
    finally:
        break_audit(server.data, False)

    assoc, received = _associate(server)
    assert assoc.is_established
    get = [
        int(s.Status)
        for s, _ in assoc.send_c_get(_study_query(), StudyRootQueryRetrieveInformationModelGet)
    ]
    assert get[-1] == 0x0000 and len(received) == 8
    assoc.release()
    ended = [d for a, _o, _c, _ad, d in server.audit() if a == "retrieve" and "ended" in (d or "")]
    assert ended == [
        "ended: completed 4, failed 0, warning 0",
        "ended: completed 4, failed 0, warning 0",
    ]
