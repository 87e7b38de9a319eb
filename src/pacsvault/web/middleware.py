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

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class LimitsAndHeaders:
    """Pure ASGI middleware: the limits above, then the security headers on every response.

    Pure ASGI rather than ``BaseHTTPMiddleware``: a streamed answer (a WADO-RS series)
    passes through untouched, chunk by chunk, and the request counts against its
    client's limit until its last byte is sent, not just until its headers are.
    """

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings
        self.in_flight: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "-"
        with self.lock:
            busy = self.in_flight[client] >= self.settings.max_requests_per_client
            if not busy:
                self.in_flight[client] += 1
        if busy:
            await _error(429, "too many requests at once from this address",
                         {"Retry-After": "1"})(scope, receive, send)  # fmt: skip
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers.append(name, value)
                if not static and "cache-control" not in headers:
                    headers.append("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            with self.lock:
                self.in_flight[client] -= 1
                if self.in_flight[client] <= 0:
                    del self.in_flight[client]

    def _refusal(self, scope: Scope) -> Response | None:
        """431/413/400 for a request over the header or body limits, else None."""
        settings = self.settings
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        header_bytes += len(scope["path"]) + len(scope.get("query_string", b""))
        if header_bytes > settings.max_header_bytes:
            return _error(431, f"request headers larger than {settings.max_header_bytes} bytes")
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return _error(400, "invalid Content-Length")
            if too_big:
                return _error(413, f"request body larger than {settings.max_body_bytes} bytes")
        return None


def install_middleware(app: FastAPI, settings: WebSettings) -> None:
    app.add_middleware(LimitsAndHeaders, settings=settings)
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
