"""Public routes (health, the login page) and the session's own: log in, log out, who am I."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pacsvault.security.identity import Refusal
from pacsvault.web import pages
from pacsvault.web.auth import SESSION_COOKIE, Sessions, Unauthorized, client_address
from pacsvault.web.deps import Caller, current_principal, site_of

router = APIRouter()


def sessions_of(request: Request) -> Sessions:
    return request.app.state.sessions  # type: ignore[no-any-return]


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login", include_in_schema=False, response_class=HTMLResponse)
def login_page() -> HTMLResponse:
    return HTMLResponse(pages.LOGIN)


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    code: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Check the password (and second factor); on success set the session cookie.

    Every failure answers the same 401, whatever failed; failures count towards the
    lockout of the address and the account, as on the DICOM side.
    """
    address = client_address(request)
    outcome = site_of(request).policy.authenticate_login(username, password, code or None,
                                                          address)  # fmt: skip
    if isinstance(outcome, Refusal):
        raise HTTPException(401, "wrong user name, password or code, or locked out")
    new = sessions_of(request).start(outcome, address)
    wants_json = "application/json" in request.headers.get("accept", "")
    response: Response = (
        JSONResponse({"user": username, "csrf": new.csrf})
        if wants_json
        else RedirectResponse("/", status_code=303)
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


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
def home(request: Request) -> Response:
    try:
        who = current_principal(request)
    except Unauthorized:
        return RedirectResponse("/login", status_code=303)
    return HTMLResponse(pages.home(who.actor.name))


@router.get("/api/session", tags=["session"])
def session_info(request: Request, who: Caller) -> dict[str, Any]:
    """Who is logged in, what it may do, and a fresh CSRF token for a session."""
    secret = request.cookies.get(SESSION_COOKIE)
    csrf = sessions_of(request).new_csrf(secret) if secret else None
    return {
        "user": who.actor.name,
        "role": who.user.role.value if who.user else None,
        "permissions": sorted(p.value for p in who.permissions),
        "csrf": csrf,
    }


@router.get("/api/openapi.json", tags=["session"])
def openapi(request: Request, who: Caller) -> dict[str, Any]:
    """This API's OpenAPI document (for authenticated callers only)."""
    return request.app.openapi()  # type: ignore[no-any-return]
