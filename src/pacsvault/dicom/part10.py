"""The DICOM file format (PS3.10): reading a received dataset and framing it as a file.

pacsvault stores the dataset bytes exactly as received, behind a file meta header
it writes itself; these helpers parse the bytes (for indexing only) and build the
header.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, generate_uid

from pacsvault import __version__

#: Our implementation class UID: derived deterministically under pydicom's UID root.
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["pacsvault implementation class"])
IMPLEMENTATION_VERSION_NAME = ("PACSVAULT_" + __version__.replace(".", ""))[:16]

_PREAMBLE = b"\x00" * 128 + b"DICM"


class NotDicom(ValueError):
    """The bytes are not a DICOM file or dataset that can be read."""


def _not_group_2(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag.group != 2


def _at_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag >= 0x7FE00010


def split_part10(data: bytes) -> tuple[str, int]:
    """Return (transfer syntax UID, offset of the dataset) of a Part-10 file's bytes.

    Raises :class:`NotDicom` when there is no ``DICM`` preamble or the meta header
    has no transfer syntax.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("no DICOM preamble")
    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2)
        ts = meta.get("TransferSyntaxUID")
    except Exception as exc:
        raise NotDicom(f"unreadable file meta information ({type(exc).__name__})") from None
    if not ts:
        raise NotDicom("file meta information has no transfer syntax")
    return str(ts).strip(), fp.tell()


def parse_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    """Parse dataset bytes encoded in *transfer_syntax*, stopping before the pixel data.

    Raises :class:`NotDicom` when pydicom cannot read them or the syntax is unknown.
    """
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise NotDicom("unknown transfer syntax")
    try:
        if ts.is_deflated:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        _check_lengths(data, ts.is_implicit_VR, ts.is_little_endian)
        ds = read_dataset(
            BytesIO(data),
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=_at_pixel_data,
        )
    except NotDicom:
        raise
    except Exception as exc:
        raise NotDicom(f"unreadable dataset ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise NotDicom("empty dataset")
    return ds


def _check_lengths(data: bytes, implicit: bool, little: bool) -> None:
    """Raise NotDicom when a top-level element declares more bytes than the data holds.

    pydicom reads a short value without complaint, and indexing stops before the
    pixel data, so truncation (a cut connection, a corrupt file) is caught here:
    every defined length must be present in full, every undefined length must end
    with its delimiter.
    """
    fp = BytesIO(data)
    size = len(data)
    try:
        for raw in data_element_generator(fp, implicit, little, defer_size=None):
            length = getattr(raw, "length", 0xFFFFFFFF)  # parsed sequences have no length
            if length != 0xFFFFFFFF and len(raw.value or b"") != length:
                raise NotDicom("truncated element: the dataset ends inside a value")
            if fp.tell() > size:
                raise NotDicom("truncated dataset")
    except NotDicom:
        raise
    except Exception as exc:
        raise NotDicom(f"unreadable dataset ({type(exc).__name__})") from None


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the file meta group."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _pad(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


_VERSION = _element(0x00020001, b"OB", b"\x00\x01")
_IMPLEMENTATION = _element(0x00020012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\x00")) + _element(
    0x00020013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME, b" ")
)


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str | None
) -> bytes:
    """Preamble, ``DICM`` and the file meta information group for one stored object.

    Built directly (it is on the ingest path of every instance); the bytes equal what
    pydicom's ``write_file_meta_info`` writes for the same values (see the tests).
    The UIDs must be valid (ASCII) already.
    """
    body = (
        _VERSION
        + _element(0x00020002, b"UI", _pad(sop_class_uid, b"\x00"))
        + _element(0x00020003, b"UI", _pad(sop_instance_uid, b"\x00"))
        + _element(0x00020010, b"UI", _pad(transfer_syntax, b"\x00"))
        + _IMPLEMENTATION
    )
    if source_aet:
        body += _element(0x00020016, b"AE", _pad(source_aet.strip(), b" "))
    return _PREAMBLE + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body
