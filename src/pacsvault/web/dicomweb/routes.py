"""The DICOMweb routes (PS3.18): QIDO-RS searches, WADO-RS retrieves, STOW-RS stores.

Every route takes the caller's principal, checks its permission through the policy
and reads or writes through the Archive, which applies the caller's scope and audits.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pacsvault.config import WebSettings
from pacsvault.dicom.attributes import Level
from pacsvault.security.identity import Permission, Principal
from pacsvault.storage.archive import Archive
from pacsvault.web.deps import DICOMWEB, Caller, dicomweb_base, require, site_of
from pacsvault.web.dicomweb import qido, wado
from pacsvault.web.dicomweb.stow import stow

router = APIRouter(prefix=DICOMWEB)


def archive(request: Request) -> Archive:
    return site_of(request).archive


def web(request: Request) -> WebSettings:
    return site_of(request).settings.web


# -- QIDO-RS ------------------------------------------------------------------------


def search(request: Request, who: Principal, level: Level, fixed: dict[str, str]) -> Response:
    require(request, who, Permission.QUERY)
    settings = web(request)
    s = qido.Search(request, level, fixed, settings.query_page_size, settings.max_query_results)
    found = archive(request).find(
        who, level, s.conditions, keys=list(s.returned), limit=s.limit + 1, offset=s.offset
    )
    return qido.answer(found, s, dicomweb_base(request))


@router.get("/studies", tags=["QIDO-RS"])
def search_studies(request: Request, who: Caller) -> Response:
    """Search for studies."""
    return search(request, who, Level.STUDY, {})


@router.get("/series", tags=["QIDO-RS"])
def search_all_series(request: Request, who: Caller) -> Response:
    """Search for series."""
    return search(request, who, Level.SERIES, {})


@router.get("/instances", tags=["QIDO-RS"])
def search_all_instances(request: Request, who: Caller) -> Response:
    """Search for instances."""
    return search(request, who, Level.IMAGE, {})


@router.get("/studies/{study}/series", tags=["QIDO-RS"])
def search_series(request: Request, study: str, who: Caller) -> Response:
    """Search for the series of a study."""
    fixed = {"StudyInstanceUID": qido.check_uid(study, "the study UID")}
    return search(request, who, Level.SERIES, fixed)


@router.get("/studies/{study}/instances", tags=["QIDO-RS"])
def search_study_instances(request: Request, study: str, who: Caller) -> Response:
    """Search for the instances of a study."""
    fixed = {"StudyInstanceUID": qido.check_uid(study, "the study UID")}
    return search(request, who, Level.IMAGE, fixed)


@router.get("/studies/{study}/series/{series}/instances", tags=["QIDO-RS"])
def search_series_instances(request: Request, study: str, series: str, who: Caller) -> Response:
    """Search for the instances of a series."""
    fixed = {"StudyInstanceUID": qido.check_uid(study, "the study UID"),
             "SeriesInstanceUID": qido.check_uid(series, "the series UID")}  # fmt: skip
    return search(request, who, Level.IMAGE, fixed)


# -- WADO-RS ------------------------------------------------------------------------


def retrieve(
    request: Request,
    who: Principal,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    require(request, who, Permission.RETRIEVE)
    wanted = wado.dicom_syntax(request.headers.get("accept"))
    level, conds = wado.conditions_for(
        qido.check_uid(study, "the study UID"),
        qido.check_uid(series, "the series UID") if series else None,
        qido.check_uid(instance, "the instance UID") if instance else None,
    )
    found = wado.locate(archive(request), who, level, conds)
    return wado.instance_parts(archive(request), who, found, wanted)


@router.get("/studies/{study}", tags=["WADO-RS"])
def retrieve_study(request: Request, study: str, who: Caller) -> Response:
    """Retrieve a study's instances (multipart/related; type="application/dicom")."""
    return retrieve(request, who, study)


@router.get("/studies/{study}/series/{series}", tags=["WADO-RS"])
def retrieve_series(request: Request, study: str, series: str, who: Caller) -> Response:
    """Retrieve a series' instances."""
    return retrieve(request, who, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}",
         tags=["WADO-RS"])  # fmt: skip
def retrieve_instance(
    request: Request, study: str, series: str, instance: str, who: Caller
) -> Response:
    """Retrieve one instance."""
    return retrieve(request, who, study, series, instance)


def metadata(
    request: Request,
    who: Principal,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    require(request, who, Permission.RETRIEVE)
    level, conds = wado.conditions_for(
        qido.check_uid(study, "the study UID"),
        qido.check_uid(series, "the series UID") if series else None,
        qido.check_uid(instance, "the instance UID") if instance else None,
    )
    found = wado.locate(archive(request), who, level, conds)
    out, sent = [], {}
    try:
        for inst in found:
            out.append(wado.instance_metadata(archive(request), who, inst, dicomweb_base(request)))
            slot = sent.setdefault((inst.study_instance_uid, inst.patient_id), [0, 0, 0])
            slot[0] += 1
    finally:
        archive(request).retrieved(who, {k: tuple(v) for k, v in sent.items()})  # type: ignore[misc]
    return JSONResponse(out, media_type=qido.DICOM_JSON)


@router.get("/studies/{study}/metadata", tags=["WADO-RS"])
def study_metadata(request: Request, study: str, who: Caller) -> Response:
    """The metadata of a study's instances (DICOM JSON, bulk data by reference)."""
    return metadata(request, who, study)


@router.get("/studies/{study}/series/{series}/metadata", tags=["WADO-RS"])
def series_metadata(request: Request, study: str, series: str, who: Caller) -> Response:
    """The metadata of a series' instances."""
    return metadata(request, who, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
         tags=["WADO-RS"])  # fmt: skip
def instance_metadata(
    request: Request, study: str, series: str, instance: str, who: Caller
) -> Response:
    """The metadata of one instance."""
    return metadata(request, who, study, series, instance)


# -- STOW-RS ------------------------------------------------------------------------


@router.post("/studies", tags=["STOW-RS"])
async def store(request: Request, who: Caller) -> Response:
    """Store instances (multipart/related; type="application/dicom")."""
    require(request, who, Permission.STORE)
    limit = web(request).max_body_bytes
    return await stow(request, archive(request), who, None, dicomweb_base(request), limit)


@router.post("/studies/{study}", tags=["STOW-RS"])
async def store_in_study(request: Request, study: str, who: Caller) -> Response:
    """Store instances of one study; others in the request are refused."""
    require(request, who, Permission.STORE)
    uid = qido.check_uid(study, "the study UID")
    limit = web(request).max_body_bytes
    return await stow(request, archive(request), who, uid, dicomweb_base(request), limit)
