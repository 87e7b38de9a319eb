"""Per-study visibility on the wire: a referrer sees exactly its studies, and nothing else.

A workstation requires a DICOM user identity; who logs in through it decides what is
seen. rita (referrer) is linked to Dr Smith: C-FIND shows Smith's studies only, a
study shared with her appears and disappears with the share's expiry, and a C-GET
of another study's UID (guessed) answers like a study that does not exist. alice
(radiologist) sees everything; an uploader through the same workstation may not
query at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from conftest import (
    DATABASES,
    SERVER_AET,
    IndexDB,
    Server,
    cli,
    dcmtk,
    free_port,
    index_args,
    write_data_set,
)
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec

EXPLICIT_LE = "1.2.840.10008.1.2.1"
PHYSICIANS = ["Smith^John", "SMITH^JOHN^^", "Doe^Jane", ""]  # one per study


@pytest.fixture(scope="module", params=DATABASES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict, list[str]]]:
    """Once with each index database: the scope is SQL in the index."""
    tmp = tmp_path_factory.mktemp("scope")
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET, *index_args(request, request.param))
    path = data / "pacsvault.toml"
    path.write_text(path.read_text().replace(
        "allow_passcode_without_tls = false", "allow_passcode_without_tls = true"))  # fmt: skip
    cli(data, "peer", "add", "modality", "--aet", "MODALITY", "--host", "127.0.0.1",
        "--allow", "store")  # fmt: skip
    cli(data, "peer", "add", "ws", "--aet", "WS", "--host", "127.0.0.1",
        "--allow", "echo,find,get", "--user-identity", "required")  # fmt: skip
    passwords = {}
    for name, role in (("rita", "referrer"), ("alice", "radiologist"), ("ulla", "uploader")):
        out = cli(data, "user", "add", name, "--role", role).stdout
        passwords[name] = out.split("(shown once): ")[1].strip()
    assert "linked rita" in cli(data, "user", "link", "rita", "--physician", "smith^john").stdout
    files = write_data_set(tmp / "f", Spec(patients=4, studies_per_patient=1, seed=3))
    studies: list[str] = []
    for path_, ds in files:
        if ds.StudyInstanceUID not in studies:
            studies.append(ds.StudyInstanceUID)
        ds.ReferringPhysicianName = PHYSICIANS[studies.index(ds.StudyInstanceUID)]
        ds.save_as(path_, enforce_file_format=True)
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    proc = dcmtk("storescu", "-aet", "MODALITY", "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), *[str(p) for p, _ in files])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield server, passwords, studies
    server.stop()


def _associate(server: Server, user: str, password: str, received: list | None = None):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="WS")
    for cx in (StudyRootQueryRetrieveInformationModelFind,
               PatientRootQueryRetrieveInformationModelFind,
               StudyRootQueryRetrieveInformationModelGet, *SOP_CLASS_FOR.values()):  # fmt: skip
        ae.add_requested_context(cx, EXPLICIT_LE)
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = user.encode()
    item.secondary_field = password.encode()
    handlers = []
    if received is not None:

        def on_store(event) -> int:  # type: ignore[no-untyped-def]
            received.append(str(event.request.AffectedSOPInstanceUID))
            return 0

        handlers = [(evt.EVT_C_STORE, on_store)]
    roles = [build_role(u, scp_role=True) for u in SOP_CLASS_FOR.values()]
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET,
                         ext_neg=[item, *roles], evt_handlers=handlers)  # fmt: skip
    assert assoc.is_established
    return assoc


def visible_studies(server: Server, user: str, password: str) -> tuple[list[int], set[str]]:
    assoc = _associate(server, user, password)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    statuses, uids = [], set()
    for status, ds in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
        statuses.append(int(status.Status))
        if ds is not None and int(status.Status) in (0xFF00, 0xFF01):
            uids.add(str(ds.StudyInstanceUID))
    assoc.release()
    return statuses, uids


def test_a_referrer_sees_its_linked_studies(site) -> None:
    server, pw, studies = site
    _statuses, seen = visible_studies(server, "rita", pw["rita"])
    # Both spellings of Dr Smith (case, trailing empty components) match the link.
    assert seen == {studies[0], studies[1]}


def test_a_radiologist_sees_everything(site) -> None:
    server, pw, studies = site
    assert visible_studies(server, "alice", pw["alice"])[1] == set(studies)


def test_an_uploader_may_not_query(site) -> None:
    server, pw, _studies = site
    statuses, seen = visible_studies(server, "ulla", pw["ulla"])
    assert statuses == [0x0124] and not seen


def test_patient_level_shows_only_patients_with_a_visible_study(site) -> None:
    server, pw, _studies = site
    assoc = _associate(server, "rita", pw["rita"])
    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientID = ""
    model = PatientRootQueryRetrieveInformationModelFind
    found = [ds.PatientID for st, ds in assoc.send_c_find(q, model)
             if ds is not None and int(st.Status) == 0xFF00]  # fmt: skip
    assoc.release()
    assert len(found) == 2


def test_a_guessed_study_uid_answers_like_a_missing_one(site) -> None:
    server, pw, studies = site
    received: list[str] = []
    assoc = _associate(server, "rita", pw["rita"], received)
    results = {}
    for uid in (studies[2], "1.2.3.4.5.6.7.8.9"):  # Doe's study, and one that does not exist
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = uid
        results[uid] = [
            (int(st.Status), st.get("NumberOfCompletedSuboperations"))
            for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)
        ]
    assoc.release()
    assert results[studies[2]] == results["1.2.3.4.5.6.7.8.9"]
    assert received == []


def test_a_share_opens_one_study_until_it_expires(site) -> None:
    server, pw, studies = site
    started = time.monotonic()
    # Long enough for the checks below on a busy machine (two databases' runs at once).
    out = cli(server.data, "share", studies[3], "--user", "rita", "--expires", "20s").stdout
    assert "shared with rita" in out
    assert "rita" in cli(server.data, "share", "--list").stdout
    received: list[str] = []
    assoc = _associate(server, "rita", pw["rita"], received)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = studies[3]
    statuses = [int(st.Status) for st, _ in
                assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)]  # fmt: skip
    assoc.release()
    assert statuses[-1] == 0x0000 and received
    assert visible_studies(server, "rita", pw["rita"])[1] == {studies[0], studies[1], studies[3]}
    with server.index() as conn:
        (expires_at,) = conn.execute("SELECT max(expires_at) FROM shares").fetchone()
    assert 19 < expires_at - time.time() + (time.monotonic() - started) < 40
    # Its end comes: moved to a second ago in the index rather than waited for (~20 s).
    with IndexDB(server.data) as db:
        db.execute("UPDATE shares SET expires_at = ? WHERE expires_at = ?",
                   (time.time() - 1, expires_at))  # fmt: skip
    assert visible_studies(server, "rita", pw["rita"])[1] == {studies[0], studies[1]}
    changes = [d for a, _o, _c, _ad, d in server.audit() if a == "user-change"]
    assert any(d.startswith("share a study with rita") for d in changes)
    assert any(d == "link rita to a physician" for d in changes)


def test_share_revoke(site, tmp_path: Path) -> None:
    server, _pw, studies = site
    out = cli(server.data, "share", studies[2], "--user", "rita").stdout
    share_id = out.split()[1].rstrip(":")
    assert f"share {share_id} revoked" in cli(server.data, "share", "--revoke", share_id).stdout
    assert cli(server.data, "share", "--revoke", share_id, check=False).returncode == 1
