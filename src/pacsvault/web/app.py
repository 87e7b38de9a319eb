"""The HTTPS application: login, DICOMweb at /dicom-web, the admin API at /api.

One :class:`~pacsvault.site.Site` serves it, as it serves DIMSE: the same policy
authenticates every request into a Principal (or answers 401), the same Archive
reads and writes patient data within the principal's scope and audits it. Only
``/healthz`` and the login page answer without credentials.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pacsvault import __version__
from pacsvault.dicom.attributes import Level
from pacsvault.security.audit import AuditUnavailable
from pacsvault.security.identity import Permission, Principal, Refusal
from pacsvault.security.policy import NotPermitted
from pacsvault.site import Site
from pacsvault.web import pages
from pacsvault.web.auth import SESSION_COOKIE, Sessions, Unauthorized, authenticate, client_address
from pacsvault.web.dicomweb import qido, wado
from pacsvault.web.dicomweb.stow import stow
from pacsvault.web.middleware import install_middleware

log = logging.getLogger("pacsvault.web")

DICOMWEB = "/dicom-web"


def current_principal(request: Request) -> Principal:
    """The request's principal (a FastAPI dependency): 401 or 403 when there is none."""
    state = request.app.state
    return authenticate(request, state.site.policy, state.sessions)


Caller = Annotated[Principal, Depends(current_principal)]


def create_app(site: Site) -> FastAPI:
    """The ASGI application for *site*."""
    web = site.settings.web
    app = FastAPI(title="pacsvault", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None)  # fmt: skip
    sessions = Sessions(site.web_sessions, web.session_absolute)
    archive = site.archive
    app.state.site = site
    app.state.sessions = sessions

    def require(who: Principal, permission: Permission) -> None:
        if not site.policy.authorize(who, permission):
            site.policy.refuse(who.actor, _action_for(permission), f"{permission.value} not "
                               "granted")  # fmt: skip
            raise HTTPException(403, f"{permission.value} not permitted")

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + DICOMWEB

    @app.exception_handler(NotPermitted)
    async def _not_permitted(_request: Request, exc: NotPermitted) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(AuditUnavailable)
    async def _no_audit(_request: Request, _exc: AuditUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "audit trail unavailable: try again later"},
                            status_code=503, headers={"Retry-After": "30"})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid request: {exc.errors()[:3]}"}, status_code=400)

    # -- public: health and login -----------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_page() -> HTMLResponse:
        return HTMLResponse(pages.LOGIN)

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=256)],
        code: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        address = client_address(request)
        outcome = site.policy.authenticate_login(username, password, code or None, address)
        if isinstance(outcome, Refusal):
            raise HTTPException(401, "wrong user name, password or code, or locked out")
        new = sessions.start(outcome, address)
        wants_json = "application/json" in request.headers.get("accept", "")
        response: Response = (
            JSONResponse({"user": username, "csrf": new.csrf})
            if wants_json
            else RedirectResponse("/", status_code=303)
        )
        response.set_cookie(SESSION_COOKIE, new.secret, secure=True, httponly=True,
                            samesite="strict", path="/")  # fmt: skip
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, who: Caller) -> Response:
        secret = request.cookies.get(SESSION_COOKIE)
        if secret:
            sessions.end(secret)
        response = JSONResponse({"detail": "logged out"})
        response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="strict")
        return response

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def home(request: Request) -> Response:
        try:
            who = current_principal(request)
        except Unauthorized:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(pages.home(who.actor.name))

    # -- the admin API ----------------------------------------------------------------------

    @app.get("/api/session", tags=["session"])
    def session_info(request: Request, who: Caller) -> dict[str, Any]:
        """Who is logged in, what it may do, and a fresh CSRF token for a session."""
        secret = request.cookies.get(SESSION_COOKIE)
        csrf = sessions.new_csrf(secret) if secret else None
        return {
            "user": who.actor.name,
            "role": who.user.role.value if who.user else None,
            "permissions": sorted(p.value for p in who.permissions),
            "csrf": csrf,
        }

    @app.get("/api/openapi.json", tags=["session"])
    def openapi(who: Caller) -> dict[str, Any]:
        """This API's OpenAPI document (for authenticated callers only)."""
        return app.openapi()

    # -- QIDO-RS ------------------------------------------------------------------------

    def search(
        request: Request, who: Principal, level: Level, fixed: dict[str, str]
    ) -> Response:
        require(who, Permission.QUERY)
        s = qido.Search(request, level, fixed, web.query_page_size, web.max_query_results)
        found = archive.find(who, level, s.conditions, keys=list(s.returned), limit=s.limit + 1,
                             offset=s.offset)  # fmt: skip
        return qido.answer(found, s, base(request))

    @app.get(DICOMWEB + "/studies", tags=["QIDO-RS"])
    def search_studies(request: Request, who: Caller) -> Response:
        """Search for studies."""
        return search(request, who, Level.STUDY, {})

    @app.get(DICOMWEB + "/series", tags=["QIDO-RS"])
    def search_all_series(request: Request, who: Caller) -> Response:
        """Search for series."""
        return search(request, who, Level.SERIES, {})

    @app.get(DICOMWEB + "/instances", tags=["QIDO-RS"])
    def search_all_instances(request: Request, who: Caller) -> Response:
        """Search for instances."""
        return search(request, who, Level.IMAGE, {})

    @app.get(DICOMWEB + "/studies/{study}/series", tags=["QIDO-RS"])
    def search_series(request: Request, study: str, who: Caller) -> Response:
        """Search for the series of a study."""
        fixed = {"StudyInstanceUID": qido.check_uid(study, "the study UID")}
        return search(request, who, Level.SERIES, fixed)

    @app.get(DICOMWEB + "/studies/{study}/instances", tags=["QIDO-RS"])
    def search_study_instances(request: Request, study: str, who: Caller) -> Response:
        """Search for the instances of a study."""
        fixed = {"StudyInstanceUID": qido.check_uid(study, "the study UID")}
        return search(request, who, Level.IMAGE, fixed)

    @app.get(DICOMWEB + "/studies/{study}/series/{series}/instances", tags=["QIDO-RS"])
    def search_series_instances(
        request: Request, study: str, series: str, who: Caller
    ) -> Response:
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
        require(who, Permission.RETRIEVE)
        wanted = wado.dicom_syntax(request.headers.get("accept"))
        level, conds = wado.conditions_for(
            qido.check_uid(study, "the study UID"),
            qido.check_uid(series, "the series UID") if series else None,
            qido.check_uid(instance, "the instance UID") if instance else None,
        )
        found = wado.locate(archive, who, level, conds)
        return wado.instance_parts(archive, who, found, wanted)

    @app.get(DICOMWEB + "/studies/{study}", tags=["WADO-RS"])
    def retrieve_study(request: Request, study: str, who: Caller) -> Response:
        """Retrieve a study's instances (multipart/related; type="application/dicom")."""
        return retrieve(request, who, study)

    @app.get(DICOMWEB + "/studies/{study}/series/{series}", tags=["WADO-RS"])
    def retrieve_series(request: Request, study: str, series: str, who: Caller) -> Response:
        """Retrieve a series' instances."""
        return retrieve(request, who, study, series)

    @app.get(DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}",
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
        require(who, Permission.RETRIEVE)
        level, conds = wado.conditions_for(
            qido.check_uid(study, "the study UID"),
            qido.check_uid(series, "the series UID") if series else None,
            qido.check_uid(instance, "the instance UID") if instance else None,
        )
        found = wado.locate(archive, who, level, conds)
        out, sent = [], {}
        try:
            for inst in found:
                out.append(wado.instance_metadata(archive, who, inst, base(request)))
                slot = sent.setdefault((inst.study_instance_uid, inst.patient_id), [0, 0, 0])
                slot[0] += 1
        finally:
            archive.retrieved(who, {k: tuple(v) for k, v in sent.items()})  # type: ignore[misc]
        return JSONResponse(out, media_type=qido.DICOM_JSON)

    @app.get(DICOMWEB + "/studies/{study}/metadata", tags=["WADO-RS"])
    def study_metadata(request: Request, study: str, who: Caller) -> Response:
        """The metadata of a study's instances (DICOM JSON, bulk data by reference)."""
        return metadata(request, who, study)

    @app.get(DICOMWEB + "/studies/{study}/series/{series}/metadata", tags=["WADO-RS"])
    def series_metadata(request: Request, study: str, series: str, who: Caller) -> Response:
        """The metadata of a series' instances."""
        return metadata(request, who, study, series)

    @app.get(DICOMWEB + "/studies/{study}/series/{series}/instances/{instance}/metadata",
             tags=["WADO-RS"])  # fmt: skip
    def instance_metadata(
        request: Request, study: str, series: str, instance: str, who: Caller
    ) -> Response:
        """The metadata of one instance."""
        return metadata(request, who, study, series, instance)

    # -- STOW-RS ------------------------------------------------------------------------

    @app.post(DICOMWEB + "/studies", tags=["STOW-RS"])
    async def store(request: Request, who: Caller) -> Response:
        """Store instances (multipart/related; type="application/dicom")."""
        require(who, Permission.STORE)
        return await stow(request, archive, who, None, base(request), web.max_body_bytes)

    @app.post(DICOMWEB + "/studies/{study}", tags=["STOW-RS"])
    async def store_in_study(request: Request, study: str, who: Caller) -> Response:
        """Store instances of one study; others in the request are refused."""
        require(who, Permission.STORE)
        uid = qido.check_uid(study, "the study UID")
        return await stow(request, archive, who, uid, base(request), web.max_body_bytes)

    install_middleware(app, web)
    return app


def _action_for(permission: Permission):  # type: ignore[no-untyped-def]
    from pacsvault.security.audit import Action

    return {
        Permission.QUERY: Action.QUERY,
        Permission.RETRIEVE: Action.RETRIEVE,
        Permission.STORE: Action.STORE,
        Permission.EXPORT: Action.EXPORT,
        Permission.AUDIT: Action.AUDIT_USE,
    }.get(permission, Action.SETTINGS_CHANGE)
