"""What every route shares: the caller's principal, permission checks, the base URL."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from pacsvault.security.audit import Action
from pacsvault.security.identity import Permission, Principal
from pacsvault.site import Site
from pacsvault.web.auth import authenticate

DICOMWEB = "/dicom-web"

#: The audit action a refused permission is recorded as.
REFUSAL_ACTIONS = {
    Permission.QUERY: Action.QUERY,
    Permission.RETRIEVE: Action.RETRIEVE,
    Permission.MOVE: Action.RETRIEVE,
    Permission.STORE: Action.STORE,
    Permission.EXPORT: Action.EXPORT,
    Permission.AUDIT: Action.AUDIT_USE,
    Permission.ADMIN: Action.SETTINGS_CHANGE,
    Permission.ECHO: Action.ECHO,
}


def site_of(request: Request) -> Site:
    return request.app.state.site  # type: ignore[no-any-return]


def current_principal(request: Request) -> Principal:
    """The request's principal (a FastAPI dependency): 401 or 403 when there is none."""
    state = request.app.state
    return authenticate(request, state.site.policy, state.sessions)


Caller = Annotated[Principal, Depends(current_principal)]


def require(request: Request, who: Principal, permission: Permission) -> None:
    """403 (audited) unless *who* may do *permission*."""
    policy = site_of(request).policy
    if not policy.require(who, permission, REFUSAL_ACTIONS[permission]):
        raise HTTPException(403, f"{permission.value} not permitted")


def invalid_fields(exc: RequestValidationError) -> str:
    """Where a request was invalid (the first five places), never the values sent."""
    return ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])


def dicomweb_base(request: Request) -> str:
    """The absolute URL of the DICOMweb root, as the caller reached it."""
    return str(request.base_url).rstrip("/") + DICOMWEB


#: What a local path to return to after login may hold: a path of our own pages, with
#: an optional query; no scheme, host, backslash, control character or ``//`` prefix.
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,2000}")


def local_path(text: str | None) -> str:
    """*text* when it is a safe path on this site to go to after login, else ``/``
    (never another site's address: an open redirect is a phishing tool)."""
    if text and _LOCAL_PATH.fullmatch(text):
        return text
    return "/"


def login_url(request: Request) -> str:
    """The login page, with the page asked for to come back to after logging in."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = local_path(here)
    return "/login" if target == "/" else f"/login?next={quote(target, safe='')}"
