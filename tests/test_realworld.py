"""What real modalities and workstations send (issue 7, items 1, 2 and 4).

- A workstation granted ``find,get`` (the README's WS2) retrieves with getscu, and
  still cannot C-STORE to us.
- UIDs with leading zeros (``999.999.01.23.45.6789``) are stored and retrieved, while
  unsafe ones (letters, a trailing newline, empty components) are refused.
- When a Part-10 file's meta names another SOP Instance UID than its dataset, the
  dataset rules.
- File meta (group 0002) elements sent inside a dataset are dropped, so the stored
  object reads back with its own transfer syntax and keeps its patient name.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from conftest import CLIENT_AET, SERVER_AET, Server, cli, dataset_bytes, dcmtk, write_data_set
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec
from pacsvault.dicom.uids import is_safe_uid, is_valid_uid

CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


@pytest.mark.parametrize(
    "uid", ["999.999.01.23.45.6789", "1.2.840.10008.1.2", "0", "1.02.3", "00.1", "9" * 64]
)
def test_safe_uids(uid: str) -> None:
    assert is_safe_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1..2", ".1", "1.", "1.2.a", "1/2", "../etc", "1.2 ", "1.2.3\n", "9" * 65, None]
)
def test_unsafe_uids(uid: str | None) -> None:
    assert not is_safe_uid(uid)
    assert not is_valid_uid(uid)


def test_leading_zeros_are_safe_but_not_conformant() -> None:
    assert is_safe_uid("999.999.01.23") and not is_valid_uid("999.999.01.23")


def _cr(sop_instance: str, name: str = "LEADING^ZEROS") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = "999.999.01.23.45"
    ds.SeriesInstanceUID = "999.999.01.23.45.1"
    ds.PatientName = name
    ds.PatientID = "PVCR01"
    ds.Modality = "CR"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(128)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_cr_with_leading_zero_uids_is_stored_and_retrieved(
    server: Server, tmp_path: Path
) -> None:
    sent = _save(_cr("999.999.01.23.45.6789"), tmp_path / "cr.dcm")
    proc = dcmtk("storescu", "-aet", CLIENT_AET, "-aec", SERVER_AET,
                 "127.0.0.1", str(server.port), str(sent))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Status: Success" in proc.stderr or "0x0000" in proc.stderr or proc.stderr == ""
    out = tmp_path / "got"
    out.mkdir()
    proc = dcmtk("getscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=IMAGE", "-k", "StudyInstanceUID=999.999.01.23.45",
                 "-k", "SeriesInstanceUID=999.999.01.23.45.1",
                 "-k", "SOPInstanceUID=999.999.01.23.45.6789",
                 "-od", str(out), "127.0.0.1", str(server.port))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = list(out.iterdir())
    assert len(got) == 1 and dataset_bytes(got[0]) == dataset_bytes(sent)
    assert "accepted a non-conformant SOP Instance UID" in server.log_text()
    assert "999.999.01" not in server.log_text()


@pytest.fixture
def store_raw(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """C-STORE dataset bytes exactly as given (what pydicom would never write).

    pynetdicom sends a file's bytes after its meta information unchanged; its own
    split of the file is replaced by one that trusts the meta group length, so
    group 0002 elements placed in the dataset are sent as dataset.
    """
    import pynetdicom.association as association
    from pydicom.dataset import FileMetaDataset

    from pacsvault.dicom.part10 import file_header

    def send(port: int, sop_class: str, sop_instance: str, data: bytes) -> int:
        header = file_header(sop_class, sop_instance, ExplicitVRLittleEndian, None)
        path = tmp_path / f"raw-{len(list(tmp_path.iterdir()))}.dcm"
        path.write_bytes(header + data)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_instance
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        monkeypatch.setattr(association, "split_dataset", lambda _p: (meta, len(header)))
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        ae = AE(ae_title=CLIENT_AET)
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AET)
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()

    return send


def _explicit(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def test_file_meta_inside_a_dataset_is_dropped(server: Server, store_raw) -> None:
    uid = generate_uid()
    ds = _cr(uid, name="GROUP^TWO")
    meta = Dataset()
    meta.add_new(0x00020003, "UI", uid)
    meta.add_new(0x00020010, "UI", "1.2.840.10008.1.2.2")  # says Big Endian: a lie
    raw = _explicit(meta) + _explicit(ds)
    assert store_raw(server.port, CR, uid, raw) == 0x0000
    blob = next((server.data / "blobs" / "objects").rglob(f"{uid}.dcm"))
    stored = pydicom.dcmread(blob)
    assert str(stored.PatientName) == "GROUP^TWO"
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "0002" not in {f"{int(e.tag) >> 16:04X}" for e in stored}
    assert "dropped" in server.log_text() and "file meta elements" in server.log_text()


@pytest.mark.parametrize("bad", ["1.2.3\n", "1.2.abc", "1..2", "1.2 3"])
def test_unsafe_uids_are_refused(server: Server, store_raw, bad: str) -> None:
    # pydicom would clean the value up: put the bad bytes in place of a stand-in.
    stand_in = "9" * len(bad)
    raw = _explicit(_cr(stand_in)).replace(stand_in.encode(), bad.encode())
    assert bad.encode() in raw
    # The request names a safe UID; the dataset's own is what counts and is refused.
    assert store_raw(server.port, CR, "1.2.3", raw) == 0xC000
    assert "instances: 0" in cli(server.data, "status").stdout


def test_import_the_dataset_uid_rules_over_the_file_meta(data_dir: Path, tmp_path: Path) -> None:
    ds = _cr("999.999.01.23.45.77")
    path = _save(ds, tmp_path / "mismatch.dcm")
    raw = pydicom.dcmread(path)
    raw.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"  # not the dataset's
    raw.save_as(path, enforce_file_format=True)
    out = cli(data_dir, "import", str(path)).stdout
    assert "stored: 1" in out
    stored = next((data_dir / "blobs" / "objects").rglob("*.dcm"))
    assert stored.name == "999.999.01.23.45.77.dcm"
    meta = pydicom.dcmread(stored).file_meta
    assert meta.MediaStorageSOPInstanceUID == "999.999.01.23.45.77"


# -- C-GET for a peer granted find,get (the README's WS2) -------------------------------


@pytest.fixture
def ws2(data_dir: Path, make_server, tmp_path: Path) -> tuple[Server, list]:
    cli(data_dir, "peer", "add", "modality", "--aet", "MODALITY", "--host", "127.0.0.1",
        "--allow", "store")  # fmt: skip
    cli(data_dir, "peer", "add", "WS2", "--aet", "WS2", "--host", "127.0.0.1",
        "--allow", "find,get")  # fmt: skip
    server = make_server(data_dir)
    files = write_data_set(tmp_path / "f", Spec(patients=1, studies_per_patient=1))
    proc = dcmtk("storescu", "-aet", "MODALITY", "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), *[str(p) for p, _ in files])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return server, files


def test_a_find_get_peer_retrieves_with_getscu(ws2, tmp_path: Path) -> None:
    server, files = ws2
    out = tmp_path / "got"
    out.mkdir()
    proc = dcmtk("getscu", "-aet", "WS2", "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={files[0][1].PatientID}",
                 "-od", str(out), "127.0.0.1", str(server.port))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "OutOfResources" not in proc.stderr
    got = {p.name: dataset_bytes(p) for p in out.iterdir()}
    assert len(got) == len(files)
    assert sorted(got.values()) == sorted(dataset_bytes(p) for p, _ in files)


def test_a_find_get_peer_cannot_store(ws2, tmp_path: Path) -> None:
    server, files = ws2
    proc = dcmtk("storescu", "-aet", "WS2", "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), str(files[0][0]))  # fmt: skip
    assert proc.returncode != 0
    # With role selection asking for both roles, it gets the SCP role only: it may
    # receive C-GET sub-operations on the context, never send us a C-STORE on it.
    ae = AE(ae_title="WS2")
    from pynetdicom import build_role

    uid = SOP_CLASS_FOR["CT"]
    ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET,
                         ext_neg=[build_role(uid, scu_role=True, scp_role=True)])  # fmt: skip
    try:
        assert assoc.is_established
        (cx,) = assoc.accepted_contexts
        assert cx.as_scp and not cx.as_scu
        with pytest.raises(ValueError, match="SCU role"):
            assoc.send_c_store(files[0][1])
    finally:
        assoc.release()
    assert f"instances: {len(files)}" in cli(server.data, "status").stdout


@pytest.mark.parametrize("group_length", [True, False])
def test_a_file_meta_cut_anywhere_is_never_read_as_complete(group_length: bool) -> None:
    """A stream's reader (STOW-RS) parses the file meta as bytes arrive: every cut
    point must say "wait", never give a shortened transfer syntax or offset. Some
    writers leave out the group length; those files are read to the first dataset tag."""
    from pydicom.data import get_testdata_file

    from pacsvault.dicom.part10 import CutOff, read_file_meta

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    if not group_length:
        data = data[:132] + data[144:]
    full = read_file_meta(data)
    assert full[0] == "1.2.840.10008.1.2.1" and full[3] < len(data)
    assert full[3] == (336 if group_length else 324)
    for cut in range(132, full[3] + 1):
        with pytest.raises(CutOff):
            read_file_meta(data[:cut])
    assert read_file_meta(data[: full[3] + 8]) == full
