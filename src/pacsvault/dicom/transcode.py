"""Changing a dataset's transfer syntax, for receivers that cannot take the stored one.

Objects are stored as received; a retrieve sends them as they are whenever the
receiver accepts that transfer syntax. Otherwise an uncompressed object is re-encoded
in another uncompressed syntax, and a compressed one is decompressed when pydicom has
a decoder for it. This path holds the whole object in memory (only this one does).
"""

from __future__ import annotations

from io import BytesIO
from typing import BinaryIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from pacsvault.dicom import codecs

codecs.register()  # permissive JPEG decoders for pydicom (once, whoever imports first)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
UNCOMPRESSED = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)


class TranscodeError(ValueError):
    """The object cannot be given in the asked transfer syntax."""


def decode_dataset(data: bytes | BinaryIO, transfer_syntax: str) -> Dataset:
    """A whole dataset (no file meta) encoded in *transfer_syntax*."""
    ts = UID(transfer_syntax)
    fp = BytesIO(data) if isinstance(data, bytes | bytearray) else data
    ds = read_dataset(fp, is_implicit_VR=ts.is_implicit_VR, is_little_endian=ts.is_little_endian)
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian)
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """*ds* encoded in an uncompressed *transfer_syntax* (no file meta)."""
    ts = UID(transfer_syntax)
    fp = BytesIO()
    out = DicomFileLike(fp)
    out.is_little_endian = ts.is_little_endian
    out.is_implicit_VR = ts.is_implicit_VR
    write_dataset(out, ds)
    return fp.getvalue()


def can_transcode(source: str, target: str) -> bool:
    """Whether :func:`transcode` may succeed: to an uncompressed syntax, from any."""
    return target in UNCOMPRESSED and (source in UNCOMPRESSED or UID(source).is_compressed)


def transcode(fp: BinaryIO, source: str, target: str) -> bytes:
    """The dataset at *fp* (in *source*) encoded in *target*; raises TranscodeError."""
    if source == target:
        return fp.read()
    if target not in UNCOMPRESSED:
        raise TranscodeError("only uncompressed transfer syntaxes can be produced")
    try:
        ds = decode_dataset(fp, source)
        ds.file_meta = FileMetaDataset({0x00020010: DataElement(0x00020010, "UI", source)})
        if UID(source).is_compressed:
            ds.decompress()  # needs a decoder for the source syntax (see codecs)
        return encode_dataset(ds, target)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot convert ({type(exc).__name__})") from None
