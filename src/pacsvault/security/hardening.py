"""Settings lint: every way this installation is weaker than pacsvault's defaults.

Used by ``pacsvault doctor``. Each check compares one setting (or peer, or file
mode) with the secure default and says what is weakened and how to restore it.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pacsvault.config import SETTINGS_FILE, SecuritySettings, Settings, is_loopback, redact_url
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


_TLS_SSLMODES = ("require", "verify-ca", "verify-full")
_LOCAL_HOSTS = ("", "localhost")


def _is_local_host(host: str) -> bool:
    """A loopback address, ``localhost``, or a unix socket directory (``/...``)."""
    if host in _LOCAL_HOSTS or host.startswith("/"):
        return True
    try:
        return is_loopback(host.strip("[]"))
    except ValueError:
        return False


def check_index_connection(url: str) -> list[Check]:
    """Is the index reached over an encrypted, authenticated connection? (URL shown redacted.)

    PostgreSQL on another machine without ``sslmode=require`` (or ``verify-ca``,
    ``verify-full``) sends every patient's attributes across the network readable;
    ``require`` encrypts but does not check who answers.
    """
    if not url or urlsplit(url).scheme == "sqlite":
        return [Check("index connection", True, "SQLite in the data directory")]
    parts = urlsplit(url)
    params = {k.lower(): v for k, v in parse_qsl(parts.query)}
    hosts = [h for h in (params.get("host") or "").split(",") if h]
    netloc = parts.netloc.rpartition("@")[2]
    for item in netloc.split(","):
        host = item[: item.rindex("]") + 1] if item.startswith("[") else item.partition(":")[0]
        hosts.append(host)
    shown = redact_url(url)
    out: list[Check] = []
    sslmode = params.get("sslmode", "prefer")
    if all(_is_local_host(h) for h in hosts):
        out.append(Check("index connection", True, f"{shown}: this machine only"))
    elif sslmode not in _TLS_SSLMODES:
        out.append(Check("index connection", False,
                         f"{shown}: cleartext possible to a remote PostgreSQL (sslmode={sslmode}); "
                         "add ?sslmode=verify-full", "medium"))  # fmt: skip
    elif sslmode == "require":
        out.append(Check("index connection", False, f"{shown}: TLS, but the server's "
                         "certificate is not checked; use sslmode=verify-full", "low"))  # fmt: skip
    else:
        out.append(Check("index connection", True, f"{shown}: TLS ({sslmode})"))
    if parts.password or "password" in params:
        out.append(Check("index password", False, "written in the settings file; prefer "
                         "PGPASSWORD, ~/.pgpass or ?passfile=", "low"))  # fmt: skip
    return out


def check_blob_connection(settings: Settings, env: Mapping[str, str]) -> list[Check]:
    """Is object storage reached over HTTPS? (S3 only; files need no network.)"""
    blobs = settings.blobs
    if not blobs.url:
        return [Check("object storage", True, "files in the data directory")]
    endpoint = blobs.endpoint or env.get("AWS_ENDPOINT_URL", "")
    if not endpoint:
        return [Check("object storage", True, f"{blobs.url} on AWS S3 (HTTPS)")]
    parts = urlsplit(endpoint)
    shown = f"{blobs.url} at {redact_url(endpoint)}"
    if parts.scheme == "https":
        return [Check("object storage", True, f"{shown} (HTTPS)")]
    if _is_local_host(parts.hostname or ""):
        return [Check("object storage", True, f"{shown}: this machine only")]
    return [Check("object storage", False, f"{shown}: cleartext HTTP to a remote endpoint; "
                  "objects and credentials' signatures cross the network readable; use "
                  "https://", "medium")]  # fmt: skip


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
    out += check_index_connection(settings.index_url)
    out += check_blob_connection(settings, os.environ)
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
