"""Secrets kept in the data directory's ``secrets/`` folder (0700, files 0600).

Each secret is generated on first use and never leaves the machine. Loss of a
secret is not fatal (a new one is generated), but audit pseudonyms and
checkpoint signatures made with the old one can no longer be checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRETS_DIR = "secrets"


def secret_file(data_dir: Path, name: str, *, size: int = 32) -> bytes:
    """The bytes of secret *name*, generated (``size`` random bytes, mode 0600) if absent."""
    directory = data_dir / SECRETS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    value = secrets.token_bytes(size)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another process
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    return value


class Pseudonymizer:
    """Keyed, one-way references to patients for the audit trail (HMAC-SHA-256).

    The same patient ID always maps to the same reference on this site, so an
    accounting of disclosures can find a patient's records, but the trail itself
    holds no patient identifier.
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def ref(self, patient_id: str | None) -> str | None:
        if patient_id is None:
            return None
        return hmac.new(self._key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymizer(data_dir: Path) -> Pseudonymizer:
    """This site's pseudonymizer."""
    return Pseudonymizer(secret_file(data_dir, "patient-pseudonym.key"))
