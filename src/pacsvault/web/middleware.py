"""What every HTTPS response carries and every request is held to.

- Security headers: HSTS, a strict Content-Security-Policy, no framing, no sniffing,
  no referrer, and no caching of anything but static assets (patient data must not
  linger in a shared browser's cache).
- Limits: a body larger than ``web.max_body_bytes`` (by its Content-Length) gets 413
  before it is read, STOW streams count the rest; headers (with the URL) over
  ``web.max_header_bytes`` get 431; at most
  ``web.max_requests_per_client`` requests from one address at a time (429 above);
  header size is bounded by the HTTP server (see ``web.server``).
- CORS: only the origins in ``web.cors_origins``, without credentials (a token in the
  Authorization header is how another origin's viewer calls us).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware

from pacsvault.config import WebSettings

SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

Handler = Callable[[Request], Awaitable[Response]]


def install_middleware(app: FastAPI, settings: WebSettings) -> None:
    in_flight: Counter[str] = Counter()
    lock = threading.Lock()

    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next: Handler) -> Response:
        client = request.client.host if request.client else "-"
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
        header_bytes += len(request.url.path) + len(request.url.query)
        if header_bytes > settings.max_header_bytes:
            return _error(431, f"request headers larger than {settings.max_header_bytes} bytes")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return _error(400, "invalid Content-Length")
            if too_big:
                return _error(413, f"request body larger than {settings.max_body_bytes} bytes")
        with lock:
            if in_flight[client] >= settings.max_requests_per_client:
                busy = True
            else:
                busy = False
                in_flight[client] += 1
        if busy:
            return _error(429, "too many requests at once from this address",
                          {"Retry-After": "1"})  # fmt: skip
        try:
            response = await call_next(request)
        finally:
            with lock:
                in_flight[client] -= 1
                if in_flight[client] <= 0:
                    del in_flight[client]
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Warning", "Content-Type"],
            max_age=600,
        )


def _error(code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    response = JSONResponse({"detail": detail}, status_code=code, headers=headers)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Cache-Control"] = "no-store"
    return response
