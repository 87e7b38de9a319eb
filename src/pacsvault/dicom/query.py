"""C-FIND identifiers in and out: from a request identifier to conditions, from a row to a response.

Pure functions over pydicom datasets, shared by DIMSE C-FIND/C-GET/C-MOVE (and,
later, QIDO-RS, which builds the same conditions from URL parameters).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pacsvault.dicom.attributes import BY_TAG, IndexAttribute, Level, unique_key
from pacsvault.dicom.matching import Condition, InvalidQuery, parse_condition

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
_NOT_KEYS = {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE}

PATIENT_ROOT = "patient"
STUDY_ROOT = "study"


@dataclass
class Query:
    """A parsed C-FIND/C-GET/C-MOVE identifier."""

    level: Level
    conditions: list[tuple[IndexAttribute, Condition]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # keywords of every key sent
    unsupported: bool = False  # some requested key is not in the index
    identifier: Dataset | None = None  # the identifier the query was parsed from


_BINARY_VRS = frozenset(("US", "UL", "SS", "SL", "FL", "FD", "AT", "OB", "OW", "SQ"))


def _raw_text(elem: DataElement, attr: IndexAttribute) -> str | None:
    """The text of a matching key's value; None for universal matching.

    A value that arrives as bytes (VR UN: an explicit VR sender must use UN for a
    value longer than 64 KiB) is read as text when the attribute is a text one.
    Anything else that cannot be read is refused, never taken as universal matching.
    """
    value = elem.value
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes | bytearray):
        if attr.vr in _BINARY_VRS:
            raise InvalidQuery(f"{attr.keyword} has a value that cannot be read")
        return value.decode("latin-1").rstrip("\x00 ") or None
    return str(value)


def parse_identifier(identifier: Dataset, model: str) -> Query:
    """Read the level and matching keys of a query/retrieve identifier.

    Raises :class:`InvalidQuery` for a missing or wrong level (PATIENT is not a level of
    the Study Root model) and for key values the matching rules reject.
    """
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(level_text)
    except ValueError:
        raise InvalidQuery("QueryRetrieveLevel is missing or not a known level") from None
    if model == STUDY_ROOT and level is Level.PATIENT:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    query = Query(level)
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        attr = BY_TAG.get(tag)
        query.keys.append(attr.keyword if attr else str(elem.tag))
        if attr is None or attr.level.depth > level.depth:
            query.unsupported = True
            continue
        if elem.VR == "SQ":
            continue
        cond = parse_condition(attr, _raw_text(elem, attr))
        if cond is not None:
            query.conditions.append((attr, cond))
    return query


def _value_for(vr: str, text: Any) -> Any:
    if isinstance(text, int):
        return str(text) if vr in ("IS", "DS") else text
    if vr in ("US", "UL", "SS", "SL", "UV", "SV"):
        return [int(v) for v in str(text).split("\\")] if "\\" in str(text) else int(text)
    if "\\" in text:
        return text.split("\\")
    return text


UTF8 = "ISO_IR 192"


def response_charset(stored: str | None, ds: Dataset) -> str | None:
    """The character set of a response: the stored object's, when it can encode every text.

    Values of one response may come from objects sent in different character sets
    (a patient's first study in one, a later one in another); when the stored set
    cannot encode them all, the response is UTF-8 so nothing is lost.
    """
    texts = [str(e.value) for e in ds if e.VR in _TEXT_VRS and e.value]
    if stored in (None, "", "ISO_IR 6"):
        # the default repertoire is ASCII (pydicom would write latin-1 under it)
        return (stored or None) if all(t.isascii() for t in texts) else UTF8
    encodings = convert_encodings((stored or "ISO_IR 6").split("\\"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for text in texts:
                encode_string(text, encodings)
    except (UnicodeError, UserWarning, LookupError):
        return UTF8
    return stored


_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}


def find_response(
    identifier: Dataset, query: Query, row: Mapping[str, Any], retrieve_aet: str, model: str
) -> Dataset:
    """The response identifier for one matching *row*.

    Every requested key is returned: with the indexed value when the index knows it,
    empty otherwise. The unique keys of the query level (and, in the Patient Root
    model, of the levels above) are always included. SpecificCharacterSet is the
    stored object's, so names come back in the character set they were sent in.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.value
    ds.RetrieveAETitle = retrieve_aet
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        attr = BY_TAG.get(tag)
        value = row.get(attr.column) if attr and attr.level.depth <= query.level.depth else None
        vr = elem.VR if elem.VR not in ("UN", None) else (attr.vr if attr else "UN")
        if value is None or value == "":
            ds.add_new(tag, vr, [] if vr == "SQ" else None)
        else:
            ds.add_new(tag, vr, _value_for(vr, value))
    charset = response_charset(row.get("charset"), ds)
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    top = Level.PATIENT if model == PATIENT_ROOT else Level.STUDY
    for lvl in Level:
        if top.depth <= lvl.depth <= query.level.depth:
            key = unique_key(lvl)
            if key.tag not in ds and row.get(key.column):
                ds.add_new(key.tag, key.vr, row[key.column])
    return ds


# -- the fast path: responses encoded straight from index rows -----------------------------

_LONG_VRS = frozenset(
    ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"]
)
_BINARY = {"US": "<H", "UL": "<L", "SS": "<h", "SL": "<l"}
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


class ResponseEncoder:
    """Encodes C-FIND responses for one request directly from index rows.

    The plan (which tags, with which VRs, from which columns) is made once per
    request; each row then costs a few string encodings and struct packs instead of
    building and writing a pydicom Dataset. It gives the same bytes as
    :func:`find_response` written by pydicom (tests compare them) for little endian
    transfer syntaxes and single-byte or UTF-8 character sets; anything else returns
    None and the caller takes the pydicom path.
    """

    def __init__(
        self, identifier: Dataset, query: Query, retrieve_aet: str, model: str, ts: str
    ) -> None:
        self.ok = ts in (_IMPLICIT, _EXPLICIT_LE)
        self.implicit = ts == _IMPLICIT
        fixed = {QUERY_RETRIEVE_LEVEL: ("CS", query.level.value),
                 RETRIEVE_AE_TITLE: ("AE", retrieve_aet)}  # fmt: skip
        self.entries: list[tuple[int, str, str | None, str | None]] = []  # tag, vr, column, const
        asked: set[int] = set()
        for elem in identifier:
            tag = int(elem.tag)
            if tag in _NOT_KEYS or elem.tag.group in (0x0000, 0x0002):
                continue
            attr = BY_TAG.get(tag)
            column = attr.column if attr and attr.level.depth <= query.level.depth else None
            vr = elem.VR if elem.VR not in ("UN", None) else (attr.vr if attr else "UN")
            self.entries.append((tag, vr, column, None))
            asked.add(tag)
        for tag, (vr, value) in fixed.items():
            self.entries.append((tag, vr, None, value))
        self.uniques: list[tuple[int, str, str]] = []
        top = Level.PATIENT if model == PATIENT_ROOT else Level.STUDY
        for lvl in Level:
            if top.depth <= lvl.depth <= query.level.depth:
                key = unique_key(lvl)
                if key.tag not in asked:
                    self.uniques.append((key.tag, key.vr, key.column))

    def encode(self, row: Mapping[str, Any]) -> bytes | None:
        """The response identifier for *row*, or None when only pydicom can encode it."""
        if not self.ok:
            return None
        values: list[tuple[int, str, Any]] = []
        for tag, vr, column, const in self.entries:
            value = const if const is not None else (row.get(column) if column else None)
            values.append((tag, vr, value))
        for tag, vr, column in self.uniques:
            if row.get(column):
                values.append((tag, vr, row[column]))
        texts = [str(v) for _t, vr, v in values if vr in _TEXT_VRS and v not in (None, "")]
        codec, charset = _codec_for(row.get("charset"), texts)
        if codec is None:
            return None
        if charset:
            values.append((SPECIFIC_CHARACTER_SET, "CS", charset))
        out = bytearray()
        for tag, vr, value in sorted(values, key=lambda t: t[0]):
            out += self._element(tag, vr, self._value(vr, value, codec))
        return bytes(out)

    def _value(self, vr: str, value: Any, codec: str) -> bytes:
        if value is None or value == "":
            return b""
        if vr in _BINARY:
            parts = str(value).split("\\")
            return b"".join(struct.pack(_BINARY[vr], int(p)) for p in parts)
        text = str(value)
        raw = text.encode(codec if vr in _TEXT_VRS else "ascii", "strict")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return raw

    def _element(self, tag: int, vr: str, value: bytes) -> bytes:
        group, elem = tag >> 16, tag & 0xFFFF
        if self.implicit:
            return struct.pack("<HHL", group, elem, len(value)) + value
        if vr in _LONG_VRS:
            return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


#: DICOM character sets we encode by hand (single-valued, no ISO 2022 escapes).
_CODECS = {
    None: "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9", "ISO_IR 203": "iso8859_15", "ISO_IR 192": "utf_8",
}  # fmt: skip


def _codec_for(stored: str | None, texts: list[str]) -> tuple[str | None, str | None]:
    """(Python codec, SpecificCharacterSet) for a response, as :func:`response_charset`
    decides; (None, None) when the stored set is one only pydicom handles."""
    if stored in (None, "", "ISO_IR 6"):
        return ("ascii", stored or None) if all(t.isascii() for t in texts) else ("utf_8", UTF8)
    codec = _CODECS.get(stored)
    if codec is None:  # multi-valued, ISO 2022 or unknown: pydicom's business
        return None, None
    try:
        for text in texts:
            text.encode(codec)
    except UnicodeError:
        return "utf_8", UTF8
    return codec, stored
