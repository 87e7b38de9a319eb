"""Patient identity: a patient is PatientID + IssuerOfPatientID, and a study keeps its own.

Studies without a PatientID must never share a patient (issue 7, item 3: they were
merged, so a study-level C-FIND answered with another person's name). Answers and
matching below the patient level use the patient attributes sent with that study;
the patient level answers from the patient row (the first study's attributes).
Objects go through DCMTK storescu to a real server and come back through findscu.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from conftest import CLIENT_AET, SERVER_AET, Server, cli, dcmtk
from pacsvault.dicom.attributes import BY_KEYWORD, Level, index_values
from pacsvault.dicom.matching import parse_condition
from pacsvault.dicom.synthetic import image
from pacsvault.storage.index import Index, InstanceRecord

ABSENT = object()  # PatientID not in the dataset at all
_counter = itertools.count()


@dataclass
class Study:
    """One study of two series of one instance each, as sent."""

    uid: str
    name: str
    birth_date: str
    datasets: list[Dataset]


def make_study(
    name: str,
    patient_id: object = ABSENT,
    *,
    issuer: str | None = None,
    birth_date: str = "19700101",
) -> Study:
    """A study whose patient is *name* / *patient_id* (ABSENT: no PatientID element)."""
    n = next(_counter)
    uid = generate_uid()
    datasets = []
    for se, modality in enumerate(("CT", "MR")):
        ds = image(
            patient_id="placeholder",
            patient_name=name,
            birth_date=birth_date,
            sex="O",
            study_uid=uid,
            study_date="20240101",
            study_time="120000",
            accession=f"ACC{n:05d}",
            study_description=f"identity study {n}",
            series_uid=generate_uid(),
            series_number=se + 1,
            modality=modality,
            instance_number=1,
            rows=8,
            columns=8,
        )
        if patient_id is ABSENT:
            del ds.PatientID
        else:
            ds.PatientID = patient_id
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
        datasets.append(ds)
    return Study(uid, name, birth_date, datasets)


def store(server: Server, tmp: Path, *studies: Study) -> None:
    """Send every instance of *studies* with storescu, in order, one association each."""
    for study in studies:
        paths = []
        for ds in study.datasets:
            path = tmp / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(str(path))
        proc = dcmtk(
            "storescu",
            "-aet",
            CLIENT_AET,
            "-aec",
            SERVER_AET,
            "127.0.0.1",
            str(server.port),
            *paths,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def find(server: Server, out: Path, model: str, *keys: str) -> list[Dataset]:
    """Run findscu (-P Patient Root, -S Study Root) and return the response identifiers."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["-aet", CLIENT_AET, "-aec", SERVER_AET, model, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    proc = dcmtk("findscu", *args, "127.0.0.1", str(server.port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def study_names(server: Server, out: Path, model: str, *keys: str) -> dict[str, tuple[str, str]]:
    """StudyInstanceUID -> (PatientName, PatientBirthDate) of a STUDY-level query."""
    rsp = find(
        server,
        out,
        model,
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "PatientBirthDate",
        "PatientID",
        *keys,
    )
    answers = {str(r.StudyInstanceUID): (str(r.PatientName), str(r.PatientBirthDate)) for r in rsp}
    assert len(answers) == len(rsp)
    return answers


def expected(*studies: Study) -> dict[str, tuple[str, str]]:
    return {s.uid: (s.name, s.birth_date) for s in studies}


def patients(server: Server, out: Path, *keys: str) -> list[Dataset]:
    """A Patient Root PATIENT-level query returning names, IDs, issuers and counts."""
    return find(
        server,
        out,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        *keys,
    )


def test_studies_without_patient_id_are_never_merged(server: Server, tmp_path: Path) -> None:
    a = make_study("ABSENT^ALMA", birth_date="19500101")
    b = make_study("ABSENT^BERTA", birth_date="19600202")
    c = make_study("EMPTY^CORA", "", birth_date="19700303")  # PatientID present, empty
    store(server, tmp_path, a, b, c)

    assert study_names(server, tmp_path / "s", "-S") == expected(a, b, c)
    assert study_names(server, tmp_path / "p", "-P") == expected(a, b, c)
    rsp = patients(server, tmp_path / "pat")
    assert sorted(str(r.PatientName) for r in rsp) == ["ABSENT^ALMA", "ABSENT^BERTA", "EMPTY^CORA"]
    assert all(int(r.NumberOfPatientRelatedStudies) == 1 for r in rsp)
    assert all(int(r.NumberOfPatientRelatedInstances) == 2 for r in rsp)

    # Matching on a patient attribute below the patient level finds the study by its own.
    assert study_names(server, tmp_path / "m", "-S", "PatientName=absent^berta") == expected(b)
    assert study_names(server, tmp_path / "m2", "-P", "PatientBirthDate=19700303") == expected(c)
    for level in ("SERIES", "IMAGE"):
        rsp = find(
            server,
            tmp_path / level,
            "-S",
            f"QueryRetrieveLevel={level}",
            f"StudyInstanceUID={b.uid}",
            "SeriesInstanceUID",
            "PatientName",
        )
        assert len(rsp) == 2 and {str(r.PatientName) for r in rsp} == {"ABSENT^BERTA"}

    out = cli(server.data, "status").stdout
    assert "patients: 3" in out and "studies: 3" in out
    assert "patient identity conflicts: 0" in out


def test_same_patient_id_with_other_issuer_is_another_patient(
    server: Server, tmp_path: Path
) -> None:
    first = make_study("ISSUER^ANNA", "SAME-ID", issuer="HOSP-A")
    other = make_study("ISSUER^BELLA", "SAME-ID", issuer="HOSP-B")
    again = make_study("ISSUER^ANNA", "SAME-ID", issuer="HOSP-A")
    unknown = make_study("ISSUER^CLARA", "SAME-ID")  # no issuer: not known to be either
    store(server, tmp_path, first, other, again, unknown)

    rsp = patients(server, tmp_path / "pat", "PatientID=SAME-ID")
    by_issuer = {str(r.get("IssuerOfPatientID", "")): r for r in rsp}
    assert len(rsp) == 3 and set(by_issuer) == {"HOSP-A", "HOSP-B", ""}
    assert int(by_issuer["HOSP-A"].NumberOfPatientRelatedStudies) == 2
    assert int(by_issuer["HOSP-B"].NumberOfPatientRelatedStudies) == 1
    assert str(by_issuer["HOSP-B"].PatientName) == "ISSUER^BELLA"
    assert str(by_issuer[""].PatientName) == "ISSUER^CLARA"
    assert study_names(server, tmp_path / "s", "-S", "IssuerOfPatientID=HOSP-B") == expected(other)
    assert "patient identity conflicts: 0" in cli(server.data, "status").stdout


def test_a_later_study_with_another_name_keeps_it(server: Server, tmp_path: Path) -> None:
    first = make_study("QUINCE^ALMA", "CONFLICT-1", birth_date="19710101")
    later = make_study("QUINCE^BERTA", "CONFLICT-1", birth_date="19820202")
    store(server, tmp_path, first, later)

    # One patient, answered from its row: the first study's attributes, both studies counted.
    (pat,) = patients(server, tmp_path / "pat")
    assert str(pat.PatientName) == "QUINCE^ALMA" and str(pat.PatientID) == "CONFLICT-1"
    assert int(pat.NumberOfPatientRelatedStudies) == 2
    assert int(pat.NumberOfPatientRelatedInstances) == 4

    # Each study answers with, and is found by, the name and birth date it was sent with.
    for model in ("-S", "-P"):
        assert study_names(server, tmp_path / f"s{model}", model) == expected(first, later)
        found = study_names(server, tmp_path / f"n{model}", model, "PatientName=QUINCE^BERTA")
        assert found == expected(later)
        found = study_names(server, tmp_path / f"d{model}", model, "PatientBirthDate=19710101")
        assert found == expected(first)
    rsp = find(
        server,
        tmp_path / "series",
        "-P",
        "QueryRetrieveLevel=SERIES",
        "PatientID=CONFLICT-1",
        f"StudyInstanceUID={later.uid}",
        "SeriesInstanceUID",
        "PatientName",
    )
    assert len(rsp) == 2 and {str(r.PatientName) for r in rsp} == {"QUINCE^BERTA"}

    proc = cli(server.data, "status")
    assert "patient identity conflicts: 1" in proc.stdout
    for secret in ("QUINCE", "ALMA", "BERTA", "19710101", "19820202", "CONFLICT-1"):
        assert secret not in proc.stdout + proc.stderr


def record(ds: Dataset, n: int) -> InstanceRecord:
    """What the archive indexes for *ds* (without storing any bytes)."""
    rec = InstanceRecord(
        patient=index_values(ds, Level.PATIENT),
        study=index_values(ds, Level.STUDY),
        series=index_values(ds, Level.SERIES),
        instance=index_values(ds, Level.IMAGE),
        charset=None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"k{n}",
        size=1,
        sha256="0" * 64,
        stored_at=time.time(),
    )
    rec.instance["sop_class_uid"] = str(ds.SOPClassUID)
    return rec


def test_index_retrieve_and_counts_use_the_study_copy(index_url: str) -> None:
    """Through the Index API: retrieve selection, every level's answers, derived counts."""
    index = Index(index_url)
    index.create()
    first = make_study("DOE^ALMA", "P-1", birth_date="19710101")
    later = make_study("DOE^BERTA", "P-1", birth_date="19820202")
    lone = make_study("NOBODY^KNOWN")
    other_lone = make_study("NOBODY^ELSE")
    with index.engine.begin() as conn:
        for n, ds in enumerate(ds for s in (first, later, lone, other_lone) for ds in s.datasets):
            index.record_instance(conn, record(ds, n))

    def cond(keyword: str, value: str):
        return [(BY_KEYWORD[keyword], parse_condition(BY_KEYWORD[keyword], value))]

    picked = index.instances_for(Level.STUDY, cond("PatientName", "doe^berta"))
    assert {i.study_instance_uid for i in picked} == {later.uid} and len(picked) == 2
    for level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        rows = list(index.query(level, cond("PatientName", "NOBODY*")))
        names = {r["study_instance_uid"]: r["patient_name"] for r in rows}
        assert names == {lone.uid: "NOBODY^KNOWN", other_lone.uid: "NOBODY^ELSE"}
    rows = list(index.query(Level.PATIENT, []))
    assert sorted(r["patient_name"] for r in rows) == ["DOE^ALMA", "NOBODY^ELSE", "NOBODY^KNOWN"]
    assert {r["patient_name"]: r["number_of_patient_related_series"] for r in rows} == {
        "DOE^ALMA": 4,
        "NOBODY^KNOWN": 2,
        "NOBODY^ELSE": 2,
    }
    assert not list(index.query(Level.PATIENT, cond("PatientName", "DOE^BERTA")))
    assert index.statistics()["patients"] == 3
    assert index.identity_conflicts() == 1
    index.close()
