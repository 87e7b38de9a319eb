"""The admin console's pages: ``/admin`` (and its sections) and ``/audit``.

Like the viewer's pages they are markup and script references only: the scripts read
and change everything through the admin API (``/api``) with the session cookie and,
for every change, the session's CSRF token, so every request is authorized and audited
by the API's routes. The pages themselves are guarded too: without a session, a 303 to
the login page; a role without the permission (``admin`` for ``/admin``, ``audit`` for
``/audit``) gets the not-permitted page (403), and the refusal is audited.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pacsvault.security.identity import Permission
from pacsvault.web import pages
from pacsvault.web.auth import Unauthorized
from pacsvault.web.deps import REFUSAL_ACTIONS, current_principal, login_url, site_of

router = APIRouter(include_in_schema=False)

#: The admin console's sections: ``/admin`` is the overview, the others ``/admin/<name>``.
SECTIONS = frozenset({"users", "peers", "tokens", "shares", "lockouts"})

NOT_PERMITTED = {
    Permission.ADMIN: ("Not permitted", "Only administrators may use the admin console."),
    Permission.AUDIT: ("Not permitted", "Only auditors and administrators may read the audit "
                       "trail."),
}  # fmt: skip
NO_SECTION = ("Page not found", "There is no such page of the admin console.")


def _page(request: Request, permission: Permission, template: str) -> Response:
    """*template* for a caller holding *permission*; else the login page or 403."""
    try:
        who = current_principal(request)
    except Unauthorized:
        return RedirectResponse(login_url(request), status_code=303)
    if not site_of(request).policy.require(who, permission, REFUSAL_ACTIONS[permission]):
        return HTMLResponse(pages.message(*NOT_PERMITTED[permission]), status_code=403)
    return HTMLResponse(pages.viewer(template))


@router.get("/admin", response_class=HTMLResponse)
def admin_overview(request: Request) -> Response:
    """The settings summary: status, warnings, the doctor's checks."""
    return _page(request, Permission.ADMIN, "admin.html")


@router.get("/admin/{section}", response_class=HTMLResponse)
def admin_section(request: Request, section: str) -> Response:
    """Users, peers, tokens, shares or lockouts (the same page; its script shows one)."""
    page = _page(request, Permission.ADMIN, "admin.html")
    if page.status_code == 200 and section not in SECTIONS:
        return HTMLResponse(pages.message(*NO_SECTION), status_code=404)
    return page


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> Response:
    """The audit search (``?study=UID``: who accessed that study) and verification."""
    return _page(request, Permission.AUDIT, "audit.html")
