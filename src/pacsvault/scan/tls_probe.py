"""TLS checks (EXP-DIMSE-13, EXP-WEB-09): versions accepted, the certificate, client certificates.

Shared by DICOM-TLS and HTTPS ports: :func:`tls_findings` (old versions, the server
certificate). For DICOM-TLS, :func:`probe_tls` adds whether the TLS handshake goes
through without a client certificate; whether the *association* does is then tried by
the DIMSE probe over TLS (dimse_probe.probe with ``tls=True``), because a server such
as pacsvault requests certificates and decides per peer afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from pacsvault.scan.catalogue import finding
from pacsvault.scan.certs import certificate_findings, throwaway_client_certificate
from pacsvault.scan.findings import Finding

#: How long to wait after the handshake for a TLS 1.3 server's "certificate required" alert.
ALERT_WAIT = 1.0
HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"
#: Alerts about a client certificate: the server got past choosing the protocol version.
CERTIFICATE_ALERTS = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV1_ALERT_DECRYPT_ERROR",
})  # fmt: skip


@dataclass
class Handshake:
    """A completed TLS handshake: the protocol version and the server's certificate (DER)."""

    version: str
    certificate: bytes | None


def client_context(max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context without a certificate that accepts any server certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if max_version is not None:
        with contextlib.suppress(ValueError, ssl.SSLError):
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # old versions are what we test for
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = max_version
    return ctx


def _connect(host: str, port: int, timeout: float, ctx: ssl.SSLContext) -> Handshake:
    """Complete a TLS handshake with *ctx* and close; raises ssl.SSLError or OSError."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return Handshake(tls.version() or "?", tls.getpeercert(binary_form=True))


def _attempt(
    host: str, port: int, timeout: float, ctx: ssl.SSLContext
) -> tuple[Handshake | None, str]:
    """(the handshake, '') when one completes with *ctx*; else (None, OpenSSL's reason,
    or 'no TLS' when the connection itself failed)."""
    try:
        return _connect(host, port, timeout, ctx), ""
    except ssl.SSLError as exc:
        return None, str(exc.reason or type(exc).__name__)
    except OSError:
        return None, "no TLS"


def handshake(
    host: str, port: int, timeout: float, max_version: ssl.TLSVersion | None = None
) -> Handshake | None:
    """Complete a TLS handshake and close; None when none completed."""
    return _attempt(host, port, timeout, client_context(max_version))[0]


def with_throwaway_certificate(
    host: str, port: int, timeout: float, max_version: ssl.TLSVersion | None = None
) -> tuple[Handshake | None, str]:
    """A handshake offering a throwaway self-signed client certificate: (the handshake if it
    completed, else '' or the certificate alert with which the server refused it).

    A server that demands client certificates fails a handshake without one with an
    ambiguous handshake_failure alert (TLS 1.2 and older); its refusal of a certificate
    it does not trust shows that it spoke TLS and accepted the protocol version.
    """
    ctx = client_context(max_version)
    cert, key = throwaway_client_certificate()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.pem").write_bytes(cert + key)
        ctx.load_cert_chain(Path(tmp) / "c.pem")
    shake, reason = _attempt(host, port, timeout, ctx)
    return shake, (reason if reason in CERTIFICATE_ALERTS else "")


def old_version_accepted(host: str, port: int, timeout: float) -> str:
    """How the server was seen to accept TLS 1.1 or older; '' when it refused."""
    old = ssl.TLSVersion.TLSv1_1
    shake, reason = _attempt(host, port, timeout, client_context(old))
    if shake is None and reason == HANDSHAKE_FAILURE:
        shake, alert = with_throwaway_certificate(host, port, timeout, old)
        if alert:
            return (
                "the server negotiated TLS 1.1 or older, then refused a throwaway client "
                f"certificate ({alert})"
            )
    return f"the server completed a {shake.version} handshake" if shake else ""


def client_certificate_refusal(host: str, port: int, timeout: float) -> str | None:
    """Why the server refused us for lack of a client certificate; None when it did not.

    TLS 1.2 servers refuse inside the handshake. A TLS 1.3 server sees the (empty)
    client certificate only after the client finished, and answers with an alert, so
    the connection is read briefly after the handshake: an alert or a close is a
    refusal, silence (the server waits for the DICOM association) is acceptance.
    """
    ctx = client_context()
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.settimeout(min(timeout, ALERT_WAIT))
            try:
                data = tls.recv(1)
            except TimeoutError:
                return None
            except ssl.SSLError as exc:
                return f"the server ended the connection after the handshake ({_reason(exc)})"
            except OSError:
                return "the server closed the connection after the handshake"
            return None if data else "the server closed the connection after the handshake"
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({_reason(exc)})"
    except OSError:
        return None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's short reason, such as TLSV13_ALERT_CERTIFICATE_REQUIRED."""
    return str(exc.reason or exc.__class__.__name__)


def tls_findings(
    host: str, port: int, timeout: float, where: str, shake: Handshake
) -> list[Finding]:
    """Old protocol versions accepted, and the server certificate's findings."""
    findings: list[Finding] = []
    if old := old_version_accepted(host, port, timeout):
        findings.append(finding("TLS-OLD-VERSION", where, old))
    if shake.certificate:
        findings += certificate_findings(shake.certificate, where, host)
    return findings


def probe_tls(
    host: str, port: int, timeout: float = 5.0, where: str | None = None
) -> list[Finding]:
    """Check TLS on a DICOM port; nothing is reported when the port does not speak TLS."""
    where = where or f"{host}:{port}"
    shake = handshake(host, port, timeout)
    if shake is None:
        return _demands_certificate(host, port, timeout, where)
    findings = [finding("TLS-SUPPORTED", where, f"negotiated {shake.version}")]
    findings += tls_findings(host, port, timeout, where, shake)
    refusal = client_certificate_refusal(host, port, timeout)
    if refusal:
        findings.append(finding(
            "TLS-CLIENT-CERT-REQUIRED", where,
            f"without a client certificate, {refusal}: no association was possible",
        ))  # fmt: skip
    return findings


def _demands_certificate(host: str, port: int, timeout: float, where: str) -> list[Finding]:
    """A TLS 1.2 server that fails every handshake without a client certificate: found by
    its refusal of a throwaway one ([] when that is not what happens). Its certificate
    cannot be read then (Python does not show it from a failed handshake)."""
    if _attempt(host, port, timeout, client_context())[1] != HANDSHAKE_FAILURE:
        return []
    shake, alert = with_throwaway_certificate(host, port, timeout)
    if shake is not None or not alert:
        return []
    findings = [finding("TLS-SUPPORTED", where,
                        "TLS spoken; the server certificate is not shown without a trusted "
                        "client certificate")]  # fmt: skip
    if old := old_version_accepted(host, port, timeout):
        findings.append(finding("TLS-OLD-VERSION", where, old))
    findings.append(finding(
        "TLS-CLIENT-CERT-REQUIRED", where,
        f"without a client certificate the TLS handshake failed, and a throwaway one was "
        f"refused ({alert}): no association was possible",
    ))  # fmt: skip
    return findings
