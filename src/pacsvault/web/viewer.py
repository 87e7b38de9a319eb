"""The viewer's pages and static files.

- ``/``: the study list; ``/study/{uid}``: a study's images. Both need a session (or
  a token): without one, a 303 to ``/login?next=...``. The pages are markup and
  script references only, never patient data: the scripts fetch studies, metadata
  and pixels through DICOMweb with the session cookie, so every read is authorized,
  scoped and audited by the routes that serve it. ``/study/{uid}`` answers the
  not-found page (404) for a study that does not exist or that the caller may not see.
- ``/static/<hash>/<file>``: the scripts, styles and a tag dictionary (from
  pydicom's), served without a session because they hold no data, cached for a year
  under a path naming their content (see :mod:`pacsvault.web.assets`).
"""

from __future__ import annotations

import json
from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pacsvault.dicom.attributes import BY_KEYWORD, Level
from pacsvault.dicom.matching import Exact
from pacsvault.dicom.uids import is_safe_uid
from pacsvault.security.identity import Principal
from pacsvault.security.policy import NotPermitted
from pacsvault.web import assets, pages
from pacsvault.web.auth import Unauthorized
from pacsvault.web.deps import current_principal, login_url, site_of

router = APIRouter(include_in_schema=False)

IMMUTABLE = "public, max-age=31536000, immutable"
NOT_FOUND = (
    "Study not found",
    "There is no such study, or you may not see it. Go back to the study list.",
)


def _principal(request: Request) -> Principal | None:
    try:
        return current_principal(request)
    except Unauthorized:
        return None


@router.get("/", response_class=HTMLResponse)
def study_list(request: Request) -> Response:
    """The study list (opens on the most recent studies)."""
    if _principal(request) is None:
        return RedirectResponse(login_url(request), status_code=303)
    return HTMLResponse(pages.viewer("list.html"))


@router.get("/study/{study}", response_class=HTMLResponse)
def study_page(request: Request, study: str) -> Response:
    """A study's images; the not-found page when the caller sees no such study."""
    who = _principal(request)
    if who is None:
        return RedirectResponse(login_url(request), status_code=303)
    if not is_safe_uid(study):
        return HTMLResponse(pages.message(*NOT_FOUND), status_code=404)
    try:
        found = site_of(request).archive.find(
            who, Level.STUDY, [(BY_KEYWORD["StudyInstanceUID"], Exact(study))],
            keys=["StudyInstanceUID"], limit=1,
        )  # fmt: skip
    except NotPermitted:
        return HTMLResponse(pages.message("Not permitted", "Your role may not read studies."),
                            status_code=403)  # fmt: skip
    try:
        exists = next(iter(found), None) is not None
    finally:
        close = getattr(found, "close", None)
        if close:
            close()
    if not exists:
        return HTMLResponse(pages.message(*NOT_FOUND), status_code=404)
    return HTMLResponse(pages.viewer("study.html"))


@router.get("/static/{version}/dictionary.json")
def dictionary(version: str) -> Response:
    """Tag -> [keyword, name] of pydicom's data dictionary, for the tag browser."""
    if version != assets.version():
        return _missing()
    return Response(_dictionary(), media_type="application/json",
                    headers={"Cache-Control": IMMUTABLE})  # fmt: skip


@cache
def _dictionary() -> bytes:
    from pydicom.datadict import DicomDictionary

    table = {f"{tag:08X}": [entry[4], entry[2]] for tag, entry in DicomDictionary.items()}
    return json.dumps(table, separators=(",", ":")).encode()


@router.get("/static/{version}/{name:path}")
def static_file(version: str, name: str) -> Response:
    """A static file of the current version (another version: 404)."""
    body = assets.files().get(name) if version == assets.version() else None
    if body is None:
        return _missing()
    media = assets.MEDIA_TYPES["." + name.rsplit(".", 1)[-1]]
    return Response(body, media_type=media, headers={"Cache-Control": IMMUTABLE})


def _missing() -> Response:
    return Response("not found", status_code=404, media_type="text/plain",
                    headers={"Cache-Control": "no-store"})  # fmt: skip
