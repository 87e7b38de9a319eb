"""The PROXY protocol v2 header a TCP load balancer puts before a connection's bytes.

Behind a balancer in TCP mode (HAProxy ``send-proxy-v2``, TLS passed through so that
client certificates still reach pacsvault), every connection comes from the
balancer's address; the peer allowlist, the cleartext networks and the per-address
admission limits need the client's. A balancer listed in ``dicom.trusted_proxies``
must send this header (the connection is closed otherwise); from any other address
the header is never read, so nobody can claim another address by sending one.

Only version 2 (binary, fixed-size address block) is accepted: it is what HAProxy,
AWS NLB and Envoy send, and it cannot be confused with a DICOM PDU.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_HEAD = struct.Struct("!12sBBH")  # signature, version/command, family/protocol, length
MAX_TLV_BYTES = 4096  # HAProxy sends a few TLVs (ALPN, SNI, unique id); more is not a balancer

_LOCAL, _PROXY = 0x20, 0x21
_TCP4, _TCP6 = 0x11, 0x21


class ProxyHeaderError(Exception):
    """The connection from a trusted balancer did not start with a valid PROXY v2 header."""


def is_trusted(address: str, networks: list[str]) -> bool:
    """True when *address* is in one of *networks* (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def parse(header: bytes, body: bytes) -> str | None:
    """The client address in a v2 header (*header*: 16 bytes, *body*: the rest).

    None for a LOCAL command (the balancer's own health check: the connection is the
    balancer's). Raises ProxyHeaderError for anything else than TCP over IPv4/IPv6.
    """
    sig, ver_cmd, family, _length = _HEAD.unpack(header)
    if sig != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    if ver_cmd == _LOCAL:
        return None
    if ver_cmd != _PROXY:
        raise ProxyHeaderError(f"unsupported PROXY version/command 0x{ver_cmd:02x}")
    if family == _TCP4 and len(body) >= 12:
        return str(ipaddress.IPv4Address(body[0:4]))
    if family == _TCP6 and len(body) >= 36:
        ip = ipaddress.IPv6Address(body[0:16])
        return str(ip.ipv4_mapped or ip)
    raise ProxyHeaderError(f"unsupported PROXY address family 0x{family:02x}")


def read_client_address(sock: socket.socket, timeout: float) -> str | None:
    """Read the header from *sock* (nothing more) and return the client address.

    None for a LOCAL command. Raises ProxyHeaderError on a bad or late header
    (*timeout* seconds for the whole header), OSError on a connection error.
    """
    deadline = time.monotonic() + timeout
    header = _read_exactly(sock, _HEAD.size, deadline)
    length = _HEAD.unpack(header)[3]
    if header[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY v2 signature")
    if length > 36 + MAX_TLV_BYTES:
        raise ProxyHeaderError(f"PROXY header of {length} bytes")
    return parse(header, _read_exactly(sock, length, deadline))


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    previous = sock.gettimeout()
    try:
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProxyHeaderError("PROXY header not received in time")
            sock.settimeout(left)
            try:
                chunk = sock.recv(n - len(buf))
            except TimeoutError:
                raise ProxyHeaderError("PROXY header not received in time") from None
            if not chunk:
                raise ProxyHeaderError("connection closed inside the PROXY header")
            buf += chunk
    finally:
        sock.settimeout(previous)
    return bytes(buf)


def encode(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A PROXY v2 header for *client* → *server* (what a balancer sends; used by tests)."""
    src, dst = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    if src.version == 4 and dst.version == 4:
        body = src.packed + dst.packed + struct.pack("!HH", client[1], server[1])
        family = _TCP4
    else:
        s6 = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        d6 = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
        body = s6.packed + d6.packed + struct.pack("!HH", client[1], server[1])
        family = _TCP6
    return _HEAD.pack(SIGNATURE, _PROXY, family, len(body)) + body
