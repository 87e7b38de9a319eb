"""QIDO-RS (PS3.18 section 10.6): searches for studies, series and instances.

Query parameters become the same matching conditions as a C-FIND identifier (one
set of matching rules, :mod:`pacsvault.dicom.matching`), and the Archive runs them
within the caller's scope and audits them. Answers stream as DICOM JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response

from pacsvault.dicom.attributes import ATTRIBUTES, BY_KEYWORD, BY_TAG, IndexAttribute, Level
from pacsvault.dicom.json_model import element, row_json
from pacsvault.dicom.matching import Condition, Exact, InvalidQuery, Wildcard, parse_condition
from pacsvault.dicom.uids import is_safe_uid
from pacsvault.web.streams import streamed

DICOM_JSON = "application/dicom+json"

#: What each level returns when nothing else is asked (PS3.18 tables 10.6.3-3 to -5),
#: as far as the index holds it.
DEFAULT_RETURN: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
        "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "BodyPartExamined",
    ),
    Level.IMAGE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    ),
}  # fmt: skip

#: The unique keys of the levels above, returned with every answer below them.
PARENT_KEYS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (),
    Level.SERIES: ("StudyInstanceUID",),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID"),
}
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}
#: The largest limit or offset: what the index's 64-bit integers hold.
MAX_COUNT = 2**63 - 1


def attribute(name: str) -> IndexAttribute:
    """The indexed attribute a query parameter names (keyword or tag, e.g. 00100010)."""
    attr = BY_KEYWORD.get(name)
    if attr is None:
        text = name.replace(",", "").replace("(", "").replace(")", "")
        if len(text) == 8:
            try:
                attr = BY_TAG.get(int(text, 16))
            except ValueError:
                attr = None
    if attr is None:
        raise HTTPException(400, f"unknown or unsupported attribute '{name[:64]}'")
    return attr


class Search:
    """One parsed QIDO-RS request."""

    def __init__(
        self, request: Request, level: Level, fixed: dict[str, str], page: int, cap: int
    ) -> None:
        """*page*: how many answers without ``limit``; *cap*: the most ``limit`` may ask."""
        self.level = level
        self.conditions: list[tuple[IndexAttribute, Condition]] = []
        self.returned: dict[str, IndexAttribute] = {}
        self.limit = page
        self.offset = 0
        fuzzy = False
        everything = False
        params = request.query_params
        for key in params:
            if key.lower() not in _CONTROL:
                continue
            values = params.getlist(key)
            if key.lower() == "includefield":
                for v in ",".join(values).split(","):
                    if v.strip() == "all":
                        everything = True
                    elif v.strip():
                        self._return(attribute(v.strip()))
            elif key.lower() in ("limit", "offset"):
                number = _count(key, values[-1])
                if key.lower() == "limit":
                    self.limit = min(number, cap) if number else page
                else:
                    self.offset = number
            else:
                fuzzy = values[-1].strip().lower() == "true"
        for key, value in [*fixed.items(), *((k, v) for k in params if k.lower() not in _CONTROL
                                                for v in params.getlist(k))]:  # fmt: skip
            attr = attribute(key)
            if attr.level.depth > level.depth:
                raise HTTPException(400, f"{attr.keyword} is not an attribute of the "
                                         f"{level.value.lower()} level")  # fmt: skip
            self._return(attr)
            try:
                cond = parse_condition(attr, value)
            except InvalidQuery as exc:
                raise HTTPException(400, str(exc)) from None
            if fuzzy and isinstance(cond, Exact) and cond.fold:
                cond = Wildcard(cond.value + "*", True)  # fuzzy names: a prefix, any case
            if cond is not None:
                self.conditions.append((attr, cond))
        for keyword in (*DEFAULT_RETURN[level], *PARENT_KEYS[level]):
            self._return(BY_KEYWORD[keyword])
        if everything:
            for lvl in Level:
                if lvl.depth <= level.depth:
                    for attr in ATTRIBUTES[lvl]:
                        self._return(attr)

    def _return(self, attr: IndexAttribute) -> None:
        self.returned.setdefault(attr.keyword, attr)


def _count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if value < 0:
        raise HTTPException(400, f"{name} must not be negative")
    if value > MAX_COUNT:
        raise HTTPException(400, f"{name} must be at most {MAX_COUNT}")
    return value


def check_uid(uid: str, what: str) -> str:
    """A UID from a URL path; 400 unless it is safe (digits and dots)."""
    if not is_safe_uid(uid):
        raise HTTPException(400, f"{what} is not a valid UID")
    return uid


def retrieve_url(base: str, row: dict[str, Any], level: Level) -> str:
    url = f"{base}/studies/{row['study_instance_uid']}"
    if level.depth >= Level.SERIES.depth:
        url += f"/series/{row['series_instance_uid']}"
    if level is Level.IMAGE:
        url += f"/instances/{row['sop_instance_uid']}"
    return url


def _stream(rows: list[Any], search: Search, base: str) -> Iterator[bytes]:
    """The JSON array of the answers, in chunks of a few hundred objects."""
    attrs = list(search.returned.values())
    chunk: list[str] = []
    yield b"["
    for n, row in enumerate(rows):
        extra = {0x00081190: element("UR", retrieve_url(base, row, search.level))}
        chunk.append(json.dumps(row_json(row, attrs, extra), separators=(",", ":")))
        if len(chunk) == 256:
            yield ((b"," if n >= 256 else b"") + ",".join(chunk).encode())
            chunk = []
    if chunk:
        yield (b"," if len(rows) > len(chunk) else b"") + ",".join(chunk).encode()
    yield b"]"


def answer(found: Iterator[Any], search: Search, base: str) -> Response:
    """The response to a search whose rows (asked with limit + 1) are *found*."""
    try:
        rows = list(islice(found, search.limit + 1))
    finally:
        close = getattr(found, "close", None)
        if close:
            close()
    headers = {}
    if len(rows) > search.limit:
        rows = rows[: search.limit]
        headers["Warning"] = '299 pacsvault "There are additional results that can be requested"'
    return streamed(_stream(rows, search, base), DICOM_JSON, headers)
