"""Interoperability with DCMTK (Debian's dcmtk): echo, store, find at every level, move, get.

The data set is generated; expected C-FIND matches are computed independently here
from the generated datasets (fnmatch for wildcards, string comparison for ranges),
so the server's SQL matching is checked against a second implementation.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from conftest import (
    CLIENT_AET,
    DATABASES,
    SERVER_AET,
    Server,
    cli,
    dataset_bytes,
    dcmtk,
    free_port,
    index_args,
)
from pacsvault.dicom.synthetic import Spec

SPEC = Spec(patients=5, studies_per_patient=2, series_per_study=2, instances_per_series=2, seed=7)


@pytest.fixture(scope="module", params=DATABASES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A server holding the SPEC data set, sent with storescu; shared by this module.
    Once with each index database: every test here runs on SQLite and on PostgreSQL."""
    from conftest import write_data_set

    tmp = tmp_path_factory.mktemp("dcmtk")
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET, *index_args(request, request.param))
    dest_port = free_port()
    cli(
        data,
        "peer",
        "add",
        "test",
        "--aet",
        CLIENT_AET,
        "--host",
        "127.0.0.1",
        "--port",
        str(dest_port),
        "--allow",
        "echo,store,find,move,get",
    )
    files = write_data_set(tmp / "files", SPEC)
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    proc = dcmtk(
        "storescu",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.port),
        *[str(p) for p, _ in files],
    )
    assert proc.returncode == 0, proc.stderr
    yield server, files, dest_port, tmp
    server.stop()


def find(server: Server, out: Path, model: str, *keys: str) -> list[Dataset]:
    """Run findscu and return the response identifiers it extracted."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["-aet", CLIENT_AET, "-aec", SERVER_AET, model, "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = dcmtk("findscu", *args, "127.0.0.1", str(server.port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def distinct(files, key: Callable[[Dataset], str], where: Callable[[Dataset], bool]) -> set[str]:
    return {key(ds) for _, ds in files if where(ds)}


def test_echo(loaded) -> None:
    server, *_ = loaded
    proc = dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(server.port))
    assert proc.returncode == 0, proc.stderr


def test_store_indexed_everything(loaded) -> None:
    server, files, *_ = loaded
    out = cli(server.data, "status").stdout
    assert f"instances: {len(files)}" in out
    assert f"patients: {SPEC.patients}" in out
    assert f"studies: {SPEC.patients * SPEC.studies_per_patient}" in out


def test_patient_level_wildcard(loaded) -> None:
    server, files, _, tmp = loaded
    rsp = find(
        server,
        tmp / "q1",
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=?OE*",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
    )
    expected = distinct(
        files, lambda d: d.PatientID, lambda d: fnmatch.fnmatchcase(str(d.PatientName), "?OE*")
    )
    assert {str(r.PatientID) for r in rsp} == expected and len(rsp) == len(expected)
    for r in rsp:
        per_patient = [d for _, d in files if d.PatientID == r.PatientID]
        assert int(r.NumberOfPatientRelatedInstances) == len(per_patient)
        assert int(r.NumberOfPatientRelatedStudies) == SPEC.studies_per_patient
        assert r.RetrieveAETitle == SERVER_AET


def test_patient_name_wildcard_is_case_insensitive(loaded) -> None:
    server, files, _, tmp = loaded
    rsp = find(
        server, tmp / "q1b", "-P", "QueryRetrieveLevel=PATIENT", "PatientName=doe*", "PatientID"
    )
    expected = distinct(
        files, lambda d: d.PatientID, lambda d: str(d.PatientName).startswith("DOE")
    )
    assert expected and {str(r.PatientID) for r in rsp} == expected


@pytest.mark.parametrize(
    "date_range",
    ["20170101-20201231", "-20180601", "20210101-", "20190305"],
)
def test_study_level_date_ranges(loaded, date_range: str) -> None:
    server, files, _, tmp = loaded
    rsp = find(
        server,
        tmp / "q2",
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"StudyDate={date_range}",
        "StudyInstanceUID",
    )
    low, sep, high = date_range.partition("-")

    def in_range(ds: Dataset) -> bool:
        d = ds.StudyDate
        if not sep:
            return d == low
        return (not low or d >= low) and (not high or d <= high)

    expected = distinct(files, lambda d: d.StudyInstanceUID, in_range)
    assert sorted(str(r.StudyInstanceUID) for r in rsp) == sorted(expected)
    assert all(in_range(r) for r in rsp)


def test_study_level_uid_list_and_modalities(loaded) -> None:
    server, files, _, tmp = loaded
    studies = sorted({ds.StudyInstanceUID for _, ds in files})
    wanted = studies[:3]
    rsp = find(
        server,
        tmp / "q3",
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID=" + "\\".join(wanted),
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "PatientName",
    )
    assert sorted(str(r.StudyInstanceUID) for r in rsp) == wanted
    for r in rsp:
        members = [d for _, d in files if d.StudyInstanceUID == r.StudyInstanceUID]
        assert sorted(r.ModalitiesInStudy) == sorted({d.Modality for d in members})
        assert int(r.NumberOfStudyRelatedSeries) == SPEC.series_per_study
        assert int(r.NumberOfStudyRelatedInstances) == len(members)
        assert str(r.PatientName) == str(members[0].PatientName)


def test_study_level_modalities_in_study_matching(loaded) -> None:
    server, files, _, tmp = loaded
    rsp = find(
        server,
        tmp / "q4",
        "-S",
        "QueryRetrieveLevel=STUDY",
        "ModalitiesInStudy=CR",
        "StudyInstanceUID",
    )
    expected = {d.StudyInstanceUID for _, d in files if d.Modality == "CR"}
    assert expected and {str(r.StudyInstanceUID) for r in rsp} == expected


def test_series_level(loaded) -> None:
    server, files, _, tmp = loaded
    study = files[0][1].StudyInstanceUID
    rsp = find(
        server,
        tmp / "q5",
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    )
    expected = distinct(files, lambda d: d.SeriesInstanceUID, lambda d: d.StudyInstanceUID == study)
    assert {str(r.SeriesInstanceUID) for r in rsp} == expected
    assert all(int(r.NumberOfSeriesRelatedInstances) == SPEC.instances_per_series for r in rsp)
    mr = find(
        server,
        tmp / "q5b",
        "-P",
        "QueryRetrieveLevel=SERIES",
        f"PatientID={files[0][1].PatientID}",
        f"StudyInstanceUID={study}",
        "Modality=M?",
        "SeriesInstanceUID",
    )
    expected_mr = distinct(
        files,
        lambda d: d.SeriesInstanceUID,
        lambda d: d.StudyInstanceUID == study and d.Modality == "MR",
    )
    assert {str(r.SeriesInstanceUID) for r in mr} == expected_mr


def test_image_level_uid_list_and_unknown_key(loaded) -> None:
    server, files, _, tmp = loaded
    ds0 = files[0][1]
    series_members = [d for _, d in files if d.SeriesInstanceUID == ds0.SeriesInstanceUID]
    wanted = sorted(d.SOPInstanceUID for d in series_members)
    rsp = find(
        server,
        tmp / "q6",
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ds0.StudyInstanceUID}",
        f"SeriesInstanceUID={ds0.SeriesInstanceUID}",
        "SOPInstanceUID=" + "\\".join(wanted),
        "InstanceNumber",
        "SOPClassUID",
        "(0018,0050)",
    )  # SliceThickness: not indexed, comes back empty
    assert sorted(str(r.SOPInstanceUID) for r in rsp) == wanted
    for r in rsp:
        assert r.SOPClassUID == ds0.SOPClassUID
        assert "SliceThickness" in r and r.SliceThickness in (None, "")


def test_universal_matching_returns_everything(loaded) -> None:
    server, files, _, tmp = loaded
    rsp = find(server, tmp / "q7", "-S", "QueryRetrieveLevel=IMAGE", "SOPInstanceUID")
    assert sorted(str(r.SOPInstanceUID) for r in rsp) == sorted(d.SOPInstanceUID for _, d in files)


def test_time_range(loaded) -> None:
    server, files, _, tmp = loaded
    rsp = find(
        server,
        tmp / "q8",
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyTime=0900-1159",
        "StudyInstanceUID",
    )
    expected = distinct(
        files, lambda d: d.StudyInstanceUID, lambda d: "090000" <= d.StudyTime <= "115959"
    )
    assert expected and {str(r.StudyInstanceUID) for r in rsp} == expected


def test_getscu_retrieves_byte_identical(loaded) -> None:
    server, files, _, tmp = loaded
    patient = files[0][1].PatientID
    out = tmp / "get"
    out.mkdir()
    proc = dcmtk(
        "getscu",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "-P",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        f"PatientID={patient}",
        "127.0.0.1",
        str(server.port),
    )
    assert proc.returncode == 0, proc.stderr
    sent = {d.SOPInstanceUID: p for p, d in files if d.PatientID == patient}
    got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert got.keys() == sent.keys()
    for uid, path in sent.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path)


def test_movescu_to_registered_destination_byte_identical(loaded) -> None:
    import subprocess

    from conftest import dcmtk_path, wait_listening

    server, files, dest_port, tmp = loaded
    study = files[-1][1].StudyInstanceUID
    out = tmp / "move"
    out.mkdir()
    receiver = subprocess.Popen(
        [dcmtk_path("storescp"), "-aet", CLIENT_AET, "-od", str(out), "+xe", str(dest_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(dest_port, receiver)  # a busy machine starts storescp slowly
        proc = dcmtk(
            "movescu",
            "-aet",
            CLIENT_AET,
            "-aec",
            SERVER_AET,
            "-aem",
            CLIENT_AET,
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(server.port),
        )
        assert proc.returncode == 0, proc.stderr
    finally:
        receiver.terminate()
        receiver.wait()
    sent = {d.SOPInstanceUID: p for p, d in files if d.StudyInstanceUID == study}
    got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert got.keys() == sent.keys()
    for uid, path in sent.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path)


def test_move_to_unknown_destination_is_refused(loaded) -> None:
    server, files, *_ = loaded
    proc = dcmtk(
        "movescu",
        "-v",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "-aem",
        "STRANGER",
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={files[0][1].StudyInstanceUID}",
        "127.0.0.1",
        str(server.port),
    )
    assert "Refused: MoveDestinationUnknown" in proc.stdout + proc.stderr  # status 0xA801
    assert any(a == "retrieve" and o == "refused" for a, o, *_ in server.audit())
