"""Memory is bounded per connection, whatever the peer sends (issue 7, items 5-7).

Every test measures the resident memory of a real `pacsvault serve` process from
/proc while a client sends it something large: a 1.5 GB object, a PDU header
claiming 4 GiB before any association, a deflate bomb, an endless C-STORE.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

from conftest import CLIENT_AET, SERVER_AET, Server, add_test_peer, cli, dcmtk

MIB = 1024 * 1024
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
SC_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process in bytes (VmRSS now, VmHWM at its peak so far).

    Growth is measured as the peak after a transfer minus the resident size before
    it: memory freed after a request (as large buffers are) still counts.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not found")


def rss_each(server: Server, field: str = "VmRSS") -> dict[int, int]:
    """:func:`rss` of the server process and of each of its DICOM workers."""
    return {pid: rss(pid, field) for pid in server.pids()}


def largest(server: Server, field: str = "VmHWM") -> int:
    """The largest :func:`rss` among the server's processes."""
    return max(rss_each(server, field).values())


def grown_since(server: Server, before: dict[int, int]) -> int:
    """The largest growth of one process's peak RSS over its resident size in *before*
    (a process started since counts in full)."""
    return max(peak - before.get(pid, 0) for pid, peak in rss_each(server, "VmHWM").items())


def _header(frames: int, rows: int, cols: int, ts: str = EXPLICIT_LE) -> tuple[bytes, bytes]:
    """(file meta bytes, dataset bytes before the pixel data) of a synthetic multi-frame."""
    ds = Dataset()
    ds.SOPClassUID = SC_MULTIFRAME
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "BIG^OBJECT"
    ds.PatientID = "PVBIG1"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SC_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue(), body.getvalue()


def write_big_file(path: Path, frames: int, rows: int = 1024, cols: int = 1024) -> str:
    """A multi-frame file of frames*rows*cols pixel bytes, written without holding it;
    returns the SHA-256 of its dataset bytes (what must come back)."""
    meta, body = _header(frames, rows, cols)
    frame = bytes(range(256)) * (rows * cols // 256)
    digest = hashlib.sha256(body)
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, frames * rows * cols)
    digest.update(pixel_header)
    with open(path, "wb") as f:
        f.write(meta + body + pixel_header)
        for n in range(frames):
            stamped = struct.pack("<L", n) + frame[4:]
            f.write(stamped)
            digest.update(stamped)
    return digest.hexdigest()


def dataset_sha256(path: Path) -> str:
    """SHA-256 of a Part-10 file's dataset bytes, read in chunks."""
    with open(path, "rb") as f:
        head = f.read(144)
        assert head[128:132] == b"DICM"
        f.seek(144 + struct.unpack("<L", head[140:144])[0])
        digest = hashlib.sha256()
        while chunk := f.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def server(data_dir: Path, make_server) -> Server:
    add_test_peer(data_dir)
    return make_server(data_dir)


def test_a_1_5_gb_object_round_trips_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "big.dcm"
    sent = write_big_file(src, frames=1431)  # 1,500,512,256 pixel bytes
    assert src.stat().st_size > 1_500_000_000
    before = rss_each(server)
    proc = dcmtk("storescu", "-aet", CLIENT_AET, "-aec", SERVER_AET,
                 "127.0.0.1", str(server.port), str(src), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    src.unlink()  # room on disk for the copy coming back
    out = tmp_path / "back"
    out.mkdir()
    proc = dcmtk("getscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "-S",
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PVBIG1",
                 "-od", str(out), "127.0.0.1", str(server.port), timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = list(out.iterdir())
    assert len(files) == 1
    assert dataset_sha256(files[0]) == sent
    peak, start = largest(server), max(before.values())
    print(f"\n1.5 GB object: server RSS {start / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB")
    assert peak < 400 * MIB, f"peak RSS {peak / MIB:.0f} MiB (before {start / MIB:.0f})"


def test_a_pdu_claiming_4_gib_before_association_costs_nothing(server: Server) -> None:
    before = rss_each(server)
    sent = 0
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(struct.pack(">BxL", 0x01, 0xFFFFFFFF))
        zeros = bytes(MIB)
        try:
            while sent < 600 * MIB and time.monotonic() - start < 20:
                sock.sendall(zeros)
                sent += len(zeros)
        except OSError:
            pass  # the server closed the connection: what we want
    grown = grown_since(server, before)
    print(f"\n4 GiB PDU claim: {sent / MIB:.0f} MiB sent, peak RSS grew {grown / MIB:.1f} MiB")
    assert sent < 600 * MIB, "the server kept reading a PDU it should have refused"
    assert grown < 100 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
    audit = server.audit()
    assert any(o == "refused" and "exceeds the limit" in (d or "") for _a, o, _c, _ad, d in audit)


def _deflate_bomb(path: Path, pixels: int) -> None:
    """A deflated Part-10 file whose dataset inflates to more than *pixels* bytes."""
    side = int(pixels**0.5)
    meta, body = _header(1, side, side, DEFLATED)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(meta)
        f.write(compressor.compress(body))
        f.write(compressor.compress(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, side * side)))
        zeros = bytes(8 * MIB)
        for _ in range(side * side // len(zeros)):
            f.write(compressor.compress(zeros))
        f.write(compressor.compress(bytes(side * side % len(zeros))))
        f.write(compressor.flush())


def _send(port: int, *paths: Path, ts: str = EXPLICIT_LE) -> list[int]:
    """C-STORE *paths* over one pynetdicom association (raw bytes, never re-encoded)."""
    ae = AE(ae_title=CLIENT_AET)
    ae.add_requested_context(SC_MULTIFRAME, ts)
    ae.dimse_timeout = ae.network_timeout = 300
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AET)
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(p).Status) for p in paths]
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    return statuses


def test_a_deflate_bomb_is_inflated_as_a_stream(server: Server, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    _deflate_bomb(bomb, 512 * MIB)
    assert bomb.stat().st_size < 2 * MIB
    before = rss_each(server)
    assert _send(server.port, bomb, ts=DEFLATED) == [0x0000]  # stored as sent: it is legal
    grown = grown_since(server, before)
    print(f"\ndeflate bomb (512 MiB inflated): peak RSS grew {grown / MIB:.1f} MiB")
    assert grown < 100 * MIB, f"RSS grew by {grown / MIB:.0f} MiB"
    stats = cli(server.data, "status").stdout
    assert "instances: 1" in stats
    assert not list((server.data / "blobs" / "tmp").iterdir())


def _limit(data: Path, size: int) -> None:
    path = data / "pacsvault.toml"
    text = path.read_text()
    assert "max_object_size = 4294967296" in text
    path.write_text(text.replace("max_object_size = 4294967296", f"max_object_size = {size}"))


def test_objects_above_the_size_limit_are_refused_and_the_association_goes_on(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    add_test_peer(data_dir)
    _limit(data_dir, 64 * MIB)
    server = make_server(data_dir)
    big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
    write_big_file(big, frames=200)  # 200 MiB: an "endless" store, as far as we care
    write_big_file(small, frames=2)
    before = rss_each(server)
    assert _send(server.port, big, small) == [0xA700, 0x0000]
    assert grown_since(server, before) < 100 * MIB
    assert "instances: 1" in cli(server.data, "status").stdout
    assert not list((server.data / "blobs" / "tmp").iterdir())
    refused = [d for a, o, _c, _ad, d in server.audit() if a == "store" and o == "refused"]
    assert any("max_object_size" in (d or "") for d in refused)


def test_a_deflate_bomb_above_the_size_limit_is_refused(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    add_test_peer(data_dir)
    _limit(data_dir, 128 * MIB)
    server = make_server(data_dir)
    bomb = tmp_path / "bomb.dcm"
    _deflate_bomb(bomb, 512 * MIB)
    before = rss_each(server)
    assert _send(server.port, bomb, ts=DEFLATED) == [0xA700]
    assert grown_since(server, before) < 100 * MIB
    assert "instances: 0" in cli(server.data, "status").stdout
    assert not list((server.data / "blobs" / "tmp").iterdir())


def test_a_1_gb_stow_and_wado_rs_retrieval_in_bounded_memory(
    server: Server, tmp_path: Path
) -> None:
    """DICOMweb streams too: STOW-RS of a 1 GB object, then WADO-RS of it, peak < 400 MiB."""
    import requests

    out = cli(server.data, "user", "add", "big", "--role", "radiologist").stdout
    assert "added" in out
    token = cli(server.data, "token", "create", "--user", "big", "--scope", "write").stdout
    token = token.strip().splitlines()[-1]
    src = tmp_path / "big.dcm"
    sent = write_big_file(src, frames=1000)  # 1,048,576,000 pixel bytes
    session = requests.Session()
    session.verify = str(server.data / "tls" / "ca.crt")
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    base = f"https://localhost:{server.https_port}/dicom-web"

    def body():  # type: ignore[no-untyped-def]
        yield b"--bigpart\r\nContent-Type: application/dicom\r\n\r\n"
        with open(src, "rb") as f:
            while chunk := f.read(4 * MIB):
                yield chunk
        yield b"\r\n--bigpart--\r\n"

    before = rss_each(server)
    ctype = 'multipart/related; type="application/dicom"; boundary=bigpart'
    r = session.post(f"{base}/studies", data=body(), headers={"Content-Type": ctype}, timeout=600)
    assert r.status_code == 200, r.text
    ref = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    src.unlink()
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    r = session.get(ref, stream=True, timeout=600, headers={"Accept": accept})
    assert r.status_code == 200
    digest, size, offset, head = hashlib.sha256(), 0, None, b""
    boundary = r.headers["Content-Type"].split("boundary=")[1].encode()
    tail = b""
    for chunk in r.iter_content(4 * MIB):
        if offset is None:
            head += chunk
            at = head.find(b"\r\n\r\n")
            if at < 0 or len(head) < at + 4 + 144:
                continue
            obj = head[at + 4 :]
            offset = 144 + struct.unpack("<L", obj[140:144])[0]
            chunk = obj[offset:]
        data = tail + chunk
        keep = len(boundary) + 8
        digest.update(data[:-keep])
        size += len(data) - keep
        tail = data[-keep:]
    end = tail.rfind(b"\r\n--" + boundary)
    digest.update(tail[:end])
    peak, start = largest(server), max(before.values())
    print(f"\n1 GB over DICOMweb: RSS {start / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB")
    assert digest.hexdigest() == sent
    assert peak < 400 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
