"""Time-based one-time passwords (RFC 6238, SHA-1, 6 digits, 30 s): the second factor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote

STEP = 30
DIGITS = 6


def new_secret() -> str:
    """A random 160-bit secret, base32 without padding (what authenticator apps read)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    padded = secret.upper() + "=" * (-len(secret) % 8)
    return base64.b32decode(padded)


def code_at(secret: str, when: float) -> str:
    """The code for the 30-second step containing *when*."""
    counter = struct.pack(">Q", int(when // STEP))
    digest = hmac.new(_key(secret), counter, hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def verify(secret: str, code: str, *, now: float | None = None, window: int = 1) -> bool:
    """True when *code* is the code of this step or of *window* steps either side."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return False
    now = time.time() if now is None else now
    return any(
        hmac.compare_digest(code_at(secret, now + k * STEP), code)
        for k in range(-window, window + 1)
    )


def provisioning_uri(secret: str, account: str, issuer: str = "pacsvault") -> str:
    """The otpauth:// URI an authenticator app scans (as a QR code) or takes as text."""
    label = quote(f"{issuer}:{account}")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer)}&digits={DIGITS}"
