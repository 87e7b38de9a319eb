"""Index values read straight from raw elements equal what pydicom's own conversion gives.

``index_values`` converts the raw bytes of the indexed elements itself (the ingest hot
path) and leaves anything unusual to pydicom. These tests hold it to the result of the
pydicom path (``Dataset.get`` for each attribute, the original implementation), on
pydicom's bundled files, on every character set pydicom knows, and on generated values
with every kind of padding, separator and byte that a sender could put there.
"""

from __future__ import annotations

import random
import struct
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacsvault.dicom.attributes import ATTRIBUTES, Level, _text, index_values
from pacsvault.dicom.part10 import NotDicom, read_index_dataset

pytestmark = pytest.mark.filterwarnings("ignore")

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


def reference(ds: Dataset, level: Level) -> dict[str, str | None]:
    """The values as the pydicom path gives them (one Dataset.get per attribute)."""
    return {a.column: _text(ds, a) for a in ATTRIBUTES[level] if not a.derived}


def check_equal(ds_bytes: bytes, ts: str) -> None:
    """Read *ds_bytes* twice as ingest does; fast and reference values must agree."""
    fast_ds = read_index_dataset(BytesIO(ds_bytes), ts)
    slow_ds = read_index_dataset(BytesIO(ds_bytes), ts)
    for level in Level:
        assert index_values(fast_ds, level) == reference(slow_ds, level), level


def encode(ds: Dataset, ts: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = ts != EXPLICIT_BE
    fp.is_implicit_VR = ts == IMPLICIT_LE
    write_dataset(fp, ds)
    return fp.getvalue()


def encode_raw(elements: dict[int, tuple[str, bytes]], ts: str) -> bytes:
    """Elements (tag -> VR, value bytes) encoded as they are, in tag order."""
    endian = ">" if ts == EXPLICIT_BE else "<"
    out = b""
    for tag in sorted(elements):
        vr, value = elements[tag]
        head = struct.pack(endian + "HH", tag >> 16, tag & 0xFFFF)
        if ts == IMPLICIT_LE:
            out += head + struct.pack("<L", len(value)) + value
        elif vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR"):
            out += head + vr.encode() + b"\0\0" + struct.pack(endian + "L", len(value)) + value
        else:
            out += head + vr.encode() + struct.pack(endian + "H", len(value)) + value
    return out


def _bundled_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", _bundled_files(), ids=lambda p: p.name)
def test_pydicom_bundled_files(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            raw = path.read_bytes()
        except Exception:
            pytest.skip("not a file pydicom reads")
        # The dataset's own bytes: after the file meta (or the whole file without one).
        offset = 0
        if raw[128:132] == b"DICM":
            from pacsvault.dicom.part10 import split_part10

            try:
                _ts, offset = split_part10(raw)
            except NotDicom:
                pytest.skip("unreadable file meta")
        if pydicom.uid.UID(ts).is_deflated:
            pytest.skip("deflated: indexed through the inflating reader, same code")
        try:
            check_equal(raw[offset:], ts)
        except NotDicom:
            pytest.skip("not indexable")


CHARSETS = [
    None, "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 144", "ISO_IR 192", "GB18030",
    "ISO 2022 IR 6", "ISO 2022 IR 100", "ISO_IR 13", "ISO 2022 IR 87", "ISO 2022 IR 149",
    ["ISO 2022 IR 6", "ISO 2022 IR 87"], ["", "ISO 2022 IR 149"], "ISO_IR 126", "nonsense",
]  # fmt: skip

# Bytes a sender could put in values: padding, separators, controls, escapes, non-ASCII.
ALPHABET = [
    b"A", b"z", b"0", b"7", b" ", b"\x00", b"\\", b"^", b"=", b".", b"-", b"+", b":", b"\x1b",
    b"\x1b$B", b"\x1b(B", b"\t", b"\n", b"\xe9", b"\xc3\xa9", b"\xff", b"\x80", b"\xa5", b"~",
]  # fmt: skip


def _value(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 2, 3, 5, 8, 16])
    out = b"".join(rng.choice(ALPHABET) for _ in range(n))
    if rng.random() < 0.3:
        out = rng.choice([b" ", b"  ", b"\x00", b" \x00"]) + out
    if rng.random() < 0.5:
        out += rng.choice([b" ", b"\x00", b"  ", b"\x00\x00"])
    if rng.random() < 0.3:
        out = b"\\".join([out, _short(rng)])
    return out


def _short(rng: random.Random) -> bytes:
    return rng.choice([b"", b" ", b"12", b" 3 ", b"ABC ", b"x\x00", b"007", b"+4", b"-0"])


def _numbers(rng: random.Random) -> bytes:
    return rng.choice([b"12", b"007", b" 42 ", b"+5", b"-0", b"1.0", b"1\\2", b"", b" ", b"x",
                       b"12\x00", b"99999999999", b"3 ", b"1e3", b"\x00", b"0012 "])  # fmt: skip


@pytest.mark.parametrize("ts", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE])
def test_generated_values_every_charset(ts: str) -> None:
    rng = random.Random(20261130)
    attrs = [a for level in Level for a in ATTRIBUTES[level] if not a.derived]
    for n in range(600):
        elements: dict[int, tuple[str, bytes]] = {}
        charset = CHARSETS[n % len(CHARSETS)]
        if charset is not None:
            text = charset if isinstance(charset, str) else "\\".join(charset)
            elements[0x00080005] = ("CS", text.encode() + b" " * (len(text) % 2))
        for a in attrs:
            if rng.random() < 0.15:
                continue  # absent
            if a.vr == "US":
                value: bytes = rng.choice([b"\x00\x02", b"\x01\x00", b"", b"\x01\x00\x02\x00"])
            elif a.vr in ("IS", "DS"):
                value = _numbers(rng)
            else:
                value = _value(rng)
            if len(value) % 2:
                value += b" "
            elif a.vr == "US" and ts == EXPLICIT_BE:
                value = value[::-1]
            elements[a.tag] = (a.vr, value)
        check_equal(encode_raw(elements, ts), ts)


def test_raw_elements_with_a_vr_other_than_the_dictionarys() -> None:
    """An explicit VR that is not the dictionary's (UN, LO for a CS...) goes to pydicom."""
    elements = {
        0x00080060: ("UN", b"CT"),  # Modality sent as UN
        0x00100020: ("SH", b"PID "),  # PatientID (LO) sent as SH
        0x00280010: ("UN", b"\x00\x02"),  # Rows as UN
        0x00200013: ("SL", b"\x05\x00\x00\x00"),  # InstanceNumber (IS) as SL
        0x00100010: ("LO", b"DOE^JOHN"),  # PatientName (PN) as LO
    }
    check_equal(encode_raw(elements, EXPLICIT_LE), EXPLICIT_LE)


def test_the_synthetic_data_sets() -> None:
    from pacsvault.dicom.synthetic import Spec, data_set

    for ds in data_set(Spec(patients=2, rows=8, columns=8)):
        check_equal(encode(ds, EXPLICIT_LE), EXPLICIT_LE)
