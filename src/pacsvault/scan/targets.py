"""Scan targets: `host`, `host:port`, `AET@host:port`, `dicom://...` URLs, CIDR ranges."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from pacsvault.dicom.ae import AE_TITLE_RULE, is_ae_title

DEFAULT_DICOM_PORTS = (104, 11112, 4242, 2761, 2762)
DEFAULT_WEB_PORTS = (("http", 8042), ("http", 80), ("http", 8080), ("https", 443), ("https", 8443))
MAX_HOSTS = 256  # a CIDR range larger than this is refused


class TargetError(ValueError):
    """A target that cannot be scanned as given; the message says why."""


@dataclass(frozen=True)
class Target:
    """One host and port to probe, with the called AE title if the operator knows it."""

    host: str
    port: int
    aet: str | None = None
    scheme: str = "dicom"  # dicom, http or https
    explicit: bool = True  # named by the operator (not a default-port sweep)

    def __str__(self) -> str:
        prefix = f"{self.aet}@" if self.aet else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme != "dicom":
            return f"{self.scheme}://{host}:{self.port}"
        return f"{prefix}{host}:{self.port}"


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, None


def parse_target(text: str, ports: tuple[int, ...] = DEFAULT_DICOM_PORTS) -> list[Target]:
    """Expand one target argument. Raises :class:`TargetError` with a clear reason."""
    text = text.strip()
    aet = None
    if "://" in text:
        url = urlsplit(text)
        if not url.hostname:
            raise TargetError(f"{text}: no host in URL")
        if url.scheme in ("http", "https"):
            default = 443 if url.scheme == "https" else 80
            return [Target(url.hostname, url.port or default, None, url.scheme)]
        return [Target(url.hostname, url.port or ports[0], url.username)]
    if "@" in text:
        aet, _, text = text.partition("@")
        if not is_ae_title(aet):
            raise TargetError(AE_TITLE_RULE)
    try:
        host, port = _split_host_port(text)
    except ValueError:
        raise TargetError(f"{text}: invalid port") from None
    if port is not None and not 0 < port < 65536:
        raise TargetError(f"{text}: invalid port")
    chosen = (port,) if port else ports
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise TargetError(f"{host}: invalid CIDR range") from None
        if net.num_addresses > MAX_HOSTS:
            raise TargetError(
                f"{host} has {net.num_addresses} addresses; at most {MAX_HOSTS} per run"
            )
        hosts = [str(h) for h in (net.hosts() if net.num_addresses > 2 else net)]
    else:
        hosts = [host]
    if port:
        return [Target(h, port, aet) for h in hosts]
    sweep = [Target(h, p, aet, explicit=False) for h in hosts for p in chosen]
    return sweep + [
        Target(h, p, None, scheme, explicit=False) for h in hosts for scheme, p in DEFAULT_WEB_PORTS
    ]


def is_local(host: str) -> bool:
    """True for loopback targets, which need no --authorized."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False
