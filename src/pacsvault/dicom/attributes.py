"""The attributes pacsvault indexes at each query/retrieve level.

The table follows PS3.4 Annex C.6 (Patient Root and Study Root information
models): the unique and required keys of each level plus the optional keys that
workstations commonly ask for, and the derived counts the archive computes
itself. Storage builds its schema from this table and C-FIND/QIDO answer from it,
so adding an attribute here makes it stored, matchable and returnable at once.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import TEXT_VR_DELIMS

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class Level(StrEnum):
    """A query/retrieve level, in hierarchy order."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for PATIENT up to 3 for IMAGE."""
        return list(Level).index(self)


class Kind(StrEnum):
    """How values of an attribute are matched (PS3.4 C.2.2.2)."""

    UID = "uid"  # single value or UID list
    TEXT = "text"  # single value or wildcard, case-sensitive
    NAME = "name"  # person name: single value or wildcard, case-insensitive
    DATE = "date"  # single value or range
    TIME = "time"  # single value or range
    NUMBER = "number"  # single value (IS, US)
    COUNT = "count"  # derived by the archive; universal matching only
    CODES = "codes"  # derived multi-valued (ModalitiesInStudy, SOPClassesInStudy)


@dataclass(frozen=True)
class IndexAttribute:
    """One indexed attribute: where it lives and how it matches."""

    keyword: str
    level: Level
    kind: Kind
    unique: bool = False

    @property
    def tag(self) -> int:
        """The attribute's tag as an int."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    @property
    def vr(self) -> str:
        """The attribute's value representation from the data dictionary."""
        return dictionary_VR(self.tag)

    @property
    def column(self) -> str:
        """The index column holding it: the keyword in snake case."""
        return _CAMEL_BOUNDARY.sub("_", self.keyword).lower()

    @property
    def derived(self) -> bool:
        """True when the archive computes the value rather than reading it."""
        return self.kind in (Kind.COUNT, Kind.CODES)


def _attrs(level: Level, *specs: tuple[str, Kind] | tuple[str, Kind, bool]) -> list[IndexAttribute]:
    return [IndexAttribute(s[0], level, s[1], *s[2:]) for s in specs]


PATIENT_ATTRIBUTES = _attrs(
    Level.PATIENT,
    ("PatientID", Kind.TEXT, True),
    ("PatientName", Kind.NAME),
    ("IssuerOfPatientID", Kind.TEXT),
    ("PatientBirthDate", Kind.DATE),
    ("PatientBirthTime", Kind.TIME),
    ("PatientSex", Kind.TEXT),
    ("EthnicGroup", Kind.TEXT),
    ("PatientComments", Kind.TEXT),
    ("NumberOfPatientRelatedStudies", Kind.COUNT),
    ("NumberOfPatientRelatedSeries", Kind.COUNT),
    ("NumberOfPatientRelatedInstances", Kind.COUNT),
)

STUDY_ATTRIBUTES = _attrs(
    Level.STUDY,
    ("StudyInstanceUID", Kind.UID, True),
    ("StudyDate", Kind.DATE),
    ("StudyTime", Kind.TIME),
    ("AccessionNumber", Kind.TEXT),
    ("StudyID", Kind.TEXT),
    ("StudyDescription", Kind.TEXT),
    ("ReferringPhysicianName", Kind.NAME),
    ("NameOfPhysiciansReadingStudy", Kind.NAME),
    ("InstitutionName", Kind.TEXT),
    ("PatientAge", Kind.TEXT),
    ("PatientSize", Kind.TEXT),
    ("PatientWeight", Kind.TEXT),
    ("ModalitiesInStudy", Kind.CODES),
    ("SOPClassesInStudy", Kind.CODES),
    ("NumberOfStudyRelatedSeries", Kind.COUNT),
    ("NumberOfStudyRelatedInstances", Kind.COUNT),
)

SERIES_ATTRIBUTES = _attrs(
    Level.SERIES,
    ("SeriesInstanceUID", Kind.UID, True),
    ("Modality", Kind.TEXT),
    ("SeriesNumber", Kind.NUMBER),
    ("SeriesDescription", Kind.TEXT),
    ("BodyPartExamined", Kind.TEXT),
    ("SeriesDate", Kind.DATE),
    ("SeriesTime", Kind.TIME),
    ("PerformedProcedureStepStartDate", Kind.DATE),
    ("PerformedProcedureStepStartTime", Kind.TIME),
    ("Laterality", Kind.TEXT),
    ("ProtocolName", Kind.TEXT),
    ("StationName", Kind.TEXT),
    ("Manufacturer", Kind.TEXT),
    ("NumberOfSeriesRelatedInstances", Kind.COUNT),
)

IMAGE_ATTRIBUTES = _attrs(
    Level.IMAGE,
    ("SOPInstanceUID", Kind.UID, True),
    ("SOPClassUID", Kind.UID),
    ("InstanceNumber", Kind.NUMBER),
    ("ContentDate", Kind.DATE),
    ("ContentTime", Kind.TIME),
    ("AcquisitionDate", Kind.DATE),
    ("AcquisitionTime", Kind.TIME),
    ("ImageType", Kind.TEXT),
    ("Rows", Kind.NUMBER),
    ("Columns", Kind.NUMBER),
    ("NumberOfFrames", Kind.NUMBER),
)

ATTRIBUTES: dict[Level, list[IndexAttribute]] = {
    Level.PATIENT: PATIENT_ATTRIBUTES,
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: IMAGE_ATTRIBUTES,
}

BY_TAG: dict[int, IndexAttribute] = {a.tag: a for attrs in ATTRIBUTES.values() for a in attrs}
BY_KEYWORD: dict[str, IndexAttribute] = {a.keyword: a for a in BY_TAG.values()}


def unique_key(level: Level) -> IndexAttribute:
    """The unique key of *level* (PatientID, StudyInstanceUID, ...)."""
    return next(a for a in ATTRIBUTES[level] if a.unique)


def keyword(tag: int) -> str:
    """Keyword of *tag*, or its hex form for private and unknown tags."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(ds: Dataset, attr: IndexAttribute) -> str | None:
    """The value of *attr* in *ds* as index text, or None when absent or unreadable."""
    try:
        raw = ds.get(attr.keyword)
        if raw is None or raw == "":
            return None
        if isinstance(raw, list | tuple | MultiValue):
            value = "\\".join(str(v) for v in raw)
        else:
            value = str(raw)
    except Exception:  # a malformed value is not indexed; the object is still stored
        return None
    value = value.strip()
    if not value:
        return None
    if attr.kind is Kind.TIME:
        return normalize_time(value)
    if attr.kind is Kind.NUMBER:
        return normalize_number(value)
    return value


def normalize_number(value: str) -> str:
    """IS/US values as canonical integers ("007" -> "7"); anything else unchanged."""
    try:
        return str(int(value.strip()))
    except ValueError:
        return value.strip()


def normalize_time(value: str) -> str:
    """TM as HHMMSS[.ffffff] without separators, so that text order is time order."""
    value = value.replace(":", "").strip()
    main, _, fraction = value.partition(".")
    main = main.ljust(6, "0")[:6]
    return f"{main}.{fraction}" if fraction else main


def character_set(ds: Dataset) -> str | None:
    """The dataset's SpecificCharacterSet as stored text (values joined by backslash)."""
    value = ds.get("SpecificCharacterSet")
    if not value:
        return None
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)


def index_values(ds: Dataset, level: Level) -> dict[str, str | None]:
    """The non-derived attribute values of *level* found in *ds*, keyed by column name.

    Values still in their raw form (a dataset just read, as ingest reads it) are
    converted here directly from their bytes, the way pydicom would convert them (same
    decoding, same splitting and stripping: ``tests/test_index_values.py`` holds the
    two to the same results); anything unusual goes through pydicom itself.
    """
    encodings: list[str] | None = None
    out: dict[str, str | None] = {}
    for attr, tag, vr, convert in _FAST[level]:
        raw = ds._dict.get(tag)  # the raw element, not converted yet
        if raw is None:
            out[attr.column] = None
            continue
        converted: object = _SLOW
        if (
            convert is not None
            and isinstance(raw, RawDataElement)
            and (raw.VR is None or vr == raw.VR)
            and isinstance(raw.value, bytes)
        ):
            try:
                if encodings is None:
                    encodings = ds._character_set  # pydicom's own rule
                converted = convert(raw.value, encodings, raw.is_little_endian)
            except Exception:  # whatever pydicom makes of it (usually: not indexed)
                converted = _SLOW
        if not isinstance(converted, str):
            out[attr.column] = _text(ds, attr)
            continue
        value = converted.strip()
        if not value:
            out[attr.column] = None
        elif attr.kind is Kind.TIME:
            out[attr.column] = normalize_time(value)
        elif attr.kind is Kind.NUMBER:
            out[attr.column] = normalize_number(value)
        else:
            out[attr.column] = value
    return out


# -- converting raw values as pydicom does (values.py), for the VRs indexed -------------

_SLOW = object()  # "let pydicom convert this one"
#: Python codecs (as pydicom names them) that decode and encode each name the same way.
_PLAIN_CODECS = frozenset((
    "iso8859", "latin_1", "UTF8", "iso8859_2", "iso8859_3", "iso8859_4", "iso_ir_126",
    "iso_ir_127", "iso_ir_138", "iso_ir_144", "iso_ir_148", "iso_ir_166",
))  # fmt: skip
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,9}\s*")
_Converter = Callable[[bytes, list[str], bool], object]


def _raw_string(value: bytes, _enc: list[str], _le: bool) -> object:
    """AS, CS, DA, TM (convert_string): one string, trailing padding removed from the
    whole (components keep theirs)."""
    return value.decode(default_encoding).rstrip(" \x00")


def _raw_uid(value: bytes, _enc: list[str], _le: bool) -> object:
    """UI (convert_UI): trailing padding removed, then each UID stripped."""
    text = value.decode(default_encoding).rstrip(" \x00")
    return "\\".join(v.strip() for v in text.split("\\")) if "\\" in text else text.strip()


def _raw_text(value: bytes, enc: list[str], _le: bool) -> object:
    """SH, LO (convert_text): each component without its trailing padding."""
    if b"\x1b" in value:
        return _SLOW  # code extensions (ISO 2022): pydicom decodes them in its own steps
    decoded = decode_bytes(value, enc, TEXT_VR_DELIMS)
    return "\\".join(v.rstrip("\x00 ") for v in decoded.split("\\"))


def _raw_single(value: bytes, enc: list[str], _le: bool) -> object:
    """LT (convert_single_string): one value, backslashes included."""
    if b"\x1b" in value:
        return _SLOW
    return decode_bytes(value, enc, TEXT_VR_DELIMS).rstrip("\x00 ")


def _raw_person_name(value: bytes, enc: list[str], _le: bool) -> object:
    """PN (convert_PN): the decoded names as they are, trailing padding removed."""
    if b"\x1b" in value or len(enc) != 1 or enc[0] not in _PLAIN_CODECS:
        return _SLOW  # code extensions, multi-byte sets: PersonName re-encodes its own way
    decoded = decode_bytes(value.rstrip(b"\x00 "), enc, TEXT_VR_DELIMS)
    if "=" in decoded or "\ufffd" in decoded:
        return _SLOW  # component groups, undecodable bytes: let PersonName handle them
    return decoded


def _raw_integer_string(value: bytes, _enc: list[str], _le: bool) -> object:
    """IS holding one plain integer (anything else goes to pydicom)."""
    text = value.decode(default_encoding).rstrip(" \x00")
    return text if _INTEGER.fullmatch(text) else _SLOW


def _raw_us(value: bytes, _enc: list[str], little_endian: bool) -> object:
    """US holding one value."""
    if len(value) != 2:
        return _SLOW
    return str(struct.unpack("<H" if little_endian else ">H", value)[0])


_CONVERTERS: dict[str, _Converter] = {
    **dict.fromkeys(("AS", "CS", "DA", "TM"), _raw_string),
    "UI": _raw_uid,
    **dict.fromkeys(("SH", "LO"), _raw_text),
    "LT": _raw_single,
    "PN": _raw_person_name,
    "IS": _raw_integer_string,
    "US": _raw_us,
}

#: Per level: (attribute, tag, dictionary VR, converter or None for pydicom's own: DS).
_FAST: dict[Level, list[tuple[IndexAttribute, int, str, _Converter | None]]] = {
    level: [(a, a.tag, a.vr, _CONVERTERS.get(a.vr)) for a in attrs if not a.derived]
    for level, attrs in ATTRIBUTES.items()
}
