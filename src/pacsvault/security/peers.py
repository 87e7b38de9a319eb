"""Registered DICOM peers: who may associate, from where, for which services."""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from pacsvault.storage import schema as s
from pacsvault.storage.index import Index


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
    aet = aet.strip()
    if not 1 <= len(aet) <= 16 or "\\" in aet or any(ord(c) < 0x20 or ord(c) > 0x7E for c in aet):
        raise PeerError("an AE title is 1-16 printable ASCII characters without backslash")
    return aet


class PeerRegistry:
    """Peers stored in the index, so every node and every command sees the same list."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(
        self,
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
            raise PeerError(
                "--tls is required|optional|off, --user-identity required|optional"
            ) from None
        peer = Peer(
            name, ae_title, host, port, services, tls_mode, parse_client_cert(client_cert), id_mode
        )
        try:
            with self.index.engine.begin() as conn:
                conn.execute(
                    insert(s.peers).values(
                        name=name,
                        ae_title=ae_title,
                        host=host,
                        port=port,
                        services=",".join(sorted(x.value for x in services)),
                        tls=peer.tls.value,
                        client_cert=peer.client_cert,
                        user_identity=peer.user_identity.value,
                        created_at=time.time(),
                    )
                )
        except IntegrityError:
            raise PeerError(f"a peer named '{name}' or with AE title '{ae_title}' exists") from None
        return peer

    def remove(self, name: str) -> None:
        with self.index.engine.begin() as conn:
            if conn.execute(delete(s.peers).where(s.peers.c.name == name)).rowcount == 0:
                raise PeerError(f"no peer named '{name}'")

    def get(self, name: str) -> Peer | None:
        with self.index.engine.connect() as conn:
            row = conn.execute(select(s.peers).where(s.peers.c.name == name)).mappings().first()
        return _peer(row) if row else None

    def list(self) -> list[Peer]:
        with self.index.engine.connect() as conn:
            rows = conn.execute(select(s.peers).order_by(s.peers.c.name)).mappings().all()
        return [_peer(r) for r in rows]

    def by_ae_title(self, ae_title: str) -> Peer | None:
        with self.index.engine.connect() as conn:
            row = (
                conn.execute(select(s.peers).where(s.peers.c.ae_title == ae_title.strip()))
                .mappings()
                .first()
            )
        return _peer(row) if row else None


def _peer(row: object) -> Peer:
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
