"""Downloads for roles allowed to export: a study as a zip of its DICOM files.

``GET /api/studies/{uid}/archive.zip`` streams a ZIP (stored entries, ZIP64 where
needed, each entry's sizes in a data descriptor after it) of the study's Part-10
objects exactly as the archive holds them, one at a time in 1 MiB chunks, so memory
does not grow with the study. It goes through ``Archive.export`` with the caller's
principal: the export permission is checked (a refusal is a 403, audited), the
caller's scope applied (a study the caller may not see is a 404, like one that does
not exist), and the download is audited as an export of the study when it starts
and, with what was sent, when it ends.
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from pacsvault.security.identity import Principal
from pacsvault.storage.archive import Archive
from pacsvault.storage.index import StoredInstance
from pacsvault.web.deps import Caller, site_of
from pacsvault.web.dicomweb import wado
from pacsvault.web.dicomweb.qido import check_uid
from pacsvault.web.streams import streamed

log = logging.getLogger("pacsvault.web")

router = APIRouter(prefix="/api", tags=["export"])

CHUNK = 1024 * 1024
ZIP = "zip"


class _Sink:
    """A write-only stream that keeps what zipfile writes until it is taken."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def entry_name(inst: StoredInstance) -> str:
    """Where an instance goes in the zip: UIDs only (no patient data in names)."""
    return f"{inst.study_instance_uid}/{inst.series_instance_uid}/{inst.sop_instance_uid}.dcm"


def zip_stream(
    archive: Archive, who: Principal, found: list[StoredInstance]
) -> Iterator[bytes]:
    """The zip of *found*, in chunks; the export's end is recorded when it stops."""
    sent: dict[tuple[str, str], list[int]] = {}
    sink = _Sink()
    slot = [0, 0, 0]
    stamp = time.localtime()[:6]
    try:
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
            for inst in found:
                slot = sent.setdefault((inst.study_instance_uid, inst.patient_id), [0, 0, 0])
                try:
                    f = archive.open(who, inst)
                except OSError as exc:
                    log.error("stored object could not be exported: %s", type(exc).__name__)
                    slot[1] += 1
                    continue
                info = zipfile.ZipInfo(entry_name(inst), stamp)  # type: ignore[arg-type]
                with f, zf.open(info, "w", force_zip64=inst.size >= 2**31) as out:
                    while chunk := f.read(CHUNK):
                        out.write(chunk)
                        yield sink.take()
                slot[0] += 1
                yield sink.take()
        yield sink.take()
    except OSError as exc:  # a stored object cut short: the download stops incomplete
        log.error("export stopped: %s", type(exc).__name__)
        slot[1] += 1
    finally:
        archive.exported(who, {k: (c, f, w) for k, (c, f, w) in sent.items()}, what=ZIP)


@router.get("/studies/{study}/archive.zip")
def study_zip(request: Request, study: str, who: Caller) -> Response:
    """The study's DICOM files as a zip (export permission; audited as an export)."""
    uid = check_uid(study, "the study UID")
    archive = site_of(request).archive
    level, conds = wado.conditions_for(uid)
    found = archive.export(who, level, conds, what=ZIP)
    if not found:
        raise HTTPException(404, "no such study")
    return streamed(
        zip_stream(archive, who, found),
        "application/zip",
        {"Content-Disposition": f'attachment; filename="study-{uid}.zip"'},
    )
