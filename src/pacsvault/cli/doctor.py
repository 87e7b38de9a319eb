"""``pacsvault doctor``: how this installation compares with its secure defaults.

Lints the settings, peers and file modes (security/hardening.py) and looks at the
listeners from outside without starting an association (so running it never
counts towards a lockout): is the cleartext port reachable, does the TLS port
speak TLS 1.2+ only.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl

from pacsvault.config import Settings
from pacsvault.security.hardening import Check, lint

SEVERITY_ORDER = ["info", "low", "medium", "high", "critical"]


def _connect_host(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "") else ("::1" if bind == "::" else bind)


def scan_own_listener(host: str, port: int, ae_title: str) -> list[Check]:
    """The exposure scanner against our own cleartext listener, as a stranger would see it.

    Called with our AE title, so it makes a single association attempt (a random
    calling AE): that refused attempt is logged, audited and counts once towards the
    lockout of this address, like any stranger's.
    """
    import logging

    from pacsvault.scan.dimse_probe import probe
    from pacsvault.scan.targets import Target

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    findings = probe(Target(host, port, ae_title), timeout=5.0, budget=10)
    if any(f.id == "NET-UNREACHABLE" for f in findings):
        return [Check("DICOM listener (scan)", True, f"not running on {host}:{port}", "info")]
    out = []
    for f in findings:
        exposed = SEVERITY_ORDER.index(f.severity) >= SEVERITY_ORDER.index("medium")
        out.append(Check(f"scan {f.id}", not exposed, f.result, f.severity))
    return out


def probe_listeners(settings: Settings) -> list[Check]:
    """Passive checks of the running listeners (no DICOM association is attempted)."""
    host = _connect_host(settings.dicom.bind)
    out: list[Check] = []
    if settings.dicom.cleartext:
        out += scan_own_listener(host, settings.dicom.port, settings.dicom.ae_title)
    if settings.tls.enabled:
        try:
            with socket.create_connection((host, settings.tls.port), timeout=3) as raw:
                old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
                with contextlib.suppress(ValueError):
                    old.set_ciphers("DEFAULT:@SECLEVEL=0")
                old.maximum_version = ssl.TLSVersion.TLSv1_1
                try:
                    with old.wrap_socket(raw):
                        accepted_old = True
                except (ssl.SSLError, OSError):
                    accepted_old = False
            out.append(Check("TLS listener rejects TLS 1.1", not accepted_old,
                             f"{host}:{settings.tls.port}", "high"))  # fmt: skip
            with socket.create_connection((host, settings.tls.port), timeout=3) as raw:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                with ctx.wrap_socket(raw) as tls:
                    version = tls.version()
            out.append(Check("TLS listener", True, f"{host}:{settings.tls.port} speaks {version}"))
        except OSError:
            out.append(Check("TLS listener", True, f"not running on {host}:{settings.tls.port}",
                             "info"))  # fmt: skip
    return out


def _table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        status = "PASS" if c.ok else "FAIL"
        sev = "" if c.ok else f" [{c.severity}]"
        lines.append(f"{status}  {c.name.ljust(width)}  {c.detail}{sev}")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    from pacsvault.site import open_site

    with open_site(args.data_dir) as site:
        checks = lint(site.settings, args.data_dir, site.peers.list())
    checks += probe_listeners(site.settings)
    print(_table(checks))
    failing = [c for c in checks if not c.ok]
    threshold = SEVERITY_ORDER.index(args.fail_on)
    worst = [c for c in failing if SEVERITY_ORDER.index(c.severity) >= threshold]
    print(f"\n{len(checks) - len(failing)} passed, {len(failing)} failed")
    return 1 if worst else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check this installation's security")
    p.add_argument(
        "--fail-on",
        default="medium",
        choices=SEVERITY_ORDER,
        help="exit 1 when a failed check has at least this severity (default medium)",
    )
    p.set_defaults(func=cmd_doctor)
