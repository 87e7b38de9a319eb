"""Settings lint: every way this installation is weaker than pacsvault's defaults.

Used by ``pacsvault doctor``. Each check compares one setting (or peer, or file
mode) with the secure default and says what is weakened and how to restore it.
"""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path

from pacsvault.config import SETTINGS_FILE, SecuritySettings, Settings, is_loopback
from pacsvault.security.peers import CLIENT_CERT_NONE, Peer, TlsMode
from pacsvault.security.tls import certificate_expiry, expiry_note

DEFAULT_SECURITY = SecuritySettings()


@dataclass(frozen=True)
class Check:
    """One lint result. ``ok`` False means the setting is weakened."""

    name: str
    ok: bool
    detail: str
    severity: str = "medium"  # of a failure: critical, high, medium, low, info


def _networks_too_wide(host: str) -> bool:
    net = ipaddress.ip_network(host, strict=False)
    return net.prefixlen < (24 if net.version == 4 else 64)


def check_peers(peers: list[Peer]) -> list[Check]:
    out = []
    for p in peers:
        loopback = ipaddress.ip_network(p.host, strict=False).network_address.is_loopback
        if _networks_too_wide(p.host):
            out.append(Check(f"peer {p.name} address", False,
                             f"accepted from a wide network ({p.host}); register its address",
                             "high"))  # fmt: skip
        if p.tls is TlsMode.OFF and not loopback:
            out.append(
                Check(
                    f"peer {p.name} TLS",
                    False,
                    "registered for cleartext only; use --tls required",
                    "medium",
                )
            )
        if p.tls is not TlsMode.OFF and p.client_cert == CLIENT_CERT_NONE:
            out.append(Check(f"peer {p.name} client certificate", False,
                             "TLS without a client certificate: the AE title is the only proof",
                             "medium"))  # fmt: skip
    if not out:
        out.append(Check("peers", True, f"{len(peers)} registered, none weakened"))
    return out


def _mode(path: Path, allowed: int) -> Check | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    ok = mode & ~allowed == 0
    return Check(f"mode of {path.name}", ok, f"{mode:04o} (at most {allowed:04o})", "high")


def check_settings(settings: Settings, data_dir: Path) -> list[Check]:
    """Lint the settings and the data directory's file modes."""
    d, t, sec, st = settings.dicom, settings.tls, settings.security, settings.storage
    out: list[Check] = []
    if not d.cleartext:
        out.append(Check("cleartext DICOM", True, "disabled (TLS only)"))
    elif is_loopback(d.bind):
        out.append(Check("cleartext DICOM", True, f"loopback only ({d.bind})"))
    else:
        out.append(Check("cleartext DICOM", False,
                         f"on {d.bind} from {', '.join(d.cleartext_networks)}: traffic and "
                         "AE titles readable on those networks; prefer TLS", "medium"))  # fmt: skip
    out.append(Check("DICOM-TLS", t.enabled, "enabled" if t.enabled else
                     "disabled: set tls.enabled = true", "high"))  # fmt: skip
    if t.enabled:
        cert = Path(t.cert_file) if t.cert_file else data_dir / "tls" / "server.crt"
        try:
            note = expiry_note(cert)
            ok = "WARNING" not in note and "EXPIRED" not in note
            out.append(
                Check("TLS certificate", ok, note, "high" if "EXPIRED" in note else "medium")
            )
            certificate_expiry(cert)
        except (OSError, ValueError):
            out.append(Check("TLS certificate", False, f"{cert} missing or unreadable", "high"))
    out.append(Check("passcodes over cleartext", not sec.allow_passcode_without_tls,
                     "refused" if not sec.allow_passcode_without_tls else
                     "allowed: passwords cross the network readable", "high"))  # fmt: skip
    weaker = (
        sec.lockout_threshold > DEFAULT_SECURITY.lockout_threshold
        or sec.lockout_duration < DEFAULT_SECURITY.lockout_duration
        or sec.lockout_window < DEFAULT_SECURITY.lockout_window
    )
    out.append(Check("lockout", not weaker,
                     f"{sec.lockout_threshold} failures in {sec.lockout_window:.0f} s lock for "
                     f"{sec.lockout_duration:.0f} s", "medium"))  # fmt: skip
    out.append(Check("durability (fsync)", st.fsync, "on" if st.fsync else
                     "off: acknowledged images can be lost in a crash", "high"))  # fmt: skip
    for path, allowed in (
        (data_dir, 0o700),
        (data_dir / SETTINGS_FILE, 0o600),
        (data_dir / "index.sqlite", 0o600),
        (data_dir / "tls" / "ca.key", 0o600),
        (data_dir / "tls" / "server.key", 0o600),
        (data_dir / "secrets", 0o700),
    ):
        if (c := _mode(path, allowed)) is not None:
            out.append(c)
    return out


def lint(settings: Settings, data_dir: Path, peers: list[Peer]) -> list[Check]:
    """The settings, file modes and peers checked (``pacsvault doctor`` before it probes
    the listeners, and ``GET /api/doctor``)."""
    return check_settings(settings, data_dir) + check_peers(peers)
