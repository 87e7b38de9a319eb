"""The server certificate of a TLS port (DICOM-TLS or HTTPS), judged without trusting it.

The certificate is fetched with verification off (an untrusted certificate is a result,
never a failure) and described in findings: subject and issuer, self-signed or not,
validity and days left, key type and size, signature algorithm, subject alternative
names, and whether the name scanned is among them.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from dataclasses import asdict, dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Finding

#: Signature hashes no longer acceptable for certificates (CA/Browser Forum, BCP 195).
WEAK_HASHES = frozenset({"md2", "md4", "md5", "sha1"})
#: Smallest acceptable key sizes in bits (BCP 195 / NIST SP 800-131A).
MIN_BITS = {"RSA": 2048, "DSA": 2048, "EC": 224}
EXPIRY_WARNING_DAYS = 30


@dataclass
class CertFacts:
    """What the scanner reports about a certificate (nothing in it is patient data)."""

    subject: str
    issuer: str
    self_signed: bool
    not_before: str
    not_after: str
    days_left: int
    key_type: str
    key_bits: int
    signature_algorithm: str
    signature_hash: str
    subject_alt_names: list[str]
    sha256: str


def _key(cert: x509.Certificate) -> tuple[str, int]:
    """(type, size in bits) of the certificate's public key."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unknown", 0
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    return type(key).__name__, 0


def _names(cert: x509.Certificate) -> list[str]:
    """The subject alternative names, as ``DNS:name`` and ``IP:address``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    return names + [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]


def _self_signed(cert: x509.Certificate) -> bool:
    """True when the certificate is its own issuer: same name, and signed by its own key
    (when that can be checked: SHA-1 signatures, for one, cannot be verified here)."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return True
    return True


def _hash_name(cert: x509.Certificate) -> str:
    """The signature's hash algorithm ('' for Ed25519/Ed448, which have none)."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unknown"
    return algorithm.name if algorithm is not None else ""


def describe(der: bytes, now: dt.datetime | None = None) -> CertFacts:
    """The facts of a DER certificate at *now* (UTC; default: the current time)."""
    cert = x509.load_der_x509_certificate(der)
    now = now or dt.datetime.now(dt.UTC)
    key_type, key_bits = _key(cert)
    oid = cert.signature_algorithm_oid
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        self_signed=_self_signed(cert),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        days_left=(cert.not_valid_after_utc - now).days,
        key_type=key_type,
        key_bits=key_bits,
        signature_algorithm=getattr(oid, "_name", "") or oid.dotted_string,
        signature_hash=_hash_name(cert),
        subject_alt_names=_names(cert),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def names_host(der: bytes, host: str) -> bool:
    """True when the certificate names *host*: its SAN, or its CN when it has no SAN."""
    cert = x509.load_der_x509_certificate(der)
    names = _names(cert)
    if not names:
        names = [f"DNS:{a.value}" for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        return f"IP:{ipaddress.ip_address(host)}" in names
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    for name in (n[4:].lower().rstrip(".") for n in names if n.startswith("DNS:")):
        if name == host:
            return True
        if name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in name[2:]:
            return True
    return False


def certificate_findings(
    der: bytes, where: str, host: str, now: dt.datetime | None = None
) -> list[Finding]:
    """TLS-CERT with the certificate's facts, plus one finding per weakness found."""
    try:
        facts = describe(der, now)
    except ValueError:
        return []
    now = now or dt.datetime.now(dt.UTC)
    details = asdict(facts)
    out = [finding("TLS-CERT", where, _summary(facts), details=details)]
    not_before = dt.datetime.fromisoformat(facts.not_before)
    if facts.days_left < 0:
        ago = f"expired {facts.not_after[:10]} ({-facts.days_left} days ago)"
        out.append(finding("TLS-CERT-EXPIRED", where, ago))
    elif not_before > now:
        early = f"not valid before {facts.not_before[:10]}"
        out.append(finding("TLS-CERT-EXPIRED", where, early, variant="not yet valid"))
    elif facts.days_left < EXPIRY_WARNING_DAYS:
        left = f"expires {facts.not_after[:10]} ({facts.days_left} days left)"
        out.append(finding("TLS-CERT-EXPIRING", where, left))
    if facts.self_signed:
        same = f"issuer = subject = {facts.subject or '(empty)'}"
        out.append(finding("TLS-CERT-SELF-SIGNED", where, same))
    minimum = MIN_BITS.get(facts.key_type)
    if minimum and facts.key_bits < minimum:
        size = f"{facts.key_bits}-bit {facts.key_type} key (at least {minimum} bits)"
        out.append(finding("TLS-CERT-WEAK-KEY", where, size))
    if facts.signature_hash in WEAK_HASHES:
        signed = f"signed with {facts.signature_algorithm}"
        out.append(finding("TLS-CERT-WEAK-SIGNATURE", where, signed))
    if not names_host(der, host):
        shown = ", ".join(facts.subject_alt_names) or f"no SAN; subject {facts.subject}"
        missing = f"the certificate does not name {host} ({shown})"
        out.append(finding("TLS-CERT-NAME-MISMATCH", where, missing))
    return out


def _summary(facts: CertFacts) -> str:
    """One line: key, signature, validity, issuer."""
    issuer = "self-signed" if facts.self_signed else f"issued by {facts.issuer or '(empty)'}"
    if facts.days_left < 0:
        validity = f"expired {facts.not_after[:10]}"
    else:
        validity = f"valid until {facts.not_after[:10]} ({facts.days_left} days left)"
    key = f"{facts.key_type} {facts.key_bits}-bit key"
    return f"{key}, {facts.signature_algorithm}, {validity}, {issuer}"


@functools.cache
def throwaway_client_certificate() -> tuple[bytes, bytes]:
    """(certificate, key) in PEM: a self-signed P-256 certificate that no server trusts.

    Offered only to see how far a server that demands client certificates gets in a
    handshake (its refusal of this certificate shows it accepted the protocol version).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsvault-scan throwaway")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
