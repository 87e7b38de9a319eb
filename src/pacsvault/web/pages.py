"""The HTML pages: the login form, the viewer's pages, and the not-found page.

Pages are templates in ``static/`` (markup only: no inline script or style, which the
Content-Security-Policy forbids) and hold no patient data: the viewer's scripts fetch
that through DICOMweb once the page is loaded. The login form posts to ``/login``
with the browser's own form handling, so logging in needs no script.
"""

from __future__ import annotations

import html

from pacsvault.web import assets


def login(next_path: str = "/", error: str = "") -> str:
    """The login form; *next_path* (already checked to be local) is where it leads."""
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        assets.template("login.html")
        .replace("{{next}}", html.escape(next_path, quote=True))
        .replace("{{error}}", message)
    )


def viewer(name: str) -> str:
    """A page of the viewer: ``list.html`` (the study list) or ``study.html``."""
    return assets.template(name)


def message(title: str, text: str) -> str:
    """A page that only says something: a study not found (or that the caller may not
    see: both look alike), a page the caller's role may not use."""
    return (
        assets.template("message.html")
        .replace("{{title}}", html.escape(title))
        .replace("{{message}}", html.escape(text))
    )
