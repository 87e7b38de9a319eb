"""The key that signs audit checkpoints (Ed25519, kept in ``secrets/``, mode 0600)."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pacsvault.security.secrets import secret_file


class AuditSigner:
    """Signs and verifies checkpoint statements."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed[:32])

    def sign(self, message: bytes) -> str:
        """Base64 Ed25519 signature of *message*."""
        return base64.b64encode(self._key.sign(message)).decode("ascii")

    def verify(self, message: bytes, signature: str) -> bool:
        """True when *signature* is this key's signature of *message*."""
        try:
            self._key.public_key().verify(base64.b64decode(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def load_signer(data_dir: Path) -> AuditSigner:
    """This site's checkpoint signer (the key is generated on first use)."""
    return AuditSigner(secret_file(data_dir, "audit-signing.key"))
