"""Public routes (health, the login page) and the session's own: log in, log out, who am I.

The pages behind the login are :mod:`pacsvault.web.viewer`'s."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pacsvault.security.identity import Refusal
from pacsvault.web import pages
from pacsvault.web.auth import SESSION_COOKIE, Sessions, client_address
from pacsvault.web.deps import Caller, local_path, site_of

router = APIRouter()


def sessions_of(request: Request) -> Sessions:
    return request.app.state.sessions  # type: ignore[no-any-return]


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login", include_in_schema=False, response_class=HTMLResponse)
def login_page(next: str = "/") -> HTMLResponse:
    """The login form; ``next`` is the page to go to afterwards (only a local path)."""
    return HTMLResponse(pages.login(local_path(next)))


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    code: Annotated[str, Form(max_length=16)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    """Check the password (and second factor); on success set the session cookie and
    go to ``next`` (a local path only), or answer JSON when JSON is asked for.

    Every failure answers the same 401, whatever failed (the form again, for a
    browser); failures count towards the lockout of the address and the account, as
    on the DICOM side.
    """
    address = client_address(request)
    outcome = site_of(request).policy.authenticate_login(username, password, code or None,
                                                          address)  # fmt: skip
    wants_json = "application/json" in request.headers.get("accept", "")
    if isinstance(outcome, Refusal):
        why = "wrong user name, password or code, or locked out"
        if wants_json:
            raise HTTPException(401, why)
        return HTMLResponse(pages.login(local_path(next), why[0].upper() + why[1:] + "."),
                            status_code=401)  # fmt: skip
    new = sessions_of(request).start(outcome, address)
    response: Response = (
        JSONResponse({"user": username, "csrf": new.csrf})
        if wants_json
        else RedirectResponse(local_path(next), status_code=303)
    )
    response.set_cookie(SESSION_COOKIE, new.secret, secure=True, httponly=True,
                        samesite="strict", path="/")  # fmt: skip
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, who: Caller) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        sessions_of(request).end(secret)
    response = JSONResponse({"detail": "logged out"})
    response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="strict")
    return response


@router.get("/api/session", tags=["session"])
def session_info(request: Request, who: Caller) -> dict[str, Any]:
    """Who is logged in, what it may do, a fresh CSRF token for a session, and how long
    a session may stay unused (``idle_timeout``, seconds) before it ends."""
    secret = request.cookies.get(SESSION_COOKIE)
    csrf = sessions_of(request).new_csrf(secret) if secret else None
    return {
        "user": who.actor.name,
        "role": who.user.role.value if who.user else None,
        "permissions": sorted(p.value for p in who.permissions),
        "csrf": csrf,
        "idle_timeout": site_of(request).settings.web.session_idle,
    }


@router.get("/api/openapi.json", tags=["session"])
def openapi(request: Request, who: Caller) -> dict[str, Any]:
    """This API's OpenAPI document (for authenticated callers only)."""
    return request.app.openapi()  # type: ignore[no-any-return]
