"""HTTP(S) for the web checks: no credentials unless asked, no certificate verification.

Every read is bounded. :func:`drain` reads a response to its end (up to a limit) and
hands each chunk to a callback that counts it: a retrieve test keeps nothing.
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_BODY = 1 << 20
CHUNK = 1 << 16
USER_AGENT = "pacsvault-scan"


@dataclass
class Reply:
    """Status, body (at most the limit asked for) and lower-cased headers of one response."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Drained:
    """What reading a response to its end found, without keeping it."""

    status: int
    content_type: str
    size: int
    truncated: bool  # the limit was reached before the end


def insecure_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: we test exposure, not trust."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def _request(
    url: str,
    method: str,
    headers: dict[str, str] | None,
    body: bytes | None,
    auth: tuple[str, str] | None,
) -> urllib.request.Request:
    """A request carrying our User-Agent, and Basic credentials only when *auth* is given."""
    sent = {"User-Agent": USER_AGENT, **(headers or {})}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        sent["Authorization"] = f"Basic {token}"
    return urllib.request.Request(url, data=body, headers=sent, method=method)


def fetch(
    url: str,
    timeout: float,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    auth: tuple[str, str] | None = None,
    limit: int = MAX_BODY,
) -> Reply | None:
    """One request; None when nothing answered in HTTP. Error bodies are not kept."""
    req = _request(url, method, headers, body, auth)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=insecure_context()) as r:
            return Reply(r.status, r.read(limit), {k.lower(): v for k, v in r.headers.items()})
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, b"", {k.lower(): v for k, v in (exc.headers or {}).items()})
    except (urllib.error.URLError, OSError, ValueError):
        return None


def drain(
    url: str,
    timeout: float,
    start: Callable[[str], Callable[[bytes], None]],
    *,
    headers: dict[str, str] | None = None,
    limit: int = 64 << 20,
) -> Drained | None:
    """GET *url* and read the body to its end, stopping at *limit* bytes.

    ``start(content_type)`` is called once the response arrived and returns the sink
    that gets the body chunk by chunk (to count it; nothing is kept here).
    """
    req = _request(url, "GET", headers, None, None)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=insecure_context()) as r:
            ctype = r.headers.get("Content-Type", "")
            sink, size = start(ctype), 0
            while size < limit:
                chunk = r.read(min(CHUNK, limit - size))
                if not chunk:
                    return Drained(r.status, ctype, size, False)
                size += len(chunk)
                sink(chunk)
            return Drained(r.status, ctype, size, bool(r.read(1)))
    except urllib.error.HTTPError as exc:
        return Drained(exc.code, "", 0, False)
    except (urllib.error.URLError, OSError, ValueError):
        return None
