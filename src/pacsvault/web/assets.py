"""The viewer's static files: plain ES modules, CSS and HTML page templates.

They hold no patient data, so they are served without a session, under a path that
names their content (``/static/<hash>/<file>``) and cached for a year; a new release
changes the hash and so every URL. Page templates (``*.html``) are not served as
files: :mod:`pacsvault.web.viewer` fills in the asset path and serves them, like every
page, with ``no-store``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import pydicom

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static"

#: Content types of the files served.
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@cache
def files() -> dict[str, bytes]:
    """Every servable static file by name (relative path), read once."""
    out = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in MEDIA_TYPES:
            out[path.relative_to(STATIC_DIR).as_posix()] = path.read_bytes()
    return out


@cache
def version() -> str:
    """A hash of every static file's name and content (templates included), and of
    pydicom's version (the tag dictionary comes from it)."""
    h = hashlib.sha256(f"pydicom {pydicom.__version__}\0".encode())  # dictionary.json
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(STATIC_DIR).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def base() -> str:
    """The URL path the current static files are served under."""
    return f"{STATIC_PREFIX}/{version()}"


def url(name: str) -> str:
    """The URL of static file *name*."""
    return f"{base()}/{name}"


@cache
def template(name: str) -> str:
    """An HTML page template with its asset path filled in."""
    return (STATIC_DIR / name).read_text(encoding="utf-8").replace("{{static}}", base())
