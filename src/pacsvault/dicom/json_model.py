"""The DICOM JSON model (PS3.18 F.2) for index rows: what QIDO-RS answers with.

Built straight from the index's text values (no pydicom Dataset on this path): a
person name becomes ``{"Alphabetic": ...}``, integer strings become numbers,
backslash-separated values become lists, an unknown value is an attribute with its
VR and no ``Value``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pacsvault.dicom.attributes import IndexAttribute

_INT_VRS = frozenset(("IS", "US", "UL", "SS", "SL", "UV", "SV"))
_FLOAT_VRS = frozenset(("DS", "FL", "FD"))


def tag_key(tag: int) -> str:
    """The JSON key of a tag: eight upper-case hex digits."""
    return f"{tag:08X}"


def element(vr: str, text: str | int | None) -> dict[str, Any]:
    """One attribute's JSON object from its index text."""
    if text is None or text == "":
        return {"vr": vr}
    if isinstance(text, int):
        return {"vr": vr, "Value": [text]}
    values = text.split("\\")
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} if v else {} for v in values]}
    if vr in _INT_VRS:
        return {"vr": vr, "Value": [_number(v, int) for v in values]}
    if vr in _FLOAT_VRS:
        return {"vr": vr, "Value": [_number(v, float) for v in values]}
    return {"vr": vr, "Value": values}


def _number(text: str, kind: type) -> int | float | str:
    try:
        return kind(text.strip())  # type: ignore[no-any-return]
    except ValueError:
        return text  # a malformed stored value is shown as it is, not dropped


def row_json(
    row: Mapping[str, Any], attributes: Iterable[IndexAttribute], extra: Mapping[int, Any] = {}
) -> dict[str, Any]:
    """The JSON object of one index row, with *attributes* and *extra* (tag -> element)."""
    out: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
    for attr in attributes:
        out[tag_key(attr.tag)] = element(attr.vr, row.get(attr.column))
    for tag, value in extra.items():
        out[tag_key(tag)] = value
    return dict(sorted(out.items()))
