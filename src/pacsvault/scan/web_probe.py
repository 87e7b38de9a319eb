"""Web checks: Orthanc's REST API, DICOMweb roots and viewer pages, reachable without login.

Only GET requests, small bodies; never a study's content. Counts come from Orthanc's
own ``/statistics`` counters (marked exact, method "native counters").
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Count, Finding
from pacsvault.scan.vulns import from_orthanc_version

QIDO_ROOTS = ("/dicom-web/studies?limit=1", "/dcm4chee-arc/aets/DCM4CHEE/rs/studies?limit=1",
              "/wado/studies?limit=1")  # fmt: skip
VIEWER_PAGES = ("/app/explorer.html", "/ui/app/", "/dcm4chee-arc/ui2/", "/viewer")
MAX_BODY = 1 << 20
#: Tried only with --try-default-credentials: at most five, product defaults from vendor docs.
DEFAULT_CREDENTIALS = (("orthanc", "orthanc"), ("admin", "admin"), ("admin", "password"),
                       ("alice", "alicePassword"), ("root", "root"))  # fmt: skip


@dataclass
class Reply:
    status: int
    body: bytes


def _get(base: str, path: str, timeout: float, auth: tuple[str, str] | None = None) -> Reply | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # we test exposure, not trust
    headers = {"User-Agent": "pacsvault-scan"}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return Reply(r.status, r.read(MAX_BODY))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, b"")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _json(reply: Reply | None) -> object:
    if reply is None or reply.status != 200:
        return None
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def probe_http(
    host: str, port: int, tls: bool, timeout: float = 5.0, try_defaults: bool = False
) -> list[Finding]:
    """Run the web checks against one HTTP(S) endpoint."""
    scheme = "https" if tls else "http"
    base = f"{scheme}://{host}:{port}"
    where = base
    root = _get(base, "/", timeout)
    if root is None:
        return []  # no web server here
    findings: list[Finding] = []
    auth_seen = root.status == 401
    system = _get(base, "/system", timeout)
    info = _json(system)
    if isinstance(info, dict) and "Version" in info:
        version = str(info.get("Version"))
        stats = _json(_get(base, "/statistics", timeout))
        method = "native counters (Orthanc /statistics)"
        counts = {
            name: Count(int(stats.get(key, 0)), "exact", method)
            for name, key in (("patients", "CountPatients"), ("studies", "CountStudies"),
                              ("series", "CountSeries"), ("instances", "CountInstances"))
        } if isinstance(stats, dict) else None  # fmt: skip
        findings.append(finding(
            "WEB-ORTHANC-REST-OPEN", where,
            f"GET /system answered without credentials (Orthanc {version})",
            counts=counts, details={"product": "Orthanc", "version": version},
        ))  # fmt: skip
        findings += from_orthanc_version(version, where)
    elif system is not None and system.status == 401:
        auth_seen = True
    for path in QIDO_ROOTS:
        data = _json(_get(base, path, timeout))
        if isinstance(data, list):
            findings.append(finding(
                "WEB-QIDO-OPEN", where,
                f"GET {path.split('?')[0]} listed studies without credentials",
            ))  # fmt: skip
            break
    for path in VIEWER_PAGES:
        page = _get(base, path, timeout)
        if page is not None and page.status == 200 and page.body:
            findings.append(finding(
                "WEB-VIEWER-OPEN", where, f"GET {path} returned a page without credentials"
            ))  # fmt: skip
            break
        if page is not None and page.status == 401:
            auth_seen = True
    if auth_seen and try_defaults:
        for user, password in DEFAULT_CREDENTIALS:
            reply = _get(base, "/system", timeout, (user, password))
            if reply is not None and reply.status == 200:
                findings.append(finding(
                    "WEB-DEFAULT-CREDENTIALS", where,
                    f"the well-known login '{user}' with its default password was accepted",
                ))  # fmt: skip
                break
    if not tls:
        findings.append(finding(
            "WEB-CLEARTEXT", where,
            "credentials and images would cross the network readable"
            + (" (it asks for a login over plain HTTP)" if auth_seen else ""),
        ))  # fmt: skip
    return findings
