"""WADO-RS (PS3.18 section 10.4): studies, series and instances, and their metadata.

Instances stream from the blob store as the Part-10 objects they are stored as, one
part of a ``multipart/related`` response each, never held whole; only a change of
transfer syntax (asked for, and possible) goes through memory. Every retrieve is an
Archive call with the caller's principal: scoped, audited when it starts and, with
what was actually sent, when it ends.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset

from pacsvault.dicom.attributes import BY_KEYWORD, Level
from pacsvault.dicom.matching import Condition, Exact
from pacsvault.dicom.part10 import meta_length, read_index_dataset
from pacsvault.dicom.transcode import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    UNCOMPRESSED,
    TranscodeError,
    can_transcode,
    transcode,
)
from pacsvault.security.identity import Principal
from pacsvault.storage.archive import Archive
from pacsvault.storage.index import StoredInstance
from pacsvault.web.streams import WRITE_SIZE, Piece, Pieces, streamed

log = logging.getLogger("pacsvault.web")

CHUNK = 1024 * 1024
AVAILABLE_TRANSFER_SYNTAX = "00083002"
BULK_THRESHOLD = 1024
_BULK_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))


def conditions_for(
    study: str, series: str | None = None, instance: str | None = None
) -> tuple[Level, list[tuple[Any, Condition]]]:
    """The level and exact-UID conditions that select a study, series or instance."""
    conds: list[tuple[Any, Condition]] = [(BY_KEYWORD["StudyInstanceUID"], Exact(study))]
    level = Level.STUDY
    if series is not None:
        conds.append((BY_KEYWORD["SeriesInstanceUID"], Exact(series)))
        level = Level.SERIES
    if instance is not None:
        conds.append((BY_KEYWORD["SOPInstanceUID"], Exact(instance)))
        level = Level.IMAGE
    return level, conds


# -- Accept -------------------------------------------------------------------------------

_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*("([^"]*)"|[^;,\s]*)')


@dataclass(frozen=True)
class Wanted:
    """A parsed media range: type, its ``type=`` and ``transfer-syntax=`` parameters, q."""

    media: str
    part_type: str | None
    transfer_syntax: str | None
    q: float


def parse_accept(header: str | None) -> list[Wanted]:
    """The media ranges of an Accept header, most preferred first (empty: ``*/*``)."""
    if not header or not header.strip():
        return [Wanted("*/*", None, None, 1.0)]
    out = []
    for item in _split_ranges(header):
        media, _, rest = item.partition(";")
        params: dict[str, str] = {}
        for m in _PARAM.finditer(";" + rest):
            params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        out.append(Wanted(media.strip().lower(), params.get("type", "").lower() or None,
                          params.get("transfer-syntax"), q))  # fmt: skip
    return sorted((w for w in out if w.q > 0), key=lambda w: -w.q)


def _split_ranges(header: str) -> list[str]:
    """Split on commas that are not inside quotes."""
    parts, current, quoted = [], [], False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def dicom_syntax(header: str | None) -> str:
    """The transfer syntax asked for a multipart/related application/dicom retrieve.

    ``*`` means the stored one; none means Explicit VR Little Endian (PS3.18 8.7.3.5),
    which :func:`instance_parts` relaxes to the stored syntax when it cannot convert.
    Raises 406 when no acceptable media type is one we serve.
    """
    for w in parse_accept(header):
        if w.media in ("*/*", "multipart/*") or (
            w.media == "multipart/related" and w.part_type in (None, "application/dicom")
        ) or w.media == "application/dicom":  # fmt: skip
            return w.transfer_syntax or ""
    raise HTTPException(406, "this resource is served as multipart/related; "
                             'type="application/dicom"')  # fmt: skip


# -- retrieving instances -----------------------------------------------------------------


def locate(
    archive: Archive, principal: Principal, level: Level, conds: list[Any]
) -> list[StoredInstance]:
    """The instances to send: scoped and audited; 404 when there are none (or none the
    caller may see: both answer alike)."""
    found = archive.retrieve(principal, level, conds)
    if not found:
        raise HTTPException(404, "no such study, series or instance")
    return found


def _part_syntax(inst: StoredInstance, wanted: str) -> tuple[str, bool]:
    """The syntax a part goes out in, and whether that needs converting."""
    stored = inst.transfer_syntax_uid
    if wanted in ("*", stored):
        return stored, False
    if not wanted:  # the default: Explicit VR Little Endian where we can convert
        target = EXPLICIT_VR_LITTLE_ENDIAN
        return (target, True) if stored in UNCOMPRESSED else (stored, False)
    if can_transcode(stored, wanted):
        return wanted, True
    raise HTTPException(406, f"cannot provide transfer syntax {wanted[:64]}")


class PartUnreadable(Exception):
    """A stored object could not be read while its answer, of announced length, was
    being sent: the answer is cut short (or, before its first byte, is a 500)."""


def instance_parts(
    archive: Archive,
    principal: Principal,
    instances: list[StoredInstance],
    wanted: str,
) -> Response:
    """A multipart/related response of the instances' Part-10 objects, streamed.

    Sent as stored, each object is read straight into the answer's pieces and the
    answer's length is announced (from the index's sizes): an object that cannot be
    read then cuts it short, which any client detects. Converted, an object that
    cannot be converted is left out (and counted as failed) and the answer is chunked.
    """
    plan = [(inst, *_part_syntax(inst, wanted)) for inst in instances]
    boundary = secrets.token_hex(16)
    heads = [(f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax="
              f"{syntax}\r\n\r\n").encode() for _, syntax, _ in plan]  # fmt: skip
    closing = f"--{boundary}--\r\n".encode()
    as_stored = not any(convert for _, _, convert in plan)

    length = None
    if as_stored:
        parts = zip(heads, plan, strict=True)
        length = sum(len(head) + inst.size + 2 for head, (inst, _, _) in parts) + len(closing)

    def body() -> Iterator[Piece]:
        sent: dict[tuple[str, str], list[int]] = {}
        out = Pieces(min(length, WRITE_SIZE) if length else WRITE_SIZE)
        try:
            for (inst, syntax, convert), head in zip(plan, heads, strict=True):
                slot = sent.setdefault((inst.study_instance_uid, inst.patient_id), [0, 0, 0])
                if as_stored:
                    try:
                        with archive.open(principal, inst) as f:
                            yield from out.add(head)
                            yield from out.read(f, inst.size)
                    except (OSError, EOFError) as exc:
                        log.error("stored object could not be sent: %s", type(exc).__name__)
                        slot[1] += 1
                        raise PartUnreadable from None  # no file name in what is raised
                else:
                    try:
                        chunks = _object(archive, principal, inst, syntax if convert else None)
                        first = next(chunks)
                    except (OSError, TranscodeError, ValueError) as exc:
                        log.error("stored object could not be sent: %s", type(exc).__name__)
                        slot[1] += 1
                        continue
                    for chunk in itertools.chain((head, first), chunks):
                        yield from out.add(chunk)
                yield from out.add(b"\r\n")
                slot[0] += 1
            yield from out.add(closing)
            yield from out.rest()
        finally:
            outcome = {k: (c, f, w) for k, (c, f, w) in sent.items()}
            archive.retrieved(principal, outcome)

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    try:
        return streamed(body(), media, length=length)
    except PartUnreadable:
        raise HTTPException(500, "a stored object cannot be read") from None


def _object(
    archive: Archive, principal: Principal, inst: StoredInstance, convert_to: str | None
) -> Iterator[bytes]:
    """The Part-10 bytes of a stored instance, in chunks (converted: in one piece)."""
    with archive.open(principal, inst) as f:
        if convert_to is None:
            while chunk := f.read(CHUNK):
                yield chunk
            return
        head = f.read(144)
        offset = meta_length(head)
        f.seek(offset)
        data = transcode(f, inst.transfer_syntax_uid, convert_to)
    from pacsvault.dicom.part10 import file_header

    yield file_header(inst.sop_class_uid, inst.sop_instance_uid, convert_to, None) + data


# -- metadata -----------------------------------------------------------------------------


def instance_metadata(
    archive: Archive, principal: Principal, inst: StoredInstance, base: str
) -> dict[str, Any]:
    """The DICOM JSON of one instance: every element but bulk data, which is a
    BulkDataURI (binary values over 1 KiB, and the pixel data)."""
    url = (f"{base}/studies/{inst.study_instance_uid}/series/{inst.series_instance_uid}"
           f"/instances/{inst.sop_instance_uid}")  # fmt: skip
    with archive.open(principal, inst) as f:
        offset = meta_length(f.read(144))
        f.seek(offset)
        ds = read_index_dataset(f, inst.transfer_syntax_uid)  # up to the pixel data
    out = dataset_json(ds, f"{url}/bulk")
    # The stored transfer syntax (PS3.18 table 10.6.3-5), so that a viewer knows which
    # frames come decompressed (YBR as RGB, interleaved) and which as stored.
    out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [inst.transfer_syntax_uid]}
    if "Rows" in ds:  # an image: its pixel data is bulk data
        compressed = inst.transfer_syntax_uid not in UNCOMPRESSED
        vr = "OB" if compressed or int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/bulk/7FE00010"}
    return dict(sorted(out.items()))


def dataset_json(ds: Dataset, bulk_base: str) -> dict[str, Any]:
    """DICOM JSON of *ds*, top-level binary values over the threshold as BulkDataURIs.

    Deferred (unread) values are never read: their length decides.
    """
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)  # never re-read a skipped value
        key = f"{int(tag):08X}"
        if int(tag) >> 16 == 0x0002:
            continue
        if isinstance(raw, RawDataElement):
            vr = raw.VR or "UN"
            if raw.value is None or (vr in _BULK_VRS and raw.length > BULK_THRESHOLD):
                out[key] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{key}"}
                continue
            elem: DataElement = convert_raw_data_element(raw, ds=ds)
        else:
            elem = raw
        if elem.VR in _BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            out[key] = {"vr": elem.VR, "BulkDataURI": f"{bulk_base}/{key}"}
            continue
        try:
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
        except Exception:  # an unreadable value is shown without its value, not dropped
            out[key] = {"vr": elem.VR}
    return out
