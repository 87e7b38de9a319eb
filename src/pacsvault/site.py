"""The composition root: one data directory opened, once per process, as a :class:`Site`.

A Site owns the index and its single writer, the blob store, the audit trail, the
access policy, the archive and the administration services, and installs the log
filter; every command and ``serve`` use one, as a context manager. Nothing else
wires these parts together.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from pacsvault.config import (
    SETTINGS_FILE,
    DicomSettings,
    Settings,
    load_settings,
    redact_url,
    settings_template,
)
from pacsvault.logsafe import install as install_log_filter
from pacsvault.security.audit_keys import load_signer
from pacsvault.security.audit_log import CheckpointLog
from pacsvault.security.authn import IdentityVerifier
from pacsvault.security.identity import Principal
from pacsvault.security.oidc import OidcVerifier
from pacsvault.security.policy import AccessPolicy
from pacsvault.security.secrets import pseudonymizer
from pacsvault.security.tls import (
    SERVER_CERT,
    SERVER_KEY,
    LocalCA,
    expiry_note,
    server_context,
)
from pacsvault.storage.admin import Administration
from pacsvault.storage.archive import Archive
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.blobstore import BlobStore, FileBlobStore
from pacsvault.storage.index import Index
from pacsvault.storage.lockout import Lockout
from pacsvault.storage.peers import PeerRepository
from pacsvault.storage.users import UserRepository
from pacsvault.storage.web_sessions import WebSessionRepository
from pacsvault.storage.writer import IndexWriter

INDEX_FILE = "index.sqlite"


class SiteError(Exception):
    """The data directory cannot be created or opened; the message says why."""


def _oidc(settings: Settings) -> OidcVerifier | None:
    web = settings.web
    if not web.oidc_issuer:
        return None
    return OidcVerifier(web.oidc_issuer, web.oidc_audience, jwks_url=web.oidc_jwks_url,
                        role_claim=web.oidc_role_claim, roles=web.oidc_roles)  # fmt: skip


@dataclass(frozen=True)
class Listener:
    """A listener as the settings (with ``serve``'s overrides) describe it."""

    kind: str  # dicom, dicom-tls, https, http-redirect
    address: str
    port: int
    enabled: bool


@dataclass(frozen=True)
class SiteStatus:
    """The site at a glance (``pacsvault status``, ``GET /api/status``): never patient data."""

    counts: dict[str, int]  # patients, studies, series, instances, bytes
    identity_conflicts: int  # studies whose patient name or birth date differs from the first
    listeners: list[Listener]
    certificate: str  # the TLS server certificate's expiry, or why it cannot be read
    peers: int
    users: int
    lockouts: list[str]  # the keys locked out now


def index_url(data_dir: Path, settings: Settings) -> str:
    """The index's URL: ``index.url`` (or the older ``storage.index_url``), else the
    SQLite file in the data directory. It may hold a password: show it only through
    :func:`~pacsvault.config.redact_url`."""
    return settings.index_url or f"sqlite:///{data_dir / INDEX_FILE}"


def open_blob_store(data_dir: Path, settings: Settings) -> BlobStore:
    """The blob store the settings name: S3 for ``blobs.url``, else files in *data_dir*."""
    storage, blobs = settings.storage, settings.blobs
    if not blobs.url:
        return FileBlobStore(data_dir / storage.blob_dir, fsync=storage.fsync)
    from pacsvault.storage.s3blobs import S3BlobStore

    try:
        return S3BlobStore(
            blobs.url,
            data_dir / storage.blob_dir / "tmp",
            endpoint_url=blobs.endpoint or None,
            region=blobs.region or None,
        )
    except (ValueError, RuntimeError) as exc:
        raise SiteError(f"blobs.url: {exc}") from None


def _open_index(url: str) -> Index:
    """The index at *url*, its schema made current; unreachable is a SiteError (no secret)."""
    try:
        index = Index(url)
    except ValueError as exc:
        raise SiteError(f"index.url: {exc}") from None
    try:
        index.create()
    except OperationalError as exc:
        index.close()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise SiteError(f"cannot open the index at {redact_url(url)}: {reason}") from None
    except BaseException:
        index.close()
        raise
    return index


class Site:
    """An opened data directory and everything that serves it (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        settings: Settings,
        *,
        new_site: bool = False,
        blobs: BlobStore | None = None,
    ) -> None:
        install_log_filter()
        self.data_dir = data_dir
        self.settings = settings
        if blobs is None:
            blobs = open_blob_store(data_dir, settings)
            blobs.create()
        self.blobs: BlobStore = blobs
        self.index = _open_index(index_url(data_dir, settings))
        self.writer = IndexWriter(self.index.engine)
        self.audit = AuditTrail(
            self.index,
            self.writer.submit,
            post=self.writer.post,
            signer=load_signer(data_dir),
            checkpoint_every=settings.audit.checkpoint_every,
            checkpoint_log=CheckpointLog(data_dir),
            chain=settings.index.node,
        )
        self.audit.ensure_genesis(new_site=new_site)
        self.peers = PeerRepository(self.index.engine)
        self.users = UserRepository(self.index.engine)
        self.web_sessions = WebSessionRepository(self.index.engine)
        sec = settings.security
        self.lockout = Lockout(
            self.index,
            self.audit,
            threshold=sec.lockout_threshold,
            window=sec.lockout_window,
            duration=sec.lockout_duration,
        )
        self.policy = AccessPolicy(
            ae_title=settings.dicom.ae_title,
            peers=self.peers,
            audit=self.audit,
            identities=IdentityVerifier(self.users, sec, settings.dicom.ae_title),
            lockout=self.lockout,
            shares=self.users,
            cleartext_networks=settings.dicom.cleartext_networks,
            web=self.web_sessions,
            session_idle=settings.web.session_idle,
            oidc=_oidc(settings),
        )
        self.archive = Archive(
            self.index,
            self.blobs,
            self.audit,
            self.writer,
            self.policy,
            duplicate_policy=settings.dicom.duplicate_policy,
            pseudonyms=pseudonymizer(data_dir),
            max_object_size=settings.storage.max_object_size,
        )
        self.ca = LocalCA(data_dir)
        self.admin = Administration(
            self.writer.submit, self.audit, self.policy, self.peers, self.users, self.ca,
            self.web_sessions,
        )  # fmt: skip
        self._closed = False

    def operator(self) -> Principal:
        """The operator running a command on this machine, as a principal."""
        return self.policy.operator()

    def tls_files(self) -> tuple[Path, Path]:
        """(certificate, key) of the DICOM-TLS listener."""
        tls = self.settings.tls
        if tls.cert_file:
            return Path(tls.cert_file), Path(tls.key_file)
        return self.ca.dir / SERVER_CERT, self.ca.dir / SERVER_KEY

    def status(self) -> SiteStatus:
        """Counts, listeners, certificate, peers, users and lockouts."""
        d, t, w = self.settings.dicom, self.settings.tls, self.settings.web
        try:
            certificate = expiry_note(self.tls_files()[0])
        except (OSError, ValueError):
            certificate = "certificate missing or unreadable"
        redirect = w.enabled and bool(w.http_redirect_port)
        return SiteStatus(
            counts=self.archive.statistics(),
            identity_conflicts=self.index.identity_conflicts(),
            listeners=[
                Listener("dicom", d.bind, d.port, d.cleartext),
                Listener("dicom-tls", d.bind, t.port, t.enabled),
                Listener("https", d.bind, w.port, w.enabled),
                Listener("http-redirect", d.bind, w.http_redirect_port, redirect),
            ],
            certificate=certificate,
            peers=len(self.peers.list()),
            users=len(self.users.list()),
            lockouts=[e.key for e in self.lockout.entries()],
        )

    def tls_context(self) -> ssl.SSLContext:
        """The server TLS context (BCP 195), trusting the local CA and configured CAs."""
        cert, key = self.tls_files()
        cas = [self.ca.cert_path] + [Path(p) for p in self.settings.tls.client_ca_files]
        return server_context(cert, key, [c for c in cas if c.exists()])

    def close(self) -> None:
        """Sign the audit head (a clean stop), finish pending writes, release the index."""
        if self._closed:
            return
        self._closed = True
        self.audit.close()
        self.writer.stop()
        self.index.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_site(
    data_dir: Path,
    settings: Settings | None = None,
    *,
    new_site: bool = False,
    blobs: BlobStore | None = None,
) -> Site:
    """Open an initialised data directory (``settings`` overrides the file, e.g. for flags).

    Makes sure the audit trail has its signed genesis: written as the normal start when
    *new_site* (``init``), or once for an index from an older release (see
    ``AuditTrail.ensure_genesis`` for when it is deliberately not written).
    """
    return Site(data_dir, settings or load_settings(data_dir), new_site=new_site, blobs=blobs)


def init_site(data_dir: Path, ae_title: str, *, index_url: str = "", blob_url: str = "") -> Site:
    """Create a new data directory (mode 0700) with settings (0600), index and blob store.

    *index_url* and *blob_url* (``index.url``, ``blobs.url``) put the index in PostgreSQL
    and the objects in S3; they are checked before anything is written.
    """
    settings_path = data_dir / SETTINGS_FILE
    if settings_path.exists():
        raise SiteError(f"{data_dir} is already initialised")
    try:
        DicomSettings(ae_title=ae_title)
    except ValueError as exc:
        raise SiteError(f"invalid AE title: {exc.errors()[0]['msg']}") from None  # type: ignore[attr-defined]
    text = settings_template(ae_title, index_url=index_url, blob_url=blob_url)
    try:
        Settings.model_validate(tomllib.loads(text))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SiteError(problems) from None
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
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
