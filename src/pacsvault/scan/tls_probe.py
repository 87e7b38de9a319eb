"""DICOM-TLS checks (EXP-DIMSE-13): which protocol versions the DICOM-TLS port accepts.

Whether a client certificate is demanded cannot be seen from the handshake alone when a
server (like pacsvault) requests certificates and decides per peer afterwards; that
needs a TLS association attempt, which is not done yet.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Finding


def _handshake(host: str, port: int, timeout: float, max_version: ssl.TLSVersion | None) -> str:
    """The negotiated protocol version, or '' when no TLS handshake completed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if max_version is not None:
        with contextlib.suppress(ValueError, ssl.SSLError):
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = max_version
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return tls.version() or "?"
    except (ssl.SSLError, OSError):
        return ""


def probe_tls(host: str, port: int, timeout: float = 5.0) -> list[Finding]:
    """Check TLS on a DICOM port; nothing is reported when the port does not speak TLS."""
    where = f"{host}:{port}"
    version = _handshake(host, port, timeout, None)
    if not version:
        return []
    findings = [finding("TLS-SUPPORTED", where, f"negotiated {version}")]
    if _handshake(host, port, timeout, ssl.TLSVersion.TLSv1_1):
        findings.append(
            finding("TLS-OLD-VERSION", where, "the server completed a TLS 1.1 handshake")
        )
    return findings
