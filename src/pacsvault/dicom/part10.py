"""The DICOM file format (PS3.10): reading a received dataset and framing it as a file.

pacsvault stores the dataset bytes exactly as received, behind a file meta header
it writes itself; these helpers parse the bytes (for indexing only) and build the
header.
"""

from __future__ import annotations

import io
import struct
import zlib
from io import BytesIO
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
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


class CutOff(NotDicom):
    """The bytes end before the file meta information does (or before any dataset)."""


def split_part10(data: bytes) -> tuple[str, int]:
    """Return (transfer syntax UID, offset of the dataset) of a Part-10 file's bytes.

    Raises :class:`NotDicom` when there is no ``DICM`` preamble or the meta header
    has no transfer syntax, and :class:`CutOff` when *data* ends inside the file meta
    information or right after it (a stream's reader waits for more; a file has no
    dataset).
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicom("no DICOM preamble")
    if data[132:138] == b"\x02\x00\x00\x00UL"[: len(data) - 132] and len(data) < 144:
        raise CutOff("the data ends inside the file meta information group length")
    if data[132:138] == b"\x02\x00\x00\x00UL" and len(data) <= meta_length(data):
        raise CutOff("the data ends inside or right after the file meta information")
    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2)
        ts = meta.get("TransferSyntaxUID")
    except Exception as exc:
        if fp.tell() >= len(data):
            raise CutOff("the data ends inside the file meta information") from None
        raise NotDicom(f"unreadable file meta information ({type(exc).__name__})") from None
    if fp.tell() >= len(data):  # pydicom reads a cut-off value short, to the end
        raise CutOff("the data ends inside or right after the file meta information")
    if not ts:
        raise NotDicom("file meta information has no transfer syntax")
    return str(ts).strip(), fp.tell()


def read_file_meta(head: bytes) -> tuple[str, str, str, int]:
    """(transfer syntax, SOP class, SOP instance, dataset offset) of a Part-10 file's start.

    *head* must hold the whole file meta group. The UIDs are as the meta states them
    (not yet validated: the dataset's own rule). Raises :class:`NotDicom`.
    """
    ts, offset = split_part10(head)
    try:
        meta = read_dataset(BytesIO(head[132:offset]), is_implicit_VR=False, is_little_endian=True)
    except Exception as exc:
        raise NotDicom(f"unreadable file meta information ({type(exc).__name__})") from None
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip(" \x00")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip(" \x00")
    return ts, sop_class, sop_instance, offset


def meta_length(head: bytes) -> int:
    """Offset of the dataset in a Part-10 file, from its first 144 bytes.

    Reads the file meta group length, which every file pacsvault writes starts with.
    Raises :class:`NotDicom` otherwise.
    """
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise NotDicom("not a Part-10 file with a file meta group length")
    return 144 + struct.unpack("<L", head[140:144])[0]


def _transfer_syntax(transfer_syntax: str) -> UID:
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise NotDicom("unknown transfer syntax")
    return ts


def read_index_dataset(fp: BinaryIO, transfer_syntax: str) -> Dataset:
    """The elements before the pixel data, read from *fp*'s position.

    Values longer than 64 KiB are skipped, not read (an index never needs them), so
    memory stays small whatever the object holds. Raises :class:`NotDicom`.
    """
    ts = _transfer_syntax(transfer_syntax)
    try:
        ds = read_dataset(
            fp,
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=_at_pixel_data,
            defer_size=_DEFER,
        )
    except Exception as exc:
        raise NotDicom(f"unreadable dataset ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise NotDicom("empty dataset")
    return ds


_DEFER = 64 * 1024
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV")
)
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32


def check_complete(fp: BinaryIO, end: int, transfer_syntax: str | UID) -> int:
    """Walk every element from *fp*'s position up to offset *end*; raise NotDicom unless
    each is complete (defined lengths present in full, undefined lengths delimited).

    pydicom reads a short value without complaint and indexing stops before the pixel
    data, so truncation (a cut connection, a corrupt file) is caught here. Values are
    skipped with seeks, never read, so a multi-gigabyte object costs no memory.
    Returns the number of bytes of group 0002 (file meta) elements at the start of
    the dataset, which a sender should not have put there (0 when there are none).
    """
    ts = _transfer_syntax(str(transfer_syntax))
    start = fp.tell()
    endian = "<" if ts.is_little_endian else ">"
    walker = _Walker(fp, end, endian)
    try:
        implicit = _looks_implicit(fp, ts.is_implicit_VR)
        return walker.dataset(implicit, start, top=True)
    except NotDicom:
        raise
    except (struct.error, OSError, ValueError) as exc:
        raise NotDicom(f"unreadable dataset ({type(exc).__name__})") from None


_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)


def _looks_implicit(fp: BinaryIO, declared_implicit: bool) -> bool:
    """Whether the dataset at *fp* is implicit VR, judged by its first element.

    Some senders encode implicit VR in an explicit VR context (and the reverse); like
    pydicom (and DCMTK), read what is there rather than refuse it. *fp* is not moved.
    """
    pos = fp.tell()
    head = fp.read(6)
    fp.seek(pos)
    if len(head) < 6:
        return declared_implicit
    return head[4:6] not in _VRS


class _Walker:
    """Element-by-element walk over an encoded dataset (see :func:`check_complete`)."""

    def __init__(self, fp: BinaryIO, end: int, endian: str) -> None:
        self.fp = fp
        self.end = end
        self.tag = struct.Struct(endian + "HH")
        self.u16 = struct.Struct(endian + "H")
        self.u32 = struct.Struct(endian + "L")
        self.item = struct.Struct(endian + "HHL")

    def _read(self, n: int) -> bytes:
        data = self.fp.read(n)
        if len(data) != n:
            raise NotDicom("truncated dataset: it ends inside an element header")
        return data

    def _skip(self, length: int) -> None:
        pos = self.fp.tell()
        if pos + length > self.end:
            raise NotDicom("truncated element: the dataset ends inside a value")
        self.fp.seek(pos + length)

    def dataset(self, implicit: bool, start: int, *, top: bool = False, depth: int = 0) -> int:
        """Walk elements until *end* (top level) or an item delimiter (nested)."""
        if depth > _MAX_DEPTH:
            raise NotDicom("sequences nested too deeply")
        meta_end = start if top else 0
        leading_meta = top
        while self.fp.tell() < self.end:
            group, elem = self.tag.unpack(self._read(4))
            tag = (group << 16) | elem
            if tag == _ITEM_END:
                if top:
                    raise NotDicom("unexpected item delimiter")
                self._read(4)
                return 0
            if implicit or group == 0xFFFE:
                vr = None
                length = self.u32.unpack(self._read(4))[0]
            else:
                vr = self._read(2)
                if vr in _LONG_VRS:
                    self._read(2)
                    length = self.u32.unpack(self._read(4))[0]
                elif vr.isalpha() and vr.isupper():
                    length = self.u16.unpack(self._read(2))[0]
                else:
                    raise NotDicom("invalid VR in an explicit VR dataset")
            if length == _UNDEFINED:
                self.items(implicit or vr == b"UN", depth + 1)
            else:
                self._skip(length)
            if leading_meta:
                if group == 2:
                    meta_end = self.fp.tell()
                else:
                    leading_meta = False
        if not top:
            raise NotDicom("truncated dataset: a sequence item has no delimiter")
        return meta_end - start

    def items(self, implicit: bool, depth: int) -> None:
        """Walk the items of an undefined-length sequence or encapsulated pixel data."""
        while True:
            group, elem, length = self.item.unpack(self._read(8))
            tag = (group << 16) | elem
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise NotDicom("malformed sequence: expected an item")
            if length == _UNDEFINED:
                self.dataset(implicit, self.fp.tell(), depth=depth)
            else:
                self._skip(length)


class TooLarge(ValueError):
    """An object (or its inflated form) is larger than the configured limit."""


class InflatingReader(io.RawIOBase):
    """A read-only, forward-only file over the raw deflate stream in *src*.

    Seeking forward inflates and drops; seeking backward is an error. At most *limit*
    bytes come out (past that, :class:`TooLarge`), and memory stays at one chunk.
    Wrap it in :class:`io.BufferedReader` for pydicom.
    """

    def __init__(self, src: BinaryIO, limit: int, chunk: int = 256 * 1024) -> None:
        super().__init__()
        self._src = src
        self._limit = limit
        self._chunk = chunk
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""  # inflated, not yet read
        self._pos = 0  # bytes handed out (or skipped) so far
        self._out = 0  # bytes inflated so far

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _more(self) -> bool:
        """Inflate the next piece into the pending buffer; False at the end of the stream."""
        while not self._pending:
            if self._inflater.eof:
                return False
            data = self._inflater.unconsumed_tail or self._src.read(self._chunk)
            if not data:
                raise NotDicom("truncated deflated dataset")
            try:
                out = self._inflater.decompress(data, self._chunk)
            except zlib.error:
                raise NotDicom("unreadable deflated dataset") from None
            self._out += len(out)
            if self._out > self._limit:
                raise TooLarge("inflated dataset exceeds the size limit")
            self._pending = out
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._more():
            return 0
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._pos + offset if whence == 1 else -1
        if target < self._pos:
            raise OSError("an inflating reader cannot seek backwards or from the end")
        while self._pos < target:
            if not self._more():
                break
            n = min(target - self._pos, len(self._pending))
            self._pending = self._pending[n:]
            self._pos += n
        return self._pos


def inflated_size(src: BinaryIO, limit: int) -> int:
    """The size of the raw deflate stream in *src* once inflated, streaming, at most *limit*.

    Raises :class:`TooLarge` past *limit* (a deflate bomb costs no memory) and
    :class:`NotDicom` for a damaged or truncated stream.
    """
    reader = InflatingReader(src, limit)
    return reader.seek(1 << 62)


def inflating(src: BinaryIO, limit: int) -> io.BufferedReader:
    """A buffered, forward-only reader of the inflated stream (see :class:`InflatingReader`)."""
    return io.BufferedReader(InflatingReader(src, limit), 64 * 1024)


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
