"""STOW-RS (PS3.18 section 10.5): storing instances sent as multipart/related.

Each ``application/dicom`` part streams into the blob store's staging area as it
arrives (never whole in memory) and is checked by the same Archive path as a
C-STORE: validation, duplicate policy, durability, audit. Nothing is stored until
the whole body has arrived and parsed: a body cut short or malformed stores nothing.
The answer lists stored and failed instances with their reasons: 200 when all were
stored, 202 when some failed or came with a warning, 409 when none was stored, 503
(with Retry-After) when none was stored only for want of resources (0xA700: index or
object storage unreachable, disk full).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pacsvault.dicom import status as st
from pacsvault.dicom.json_model import element
from pacsvault.dicom.part10 import CutOff, NotDicom, read_file_meta
from pacsvault.security.identity import Principal
from pacsvault.storage.archive import Archive, Incoming, StoreResult, StoreStatus
from pacsvault.web.dicomweb.multipart import (
    Data,
    End,
    Headers,
    MultipartError,
    MultipartReader,
    boundary_of,
    type_of,
)

HEAD_LIMIT = 256 * 1024  # a part's file meta must fit in its first bytes


@dataclass
class Part:
    """One application/dicom part being received."""

    archive: Archive
    principal: Principal
    head: bytearray = field(default_factory=bytearray)
    incoming: Incoming | None = None
    ts: str = ""
    sop_class: str = ""
    sop_instance: str = ""
    problem: str | None = None  # why it cannot be stored (refused at the end)

    def write(self, data: bytes) -> None:
        if self.problem is not None:
            return
        if self.incoming is not None:
            self.incoming.write(data)
            return
        self.head += data
        if len(self.head) < 144:
            return
        try:
            self.ts, self.sop_class, self.sop_instance, offset = read_file_meta(bytes(self.head))
        except CutOff:
            if len(self.head) > HEAD_LIMIT:
                self.problem = "not a DICOM Part-10 object (file meta information too long)"
                self.head = bytearray()
            return  # wait for the rest of the file meta information
        except NotDicom as exc:
            self.problem = f"not a DICOM Part-10 object ({exc})"
            self.head = bytearray()
            return
        self.incoming = self.archive.receive(self.principal, self.ts,
                                             sop_class=self.sop_class,
                                             sop_instance=self.sop_instance)  # fmt: skip
        rest = bytes(self.head[offset:])
        self.head = bytearray()
        self.incoming.write(rest)

    def ended(self) -> None:
        if self.problem is None and self.incoming is None:
            self.problem = "not a DICOM Part-10 object (too short)"

    def store(self, study: str | None) -> StoreResult:
        if self.problem is not None or self.incoming is None:
            return StoreResult(StoreStatus.INVALID, self.problem or "empty part")
        return self.archive.store_incoming(self.principal, self.incoming, self.ts,
                                           expected_study=study)  # fmt: skip

    def discard(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()


async def stow(
    request: Request,
    archive: Archive,
    principal: Principal,
    study: str | None,
    base: str,
    max_body: int,
) -> JSONResponse:
    """Receive, then store, every part of a STOW-RS request (see the module docstring)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise HTTPException(415, 'send multipart/related; type="application/dicom"')
    if type_of(content_type) not in (None, "application/dicom"):
        raise HTTPException(415, 'only parts of type "application/dicom" are accepted')
    try:
        reader = MultipartReader(boundary_of(content_type))
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from None
    parts: list[Part] = []
    current: Part | None = None
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise HTTPException(413, f"request body larger than {max_body} bytes")
            for event in reader.feed(chunk):
                if isinstance(event, Headers):
                    current = Part(archive, principal)
                    parts.append(current)
                    part_type = event.values.get("content-type", "application/dicom")
                    if not part_type.lower().startswith("application/dicom"):
                        current.problem = "a part that is not application/dicom"
                elif isinstance(event, Data):
                    assert current is not None
                    await run_in_threadpool(current.write, event.data)
                elif isinstance(event, End):
                    assert current is not None
                    current.ended()
        reader.finish()
        if not parts:
            raise HTTPException(400, "the request holds no parts")
    except MultipartError as exc:
        for part in parts:
            part.discard()
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
    except BaseException:
        for part in parts:
            part.discard()
        raise
    results = [await run_in_threadpool(part.store, study) for part in parts]
    return _answer(parts, results, study, base)


def _answer(
    parts: list[Part], results: list[StoreResult], study: str | None, base: str
) -> JSONResponse:
    stored, failed, warned = [], [], False
    for part, result in zip(parts, results, strict=True):
        code, _comment = result.dicom_status()
        sop_class = part.sop_class or None
        sop_instance = result.sop_instance_uid or part.sop_instance or None
        item: dict[str, Any] = {
            "00081150": element("UI", sop_class),
            "00081155": element("UI", sop_instance),
        }
        if result.status.ok or st.is_warning(code):
            item["00081190"] = element(
                "UR",
                f"{base}/studies/{result.study_instance_uid}/series/"
                f"{result.series_instance_uid}/instances/{sop_instance}",
            )
            if code != st.SUCCESS:
                item["00081196"] = element("US", code)  # WarningReason
                warned = True
            stored.append(item)
        else:
            item["00081197"] = element("US", code)  # FailureReason
            failed.append(item)
    body: dict[str, Any] = {}
    if study:
        body["00081190"] = element("UR", f"{base}/studies/{study}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": stored}
    status = 409 if not stored else 202 if failed or warned else 200
    headers = None
    if not stored and failed and all(f["00081197"]["Value"] == [st.OUT_OF_RESOURCES]
                                     for f in failed):  # fmt: skip
        # Nothing stored, only for want of resources (the index or object storage is
        # unreachable, the disk is full): the sender should retry, not give up.
        status, headers = 503, {"Retry-After": "30"}
    return JSONResponse(body, status_code=status, media_type="application/dicom+json",
                        headers=headers)  # fmt: skip
