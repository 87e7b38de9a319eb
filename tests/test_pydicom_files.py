"""The pydicom wheel's own test images, stored over DIMSE and retrieved byte for byte.

Acceptance: every file in pydicom's bundled test data that pydicom reads as a valid
image is stored and retrieved intact (whatever its transfer syntax: JPEG, JPEG-LS,
JPEG 2000, RLE, deflate, big endian...); malformed datasets are refused cleanly with
the documented failure status, nothing of them is stored, and the server keeps serving.

Files are sent with pynetdicom's chunked path, so the bytes after the file meta go on
the wire untouched, and compared with what a C-GET brings back.
"""

from __future__ import annotations

import struct
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels.utils import get_expected_length
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from conftest import CLIENT_AET, SERVER_AET, Server, dataset_bytes, start_server
from pacsvault.dicom.uids import is_valid_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

#: Transfer syntaxes the bundled images must cover for the test to mean anything.
MUST_COVER = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.70": "JPEG lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE lossless",
    "1.2.840.10008.1.2.1.99": "deflated explicit LE",
    "1.2.840.10008.1.2.2": "explicit big endian",
    IMPLICIT_LE: "implicit LE",
    EXPLICIT_LE: "explicit LE",
}


# -- the bundled images -----------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    path: Path
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    study: str
    series: str
    body: bytes  # the dataset bytes after the file meta


def _read(path: Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path)
        except Exception:
            return None


def _truncated(ds: Dataset) -> bool:
    """True when uncompressed Pixel Data is shorter than its rows, columns and bits need."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return False
    try:
        return len(ds.PixelData) < get_expected_length(ds)
    except Exception:
        return False


def valid_images() -> list[Image]:
    """Bundled files pydicom reads as valid images, in a stable order.

    Valid: dcmread works without force, file meta with a transfer syntax, Pixel Data,
    valid SOP class/instance/study/series UIDs, and file meta SOP class and instance
    equal to the dataset's (they become the C-STORE request's affected UIDs).
    """
    out = []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        ds = _read(path)
        if ds is None:
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta or "PixelData" not in ds:
            continue
        uids = [
            str(ds.get(k, "") or "")
            for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        ]
        if not all(is_valid_uid(u) for u in uids):
            continue
        if meta.get("MediaStorageSOPInstanceUID") != uids[1]:
            continue
        if meta.get("MediaStorageSOPClassUID") != uids[0]:
            continue
        if _truncated(ds):
            continue  # e.g. MR_truncated.dcm: see test_truncated_bundled_file_is_refused
        out.append(Image(path, str(meta.TransferSyntaxUID), *uids, dataset_bytes(path)))
    return out


# -- pynetdicom client helpers ---------------------------------------------------------


@pytest.fixture
def raw_send() -> Iterator[None]:
    """Send files given by path as their raw bytes (no decoding, no re-encoding)."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def associate(
    server: Server,
    contexts: list[tuple[str, str]],
    *,
    roles: tuple[str, ...] | list[str] = (),
    handlers: list | None = None,
) -> Association:
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title=SERVER_AET,
        ext_neg=[build_role(uid, scp_role=True) for uid in roles] or None,
        evt_handlers=handlers or None,
    )
    assert assoc.is_established, server.log_text()[-3000:]
    return assoc


def echo_works(server: Server) -> bool:
    assoc = associate(server, [(Verification, EXPLICIT_LE)])
    try:
        status = assoc.send_c_echo()
        return status.get("Status") == 0x0000
    finally:
        assoc.release()


def store_files(server: Server, paths: list[Path], pairs: set[tuple[str, str]]) -> list[Dataset]:
    """C-STORE each file (raw bytes, chunked path) over one association; their statuses."""
    assert len(pairs) <= 127
    assoc = associate(server, sorted(pairs))
    try:
        return [assoc.send_c_store(p, msg_id=n + 1) for n, p in enumerate(paths)]
    finally:
        assoc.release()


def instance_count(server: Server) -> int:
    with server.index() as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def blob_files(server: Server) -> int:
    return sum(1 for p in server.data.rglob("*.dcm") if p.is_file())


# -- the stored set --------------------------------------------------------------------


@dataclass
class Loaded:
    server: Server
    images: list[Image]
    statuses: list[Dataset]
    tmp: Path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("pydicom_files")
    server = start_server(tmp)
    images = valid_images()
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        statuses = store_files(
            server,
            [i.path for i in images],
            {(i.sop_class, i.transfer_syntax) for i in images},
        )
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    yield Loaded(server, images, statuses, tmp)
    server.stop()


def firsts(images: list[Image]) -> dict[str, Image]:
    """The first image of each SOP Instance UID: the copy the archive must keep."""
    out: dict[str, Image] = {}
    for img in images:
        out.setdefault(img.sop_instance, img)
    return out


def test_bundled_images_are_many_and_varied(loaded: Loaded) -> None:
    images = loaded.images
    unique = firsts(images)
    syntaxes = Counter(i.transfer_syntax for i in images)
    print(f"\n{len(images)} valid pydicom images, {len(unique)} unique SOP instances")
    print("transfer syntaxes:", dict(syntaxes))
    assert len(images) >= 50
    assert len(unique) >= 40
    missing = {uid: name for uid, name in MUST_COVER.items() if uid not in syntaxes}
    assert not missing, f"no bundled image in {missing}"


def test_every_image_stored_and_duplicates_warned(loaded: Loaded) -> None:
    first: dict[str, Image] = {}
    wrong = []
    warned = 0
    for img, status in zip(loaded.images, loaded.statuses, strict=True):
        kept = first.setdefault(img.sop_instance, img)
        if kept is img or kept.body == img.body:
            expected = 0x0000  # new, or an identical re-send
        else:
            expected = 0xB006  # same SOP Instance UID, different content: first kept
            warned += 1
        got = status.get("Status")
        if got != expected:
            comment = status.get("ErrorComment")
            wrong.append((img.path.name, f"{got!r}", f"{expected:#06x}", comment))
    print(f"\n{len(loaded.images)} sent, {len(first)} stored, {warned} duplicates warned")
    assert not wrong, f"unexpected C-STORE statuses:\n{wrong}\n{loaded.server.log_text()[-3000:]}"
    assert warned > 0  # pydicom's bundled data does reuse UIDs with different content


def test_index_holds_the_first_copy_of_each_instance(loaded: Loaded) -> None:
    import hashlib

    unique = firsts(loaded.images)
    with loaded.server.index() as conn:
        rows = {
            r[0]: (r[1], r[2], r[3])
            for r in conn.execute(
                "SELECT sop_instance_uid, sop_class_uid, transfer_syntax_uid, sha256 FROM instances"
            )
        }
    expected = {
        uid: (img.sop_class, img.transfer_syntax, hashlib.sha256(img.body).hexdigest())
        for uid, img in unique.items()
    }
    assert rows == expected


@pytest.mark.parametrize(
    "model",
    [StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet],
    ids=["study-root", "patient-root"],
)
def test_get_returns_every_instance_byte_for_byte(loaded: Loaded, model: str) -> None:
    unique = firsts(loaded.images)
    # Patient Root: half of them is enough to show the model works, all of them for Study Root.
    chosen = list(unique.values())
    if model == PatientRootQueryRetrieveInformationModelGet:
        chosen = chosen[::2]
    pairs = sorted({(i.sop_class, i.transfer_syntax) for i in chosen})
    received: dict[str, list[tuple[str, bytes]]] = {}

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        ts = str(event.context.transfer_syntax)  # a (id, abstract, transfer) tuple
        received.setdefault(uid, []).append((ts, event.request.DataSet.getvalue()))
        return 0x0000

    assoc = associate(
        loaded.server,
        [(model, EXPLICIT_LE), *pairs],
        roles=sorted({c for c, _ in pairs}),
        handlers=[(evt.EVT_C_STORE, on_store)],
    )
    bad_status = []
    try:
        for img in chosen:
            ident = Dataset()
            ident.QueryRetrieveLevel = "IMAGE"
            if model == PatientRootQueryRetrieveInformationModelGet:
                ident.PatientID = ""
            ident.StudyInstanceUID = img.study
            ident.SeriesInstanceUID = img.series
            ident.SOPInstanceUID = img.sop_instance
            final = None
            for status, _ in assoc.send_c_get(ident, model):
                final = status
            if (
                final is None
                or final.get("Status") != 0x0000
                or final.get("NumberOfCompletedSuboperations") != 1
            ):
                bad_status.append((img.path.name, final))
    finally:
        assoc.release()
    assert not bad_status, bad_status

    wrong = []
    for img in chosen:
        got = received.get(img.sop_instance, [])
        if len(got) != 1:
            wrong.append((img.path.name, f"{len(got)} copies received"))
            continue
        ts, body = got[0]
        if ts != img.transfer_syntax:
            wrong.append((img.path.name, f"sent in {ts}, stored in {img.transfer_syntax}"))
        if body != img.body:
            wrong.append((img.path.name, f"bytes differ ({len(body)} vs {len(img.body)})"))
    print(f"\nretrieved {len(received)} instances intact over {model}")
    assert not wrong, wrong
    assert set(received) == {i.sop_instance for i in chosen}


# -- malformed input -------------------------------------------------------------------


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def part10(sop_class: str, sop_instance: str, ts: str, body: bytes) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + body


def image_dataset(n: int, **overrides: str | None) -> Dataset:
    """A small, valid secondary capture image; overrides set (or with None remove) keys."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.7777.{n}"
    ds.PatientName = "Malformed^Case"
    ds.PatientID = f"MALFORMED{n}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.7777.{n}.1"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.7777.{n}.1.1"
    ds.ImageComments = "a comment long enough to be cut in the middle"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def _cut_in(body: bytes, marker: bytes, keep: int) -> bytes:
    return body[: body.index(marker) + keep]


def malformed_cases() -> list[tuple[str, str, str, str, bytes, int]]:
    """(id, request SOP class, request SOP instance, transfer syntax, dataset bytes, status)."""
    cases = []

    def add(name: str, n: int, body: bytes, status: int, ts: str = EXPLICIT_LE, **req: str):
        ds = image_dataset(n)
        sop_class = req.get("sop_class", SECONDARY_CAPTURE)
        sop_instance = req.get("sop_instance", str(ds.SOPInstanceUID))
        cases.append((name, sop_class, sop_instance, ts, body, status))

    # Truncated in the middle of an element: before the UIDs, after them, in Pixel Data.
    body = encode(image_dataset(1))
    add("truncated-in-patient-name", 1, _cut_in(body, b"Malformed^", 4), 0xC000)
    body = encode(image_dataset(2))
    add("truncated-in-comment", 2, _cut_in(body, b"a comment", 9), 0xC000)
    body = encode(image_dataset(3))
    add("truncated-in-pixel-data", 3, body[: body.index(b"\xe0\x7f\x10\x00") + 12 + 20], 0xC000)
    # A declared length (0xFFFFFFF0) far past the end of the data.
    body = encode(image_dataset(4), implicit=True)
    at = body.index(b"a comment")
    huge = body[: at - 4] + struct.pack("<I", 0xFFFFFFF0) + body[at:]
    add("huge-length-implicit", 4, huge, 0xC000, ts=IMPLICIT_LE)
    body = encode(image_dataset(5, ImageComments=None))
    ob = struct.pack("<HH2sHI", 0x0009, 0x0010, b"OB", 0, 0xFFFFFFF0) + b"\x01\x02\x03\x04"
    cut = body.index(b"\x10\x00\x10\x00PN")  # (0010,0010): a private OB element before it
    add("huge-length-explicit-ob", 5, body[:cut] + ob + body[cut:], 0xC000)
    # Missing or invalid UIDs.
    add("missing-sop-instance", 6, encode(image_dataset(6, SOPInstanceUID=None)), 0xC000)
    add("missing-study-uid", 7, encode(image_dataset(7, StudyInstanceUID=None)), 0xC000)
    # Safe UIDs may have leading zeros, never control characters. pydicom would clean
    # the value up, so the newline replaces a stand-in in the encoded bytes.
    body = encode(image_dataset(8, SOPInstanceUID="1.2.39"))
    add("invalid-uid-newline", 8, body.replace(b"1.2.39", b"1.2.3\n"), 0xC000,
        sop_instance="1.2.39")  # fmt: skip
    bad = "1.2.826.abc.8"
    add(
        "invalid-uid-letters",
        9,
        encode(image_dataset(9, SOPInstanceUID=bad)),
        0xC000,
        sop_instance=bad,
    )
    add(
        "invalid-series-uid",
        10,
        encode(image_dataset(10, SeriesInstanceUID="1.2.3.")),
        0xC000,
    )
    # The dataset's SOP class or instance differs from the request's.
    add("sop-class-mismatch", 11, encode(image_dataset(11)), 0xA900, sop_class=CT_IMAGE)
    add(
        "sop-instance-mismatch",
        12,
        encode(image_dataset(12)),
        0xA900,
        sop_instance="1.2.826.0.1.3680043.8.498.7777.999",
    )
    add("empty-dataset", 13, b"", 0xC000)
    add("garbage-dataset", 14, b"\xff" * 40, 0xC000)
    return cases


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs, on purpose here
    CASES = malformed_cases()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own, so a wrongly stored malformed object spoils no other test."""
    server = start_server(tmp_path_factory.mktemp("malformed"))
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "ts", "body", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_malformed_dataset_refused(
    refusing: Server,
    raw_send: None,
    tmp_path: Path,
    sop_class: str,
    sop_instance: str,
    ts: str,
    body: bytes,
    expected: int,
) -> None:
    server = refusing
    path = tmp_path / "bad.dcm"
    path.write_bytes(part10(sop_class, sop_instance, ts, body))
    before = (instance_count(server), blob_files(server))

    (status,) = store_files(server, [path], {(sop_class, ts)})

    assert status.get("Status") == expected, (status, server.log_text()[-2000:])
    assert status.get("ErrorComment"), "a refusal says why"
    assert (instance_count(server), blob_files(server)) == before
    assert server.proc is not None and server.proc.poll() is None
    assert echo_works(server)


def test_truncated_bundled_file_is_refused(refusing: Server, raw_send: None) -> None:
    """pydicom's own MR_truncated.dcm (pixel data cut short) is refused, not stored."""
    path = TEST_FILES / "MR_truncated.dcm"
    ds = _read(path)
    assert ds is not None and _truncated(ds)
    before = instance_count(refusing)
    (status,) = store_files(
        refusing, [path], {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))}
    )
    assert status.get("Status") == 0xC000
    assert "truncated" in status.get("ErrorComment", "")
    assert instance_count(refusing) == before


def test_valid_control_case_is_stored(refusing: Server, raw_send: None, tmp_path: Path) -> None:
    """The malformed cases are variations of this one, which the server does store."""
    path = tmp_path / "good.dcm"
    ds = image_dataset(100)
    path.write_bytes(part10(SECONDARY_CAPTURE, ds.SOPInstanceUID, EXPLICIT_LE, encode(ds)))
    before = instance_count(refusing)
    (status,) = store_files(refusing, [path], {(SECONDARY_CAPTURE, EXPLICIT_LE)})
    assert status.get("Status") == 0x0000
    assert instance_count(refusing) == before + 1
