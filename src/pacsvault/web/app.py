"""The HTTPS application: login, the viewer, DICOMweb at /dicom-web, the API at /api.

One :class:`~pacsvault.site.Site` serves it, as it serves DIMSE: the same policy
authenticates every request into a Principal (or answers 401), the same Archive
reads and writes patient data within the principal's scope and audits it. Only
``/healthz`` and the login page answer without credentials. Each group of routes is
a router of its own module, listed in :data:`ROUTERS`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from pacsvault import __version__
from pacsvault.security.audit import AuditUnavailable
from pacsvault.security.policy import NotPermitted
from pacsvault.site import Site
from pacsvault.storage.s3blobs import S3Unavailable
from pacsvault.web import admin, adminpages, export, session, viewer
from pacsvault.web.auth import Sessions
from pacsvault.web.deps import invalid_fields
from pacsvault.web.dicomweb import pixels as dicomweb_pixels
from pacsvault.web.dicomweb import routes as dicomweb_routes
from pacsvault.web.middleware import install_middleware

log = logging.getLogger("pacsvault.web")

#: The routers every app includes; a new group of routes adds its router here.
ROUTERS = [
    session.router,
    viewer.router,
    export.router,
    dicomweb_routes.router,
    dicomweb_pixels.router,
    admin.router,
    adminpages.router,
]


#: FastAPI's native OpenTelemetry, off: from 0.16x it traces every request through the
#: global providers, with the path and query string (patient names and IDs in a QIDO-RS
#: query) as span attributes, exported wherever the environment's SDK sends them.
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False,
                "operation_spans": False, "auto_configure": False}  # fmt: skip


def create_app(site: Site) -> FastAPI:
    """The ASGI application for *site*."""
    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI).parameters:  # FastAPI 0.16x and later
        options["telemetry"] = NO_TELEMETRY
    app = FastAPI(title="pacsvault", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None, **options)  # fmt: skip
    app.state.site = site
    app.state.sessions = Sessions(site.web_sessions, site.settings.web.session_absolute)

    @app.exception_handler(NotPermitted)
    async def _not_permitted(_request: Request, exc: NotPermitted) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(AuditUnavailable)
    async def _no_audit(_request: Request, _exc: AuditUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "audit trail unavailable: try again later"},
                            status_code=503, headers={"Retry-After": "30"})  # fmt: skip

    @app.exception_handler(OperationalError)
    async def _no_index(_request: Request, exc: OperationalError) -> JSONResponse:
        # The index (PostgreSQL) is unreachable: nothing was stored, try again later.
        log.error("index unavailable: %s", type(exc.orig).__name__ if exc.orig else exc)
        return JSONResponse({"detail": "index unavailable: try again later"},
                            status_code=503, headers={"Retry-After": "30"})  # fmt: skip

    @app.exception_handler(S3Unavailable)
    async def _no_objects(_request: Request, exc: S3Unavailable) -> JSONResponse:
        log.error("object storage unavailable: %s", exc)
        return JSONResponse({"detail": "object storage unavailable: try again later"},
                            status_code=503, headers={"Retry-After": "30"})  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid request: {invalid_fields(exc)}"},
                            status_code=400)  # fmt: skip

    for router in ROUTERS:
        app.include_router(router)
    install_middleware(app, site.settings.web)
    return app
