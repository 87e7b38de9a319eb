"""TLS material and contexts: the site's local CA, its server certificate, peer certificates.

The server context follows the BCP 195 profile of PS3.15 Annex B.9: TLS 1.2 at
least (1.3 preferred), forward-secret AEAD suites only, no compression and no
renegotiation. Client certificates are requested and, when presented, must chain
to the local CA or a configured one; which peers must present one is decided by
the AccessPolicy, per peer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
TLS12_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20"
EXPIRY_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsInfo:
    """What the TLS layer established for one connection."""

    version: str
    peer_cert_der: bytes | None

    @property
    def peer_fingerprint(self) -> str | None:
        return fingerprint(self.peer_cert_der) if self.peer_cert_der else None

    @property
    def peer_common_name(self) -> str | None:
        if not self.peer_cert_der:
            return None
        cert = x509.load_der_x509_certificate(self.peer_cert_der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint of a DER certificate, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacsvault site"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class LocalCA:
    """The site's own certificate authority, in ``DATA/tls``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / TLS_DIR

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    def exists(self) -> bool:
        return (self.dir / CA_KEY).exists() and self.cert_path.exists()

    def create(self, site_name: str) -> None:
        """Create the CA (EC P-256, 10 years) unless it exists."""
        if self.exists():
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"pacsvault local CA {site_name}")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        _write_private(self.dir / CA_KEY, _key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key((self.dir / CA_KEY).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def issue(
        self,
        common_name: str,
        *,
        server: bool,
        dns_names: list[str] = (),  # type: ignore[assignment]
        addresses: list[str] = (),  # type: ignore[assignment]
        days: int = 825,
    ) -> tuple[bytes, bytes]:
        """Issue a certificate; returns (certificate PEM, private key PEM)."""
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def ensure_server_cert(self, hostnames: list[str], addresses: list[str]) -> None:
        """Issue the server certificate for these names unless one exists."""
        if (self.dir / SERVER_CERT).exists():
            return
        cert, key = self.issue(
            hostnames[0] if hostnames else "pacsvault",
            server=True,
            dns_names=hostnames,
            addresses=addresses,
        )
        _write_private(self.dir / SERVER_KEY, key)
        (self.dir / SERVER_CERT).write_bytes(cert)

    def issue_peer(self, name: str, out_dir: Path) -> list[Path]:
        """Write ``NAME.key``, ``NAME.crt`` (CN = peer name) and ``ca.crt`` into *out_dir*."""
        cert, key = self.issue(name, server=False)
        out_dir.mkdir(parents=True, exist_ok=True)
        key_path, cert_path, ca_path = (
            out_dir / f"{name}.key",
            out_dir / f"{name}.crt",
            out_dir / CA_CERT,
        )
        _write_private(key_path, key)
        cert_path.write_bytes(cert)
        ca_path.write_bytes(self.cert_path.read_bytes())
        return [key_path, cert_path, ca_path]


def server_context(cert_file: Path, key_file: Path, client_cas: list[Path]) -> ssl.SSLContext:
    """The BCP 195 server context: TLS >= 1.2, FS AEAD suites, client certificates requested."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_SUITES)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert_file, key_file)
    for ca in client_cas:
        ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def https_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The HTTPS server context: the same BCP 195 profile, no client certificates, and
    HTTP/1.1 offered by ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_SUITES)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def certificate_expiry(path: Path) -> dt.datetime:
    """The notAfter time of the PEM certificate at *path*."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc


def expiry_note(path: Path) -> str:
    """'valid until ...' plus a warning within 30 days of expiry."""
    until = certificate_expiry(path)
    left = until - _now()
    note = f"valid until {until:%Y-%m-%d}"
    if left < dt.timedelta(0):
        return note + " -- EXPIRED"
    if left < EXPIRY_WARNING:
        return note + f" -- WARNING: expires in {left.days} days"
    return note
