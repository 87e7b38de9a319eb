"""The composition root: one data directory opened as settings, index, blobs, archive and policy.

Every command builds what it needs from here, so the wiring exists exactly once.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from pacsvault.config import (
    SETTINGS_FILE,
    DicomSettings,
    Settings,
    load_settings,
    settings_template,
)
from pacsvault.security.audit_keys import load_signer
from pacsvault.security.audit_log import CheckpointLog
from pacsvault.security.authn import IdentityVerifier
from pacsvault.security.lockout import Lockout
from pacsvault.security.peers import PeerRegistry
from pacsvault.security.policy import AccessPolicy
from pacsvault.security.secrets import pseudonymizer
from pacsvault.security.tls import SERVER_CERT, SERVER_KEY, LocalCA, server_context
from pacsvault.security.users import UserRegistry
from pacsvault.storage.archive import Archive
from pacsvault.storage.blobstore import FileBlobStore
from pacsvault.storage.index import Index

INDEX_FILE = "index.sqlite"


class SiteError(Exception):
    """The data directory cannot be created or opened; the message says why."""


def index_url(data_dir: Path, settings: Settings) -> str:
    return settings.storage.index_url or f"sqlite:///{data_dir / INDEX_FILE}"


@dataclass
class Site:
    """An opened data directory."""

    data_dir: Path
    settings: Settings
    index: Index
    blobs: FileBlobStore
    archive: Archive
    peers: PeerRegistry

    @property
    def users(self) -> UserRegistry:
        return UserRegistry(self.index)

    @property
    def ca(self) -> LocalCA:
        return LocalCA(self.data_dir)

    def lockout(self) -> Lockout:
        sec = self.settings.security
        return Lockout(
            self.index,
            self.archive.audit,
            threshold=sec.lockout_threshold,
            window=sec.lockout_window,
            duration=sec.lockout_duration,
        )

    def policy(self) -> AccessPolicy:
        """The AccessPolicy for this site's DICOM listeners."""
        return AccessPolicy(
            self.peers,
            self.settings.dicom.ae_title,
            self.archive.audit,
            cleartext_networks=self.settings.dicom.cleartext_networks,
            lockout=self.lockout(),
            identities=IdentityVerifier(
                self.users, self.settings.security, self.settings.dicom.ae_title
            ),
        )

    def tls_files(self) -> tuple[Path, Path]:
        """(certificate, key) of the DICOM-TLS listener."""
        tls = self.settings.tls
        if tls.cert_file:
            return Path(tls.cert_file), Path(tls.key_file)
        return self.ca.dir / SERVER_CERT, self.ca.dir / SERVER_KEY

    def tls_context(self) -> ssl.SSLContext:
        """The server TLS context (BCP 195), trusting the local CA and configured CAs."""
        cert, key = self.tls_files()
        cas = [self.ca.cert_path] + [Path(p) for p in self.settings.tls.client_ca_files]
        return server_context(cert, key, [c for c in cas if c.exists()])

    def close(self) -> None:
        self.archive.close()
        self.index.close()


def open_site(data_dir: Path, settings: Settings | None = None, *, new_site: bool = False) -> Site:
    """Open an initialised data directory (``settings`` overrides the file, e.g. for flags).

    Makes sure the audit trail has its signed genesis: written as the normal start when
    *new_site* (``init``), or once for an index from an older release (see
    ``AuditTrail.ensure_genesis`` for when it is deliberately not written).
    """
    settings = settings or load_settings(data_dir)
    index = Index(index_url(data_dir, settings))
    blobs = FileBlobStore(data_dir / settings.storage.blob_dir, fsync=settings.storage.fsync)
    blobs.create()
    index.create()
    archive = Archive(
        index,
        blobs,
        duplicate_policy=settings.dicom.duplicate_policy,
        pseudonyms=pseudonymizer(data_dir),
        audit_signer=load_signer(data_dir),
        checkpoint_every=settings.audit.checkpoint_every,
        max_object_size=settings.storage.max_object_size,
        checkpoint_log=CheckpointLog(data_dir),
    )
    archive.audit.ensure_genesis(new_site=new_site)
    return Site(data_dir, settings, index, blobs, archive, PeerRegistry(index))


def init_site(data_dir: Path, ae_title: str) -> Site:
    """Create a new data directory (mode 0700) with settings (0600), index and blob store."""
    settings_path = data_dir / SETTINGS_FILE
    if settings_path.exists():
        raise SiteError(f"{data_dir} is already initialised")
    try:
        DicomSettings(ae_title=ae_title)
    except ValueError as exc:
        raise SiteError(f"invalid AE title: {exc.errors()[0]['msg']}") from None  # type: ignore[attr-defined]
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    text = settings_template(ae_title)
    fd = os.open(settings_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    site = open_site(data_dir, new_site=True)
    site.ca.create(ae_title)
    site.ca.ensure_server_cert(site.settings.tls.hostnames, site.settings.tls.addresses)
    index_file = data_dir / INDEX_FILE
    if index_file.exists():
        os.chmod(index_file, 0o600)
    return site
