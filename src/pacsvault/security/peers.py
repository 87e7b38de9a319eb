"""Registered DICOM peers: who may associate, from where, for which services.

The model and its validation; the peers themselves live in the index (storage.peers).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from pacsvault.dicom import ae


class Service(StrEnum):
    """A DICOM service a peer may be granted."""

    ECHO = "echo"
    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"


class TlsMode(StrEnum):
    """Whether a peer must, may or must not use DICOM over TLS."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    OFF = "off"


class IdentityMode(StrEnum):
    """Whether a peer must present a DICOM user identity (username+passcode or JWT)."""

    REQUIRED = "required"
    OPTIONAL = "optional"


CLIENT_CERT_CA = "ca"  # any certificate from a trusted CA whose CN is the peer name
CLIENT_CERT_NONE = "none"  # no client certificate needed
_PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_client_cert(value: str) -> str:
    """Validate a client certificate requirement: ``ca``, ``none`` or ``sha256:<hex>``."""
    value = value.strip().lower()
    if value in (CLIENT_CERT_CA, CLIENT_CERT_NONE) or _PIN_RE.match(value):
        return value
    raise PeerError("client certificate must be 'ca', 'none' or 'sha256:<64 hex digits>'")


class PeerError(ValueError):
    """Invalid peer definition or unknown peer."""


class UnknownPeer(PeerError):
    """There is no peer of that name."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Peer:
    """A registered peer (an Annex H 'network AE' of a remote device)."""

    name: str
    ae_title: str
    host: str  # an address or a CIDR network
    port: int | None
    services: frozenset[Service]
    tls: TlsMode = TlsMode.OPTIONAL
    client_cert: str = CLIENT_CERT_CA
    user_identity: IdentityMode = IdentityMode.OPTIONAL

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.host, strict=False)

    def matches_address(self, address: str) -> bool:
        """True when *address* is within this peer's host or network."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return ip in self.network()

    @property
    def can_receive(self) -> bool:
        """True when we can open associations to it (a C-MOVE destination)."""
        return self.port is not None and self.network().num_addresses == 1


def parse_services(text: str) -> frozenset[Service]:
    """Parse ``echo,store,...``; raises PeerError naming an unknown service."""
    out = set()
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            out.add(Service(part))
        except ValueError:
            known = ",".join(s.value for s in Service)
            raise PeerError(f"unknown service '{part}' (known: {known})") from None
    return frozenset(out)


def validate_ae_title(aet: str) -> str:
    """*aet* without surrounding spaces; raises PeerError unless it is an AE title."""
    try:
        return ae.validate_ae_title(aet)
    except ValueError as exc:
        raise PeerError(str(exc)) from None


def new_peer(
    name: str,
    ae_title: str,
    host: str,
    port: int | None,
    services: frozenset[Service],
    *,
    tls: str = TlsMode.OPTIONAL,
    client_cert: str = CLIENT_CERT_CA,
    user_identity: str = IdentityMode.OPTIONAL,
) -> Peer:
    """A validated peer definition; raises PeerError naming what is wrong."""
    if not _NAME_RE.match(name):
        raise PeerError("a peer name is 1-64 letters, digits, '.', '_' or '-'")
    ae_title = validate_ae_title(ae_title)
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise PeerError("host must be an IP address or a CIDR network") from None
    if port is not None and not 1 <= port <= 65535:
        raise PeerError("port must be 1-65535")
    if not services:
        raise PeerError("grant at least one service with --allow")
    try:
        tls_mode, id_mode = TlsMode(tls), IdentityMode(user_identity)
    except ValueError:
        why = "--tls is required|optional|off, --user-identity required|optional"
        raise PeerError(why) from None
    return Peer(
        name, ae_title, host, port, services, tls_mode, parse_client_cert(client_cert), id_mode
    )


def peer_from_row(row: object) -> Peer:
    """A Peer from a stored row (a mapping of the peers table's columns)."""
    r = dict(row)  # type: ignore[call-overload]
    return Peer(
        r["name"],
        r["ae_title"],
        r["host"],
        r["port"],
        parse_services(r["services"]),
        TlsMode(r["tls"]),
        r["client_cert"],
        IdentityMode(r["user_identity"]),
    )
