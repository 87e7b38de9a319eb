"""Web checks: Orthanc's REST API, DICOMweb, viewer pages, reachable without login; HTTPS.

GET requests with small bodies, except the DICOMweb retrieve tests (scan/dicomweb.py:
one study read and discarded) and, with --intrusive, one STOW-RS. Counts come from
Orthanc's own ``/statistics`` counters (marked exact, method "native counters") when
readable, else from QIDO-RS paging. On HTTPS, the TLS versions and the certificate are
checked as on DICOM-TLS (scan/tls_probe.py).
"""

from __future__ import annotations

import json

from pacsvault.scan.catalogue import finding
from pacsvault.scan.dicomweb import probe_dicomweb
from pacsvault.scan.findings import Count, Finding
from pacsvault.scan.http import Reply, fetch
from pacsvault.scan.tls_probe import handshake, tls_findings
from pacsvault.scan.vulns import from_orthanc_version

VIEWER_PAGES = ("/app/explorer.html", "/ui/app/", "/dcm4chee-arc/ui2/", "/viewer")
#: Tried only with --try-default-credentials: at most five, product defaults from vendor docs.
DEFAULT_CREDENTIALS = (("orthanc", "orthanc"), ("admin", "admin"), ("admin", "password"),
                       ("alice", "alicePassword"), ("root", "root"))  # fmt: skip


def _get(base: str, path: str, timeout: float, auth: tuple[str, str] | None = None) -> Reply | None:
    return fetch(base + path, timeout, auth=auth)


def _json(reply: Reply | None) -> object:
    if reply is None or reply.status != 200:
        return None
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def _orthanc(base: str, where: str, timeout: float) -> tuple[list[Finding], dict[str, Count], bool]:
    """EXP-WEB-01/-03: Orthanc's REST API open, with its native counters when readable.

    Returns the findings, the counts, and whether ``/system`` asked for a login.
    """
    system = _get(base, "/system", timeout)
    info = _json(system)
    if not (isinstance(info, dict) and "Version" in info):
        return [], {}, system is not None and system.status == 401
    version = str(info.get("Version"))
    stats = _json(_get(base, "/statistics", timeout))
    method = "native counters (Orthanc /statistics)"
    counts = {
        name: Count(int(stats.get(key, 0)), "exact", method)
        for name, key in (("patients", "CountPatients"), ("studies", "CountStudies"),
                          ("series", "CountSeries"), ("instances", "CountInstances"))
    } if isinstance(stats, dict) else {}  # fmt: skip
    found = finding(
        "WEB-ORTHANC-REST-OPEN", where,
        f"GET /system answered without credentials (Orthanc {version})",
        counts=counts or None, details={"product": "Orthanc", "version": version},
    )  # fmt: skip
    return [found, *from_orthanc_version(version, where)], counts, False


def _viewer(base: str, where: str, timeout: float) -> tuple[list[Finding], bool]:
    """EXP-WEB-08: a viewer page served without login; and whether one asked for a login."""
    auth_seen = False
    for path in VIEWER_PAGES:
        page = _get(base, path, timeout)
        if page is not None and page.status == 200 and page.body:
            text = f"GET {path} returned a page without credentials"
            return [finding("WEB-VIEWER-OPEN", where, text)], auth_seen
        if page is not None and page.status == 401:
            auth_seen = True
    return [], auth_seen


def _default_login(base: str, where: str, timeout: float) -> list[Finding]:
    """EXP-WEB-02 (--try-default-credentials): at most five well-known logins."""
    for user, password in DEFAULT_CREDENTIALS:
        reply = _get(base, "/system", timeout, (user, password))
        if reply is not None and reply.status == 200:
            return [finding(
                "WEB-DEFAULT-CREDENTIALS", where,
                f"the well-known login '{user}' with its default password was accepted",
            )]  # fmt: skip
    return []


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_http(
    host: str,
    port: int,
    tls: bool,
    timeout: float = 5.0,
    try_defaults: bool = False,
    *,
    budget: int = 100_000,
    intrusive: bool = False,
    guessing: bool = False,
) -> list[Finding]:
    """Run the web checks against one HTTP(S) endpoint; [] when no web server answers.

    *guessing*: the port was named without a scheme and did not speak DICOM; it counts
    as a web server only when ``GET /`` gets a proper answer (not 400 Bad Request).
    """
    base = f"{'https' if tls else 'http'}://{_netloc(host, port)}"
    where = base
    root = _get(base, "/", timeout)
    if root is None or (guessing and root.status == 400):
        return []
    findings, native, system_login = _orthanc(base, where, timeout)
    findings += probe_dicomweb(base, where, timeout, budget=budget, intrusive=intrusive,
                               native=native or None)  # fmt: skip
    viewer, viewer_login = _viewer(base, where, timeout)
    findings += viewer
    dicomweb_login = any(f.id == "WEB-DICOMWEB-PROTECTED" for f in findings)
    auth_seen = root.status == 401 or system_login or viewer_login or dicomweb_login
    if auth_seen and try_defaults:
        findings += _default_login(base, where, timeout)
    if not tls:
        findings.append(finding(
            "WEB-CLEARTEXT", where,
            "credentials and images would cross the network readable"
            + (" (it asks for a login over plain HTTP)" if auth_seen else ""),
        ))  # fmt: skip
    elif (shake := handshake(host, port, timeout)) is not None:
        findings += tls_findings(host, port, timeout, where, shake)
    return findings
