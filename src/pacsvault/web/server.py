"""The HTTPS listener: uvicorn in a thread of ``serve``, on a socket bound like DICOM's.

TLS uses the site's server certificate with the BCP 195 profile; uvicorn's access
log is off (URLs of searches hold patient names: the audit trail records accesses
instead); header size and keep-alive are bounded. An optional plain-HTTP port only
redirects to HTTPS and serves nothing else.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pacsvault.site import Site
from pacsvault.web.app import create_app
from pacsvault.web.http_protocol import bounded_protocol

log = logging.getLogger("pacsvault.web")


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose connections have Nagle's algorithm off.

    asyncio turns TCP_NODELAY on only for sockets created with IPPROTO_TCP; with
    protocol 0 every response body waited ~40 ms behind its headers (delayed ACK).
    The option is also set on the listener, which Linux copies to accepted sockets.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Thread:
    """One uvicorn server on one bound socket, in a daemon thread."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, name: str) -> None:
        self.server = uvicorn.Server(config)
        self.sock = sock
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class WebServer:
    """The HTTPS server (and the optional HTTP redirect) of one Site."""

    def __init__(
        self, site: Site, context: ssl.SSLContext, cert: Path, key: Path, host: str, port: int
    ) -> None:
        self.site = site
        self.context = context
        self.cert, self.key = cert, key
        self.host = host
        self.port = port
        self._threads: list[_Thread] = []
        self.listeners: list[tuple[str, str, int]] = []

    def _config(self, app: object, **tls: object) -> uvicorn.Config:
        web = self.site.settings.web
        return uvicorn.Config(
            app,  # type: ignore[arg-type]
            log_config=None,
            # httptools, with the head bounded before parsing (see web.http_protocol).
            http=bounded_protocol(web.max_header_bytes),
            ws="none",  # no route speaks WebSocket: an Upgrade stays a plain request
            loop="auto",  # uvloop when installed (a dependency on POSIX), else asyncio
            access_log=False,
            server_header=False,
            # X-Forwarded-For only from the configured proxies, never from anyone else.
            proxy_headers=bool(web.trusted_proxies),
            forwarded_allow_ips=list(web.trusted_proxies) or None,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            **tls,  # type: ignore[arg-type]
        )

    def start(self) -> None:
        """Bind and serve; raises OSError when a port cannot be bound."""
        sock = bind_listener(self.host, self.port)
        config = self._config(create_app(self.site), ssl_certfile=str(self.cert),
                              ssl_keyfile=str(self.key))  # fmt: skip
        config.load()
        config.ssl = self.context  # our profile, not uvicorn's defaults
        https = _Thread(config, sock, "https")
        https.start()
        self._threads.append(https)
        bound = sock.getsockname()[1]
        self.listeners.append(("https", self.host, int(bound)))
        log.info("HTTPS listener on %s:%d", self.host, bound)
        redirect_port = self.site.settings.web.http_redirect_port
        if redirect_port:
            plain = bind_listener(self.host, redirect_port)
            thread = _Thread(self._config(_redirector(int(bound))), plain, "http-redirect")
            thread.start()
            self._threads.append(thread)
            self.listeners.append(("http-redirect", self.host, plain.getsockname()[1]))

    def stop(self) -> None:
        for thread in self._threads:
            thread.stop()


def _redirector(https_port: int) -> Starlette:
    """An app that answers every request with a redirect to the same path over HTTPS."""

    async def redirect(request: Request) -> Response:
        host = (request.url.hostname or "localhost").strip("[]")
        host = f"[{host}]" if ":" in host else host
        return RedirectResponse(f"https://{host}:{https_port}{request.url.path}",
                                status_code=308)  # fmt: skip

    return Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "HEAD", "POST"])])
