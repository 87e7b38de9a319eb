"""Settings: one validated model, read from ``pacsvault.toml`` in the data directory.

Every option has a safe default; the file written by ``pacsvault init`` documents
each one. Loading refuses unknown keys and bad values with a message that names
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pacsvault.dicom.ae import validate_ae_title

SETTINGS_FILE = "pacsvault.toml"
DEFAULT_DATA_DIR = "./pacsvault-data"


class DuplicatePolicy(StrEnum):
    """What C-STORE does with a SOP Instance UID that is already stored with other content."""

    KEEP_FIRST = "keep-first"  # keep the stored copy, answer with a warning
    REPLACE = "replace"  # store the new copy in place of the old one
    REJECT = "reject"  # refuse the new copy with a failure status


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DicomSettings(_Section):
    """The DIMSE listener."""

    ae_title: str = Field(default="PACSVAULT", min_length=1, max_length=16)
    bind: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    cleartext: bool = True
    cleartext_networks: list[str] = Field(default_factory=list)
    max_associations: int = Field(default=32, ge=1, le=1000)
    max_associations_per_peer: int = Field(default=8, ge=1, le=1000)
    max_pending: int = Field(default=64, ge=1, le=10000)
    max_pending_per_address: int = Field(default=4, ge=1, le=1000)
    max_pdu: int = Field(default=1048576, ge=0)
    max_query_size: int = Field(default=1048576, ge=1024)
    network_timeout: float = Field(default=60.0, gt=0)
    acse_timeout: float = Field(default=10.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    max_find_results: int = Field(default=0, ge=0)
    # Load balancers (addresses or networks) that send a PROXY v2 header with the client's
    # address; from them the header is required, from anyone else it is never read.
    trusted_proxies: list[str] = Field(default_factory=list)
    workers: int = Field(default=0, ge=0, le=256)  # DIMSE processes; 0: one per CPU

    @field_validator("max_pdu")
    @classmethod
    def _max_pdu(cls, v: int) -> int:
        if v and v < 4096:
            raise ValueError("max_pdu is 0 (unlimited) or at least 4096")
        return v

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return validate_ae_title(v)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("cleartext_networks", "trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class TlsSettings(_Section):
    """DICOM over TLS (PS3.15 Annex B, BCP 195 profile)."""

    enabled: bool = True
    port: int = Field(default=2762, ge=1, le=65535)
    cert_file: str = ""  # empty: the server certificate issued by the local CA
    key_file: str = ""
    client_ca_files: list[str] = Field(default_factory=list)  # trusted besides the local CA
    hostnames: list[str] = Field(default_factory=lambda: ["localhost"])
    addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            ipaddress.ip_address(a)
        return v


class SecuritySettings(_Section):
    """Identity checks and lockout."""

    lockout_threshold: int = Field(default=5, ge=1, le=1000)
    lockout_window: float = Field(default=900.0, gt=0)  # seconds
    lockout_duration: float = Field(default=900.0, gt=0)  # seconds
    allow_passcode_without_tls: bool = False
    jwt_hs256_key_file: str = ""
    jwt_rs256_public_key_file: str = ""
    jwt_audience: str = ""


_INDEX_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


def redact_url(url: str) -> str:
    """*url* with any password (in the authority or a ``password=`` parameter) masked,
    for logs, status and doctor: a database URL is shown nowhere else."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _SECRET_PARAMS for k, _v in pairs):
        query = "&".join(f"{k}=***" if k.lower() in _SECRET_PARAMS else f"{k}={v}"
                         for k, v in pairs)  # fmt: skip
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


_SECRET_PARAMS = ("password", "sslpassword")


def _check_index_url(url: str) -> str:
    if url and urlsplit(url).scheme not in _INDEX_SCHEMES:
        raise ValueError("must be empty (SQLite in the data directory), sqlite:///PATH or "
                         "postgresql://USER@HOST/DATABASE")  # fmt: skip
    return url


class IndexSettings(_Section):
    """The index database (see README "Scale-out")."""

    url: str = ""  # empty: SQLite file in the data directory
    # This node's name in a scale-out site (several `serve` nodes on one PostgreSQL
    # index): its audit records form a chain of their own. Empty: the site's first chain.
    node: str = Field(default="", max_length=32, pattern=r"^([a-z0-9][a-z0-9._-]*)?$")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_index_url(v)


class BlobSettings(_Section):
    """Where the stored objects live."""

    url: str = ""  # empty: the files below storage.blob_dir; "s3://bucket/prefix": S3
    endpoint: str = ""  # S3 endpoint (empty: AWS_ENDPOINT_URL, else AWS itself)
    region: str = ""  # S3 region (empty: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith("s3://"):
            raise ValueError("must be empty (files in the data directory) or s3://bucket/prefix")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urlsplit(v)
        if v and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError("must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials (use AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY)")  # fmt: skip
        return v


class StorageSettings(_Section):
    """Index and blob store."""

    index_url: str = ""  # the older name of index.url, still read
    blob_dir: str = "blobs"  # relative to the data directory
    fsync: bool = True
    max_object_size: int = Field(default=4 * 1024**3, ge=1024 * 1024)


class AuditSettings(_Section):
    """The audit trail: checkpoints and forwarding to a syslog collector."""

    checkpoint_every: int = Field(default=100, ge=1)
    syslog_host: str = ""  # empty: no forwarding
    syslog_port: int = Field(default=6514, ge=1, le=65535)
    syslog_ca_file: str = ""  # CA that signed the collector's certificate
    syslog_client_cert: str = ""  # optional client certificate (PEM) and key
    syslog_client_key: str = ""


class WebSettings(_Section):
    """The HTTPS server: DICOMweb, the viewer, the admin API (same bind rule as DICOM)."""

    enabled: bool = True
    port: int = Field(default=8443, ge=1, le=65535)
    # Plain HTTP that only redirects to HTTPS (0: none). Never serves content.
    http_redirect_port: int = Field(default=0, ge=0, le=65535)
    # Browser sessions: idle and absolute lifetime, seconds.
    session_idle: float = Field(default=900.0, gt=0)
    session_absolute: float = Field(default=43200.0, gt=0)
    # Limits per request and per client.
    max_header_bytes: int = Field(default=16384, ge=1024)
    max_body_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)  # STOW of big objects
    request_timeout: float = Field(default=300.0, gt=0)
    max_requests_per_client: int = Field(default=32, ge=1)
    query_page_size: int = Field(default=1000, ge=1)  # QIDO answers without ?limit
    max_query_results: int = Field(default=100000, ge=1)  # the most ?limit may ask
    # Origins allowed to call DICOMweb with a token (an OHIF deployment elsewhere).
    cors_origins: list[str] = Field(default_factory=list)
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # OpenID Connect bearer tokens: issuer URL, audience, JWKS URL (default from the
    # issuer's discovery document), the claim naming roles, and claim value -> role.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks_url: str = ""
    oidc_role_claim: str = "roles"
    oidc_roles: dict[str, str] = Field(default_factory=dict)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class Settings(_Section):
    """All of pacsvault's settings."""

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    web: WebSettings = Field(default_factory=WebSettings)


    @field_validator("storage")
    @classmethod
    def _legacy_index_url(cls, v: StorageSettings) -> StorageSettings:
        _check_index_url(v.index_url)
        return v

    @property
    def index_url(self) -> str:
        """The configured index URL (``index.url``, else the older ``storage.index_url``);
        empty for the SQLite file in the data directory."""
        return self.index.url or self.storage.index_url


class SettingsError(Exception):
    """The settings file is missing or invalid; the message says which key and why."""


def is_loopback(address: str) -> bool:
    """True when *address* is a loopback address."""
    return ipaddress.ip_address(address).is_loopback


def resolve_data_dir(arg: str | None) -> Path:
    """The data directory: the ``--data`` flag, else PACSVAULT_DATA, else the default."""
    return Path(arg or os.environ.get("PACSVAULT_DATA") or DEFAULT_DATA_DIR).resolve()


def load_settings(data_dir: Path) -> Settings:
    """Read and validate ``pacsvault.toml`` in *data_dir*."""
    path = data_dir / SETTINGS_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(
            f"{path} not found: run 'pacsvault --data {data_dir} init' first"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"{path}: {problems}") from None


def settings_template(ae_title: str, *, index_url: str = "", blob_url: str = "") -> str:
    """The documented settings file written by ``pacsvault init``."""
    d = DicomSettings()
    index_url, blob_url = json.dumps(index_url), json.dumps(blob_url)  # TOML basic strings
    return f'''# pacsvault settings. Every option is shown with its default.
# Changes take effect at the next `pacsvault serve`.

[dicom]
# Our AE title: associations calling any other title are rejected.
ae_title = "{ae_title}"
# Address the DICOM listener binds to. Loopback until you choose otherwise.
bind = "{d.bind}"
port = {d.port}
# Cleartext (non-TLS) DICOM listener; set false to serve DICOM over TLS only.
cleartext = true
# Cleartext (non-TLS) DICOM is refused on a non-loopback address unless the
# networks it may come from are listed here, e.g. ["10.1.2.0/24"].
# Associations from outside these networks are rejected.
cleartext_networks = []
# Simultaneous associations, in all and per peer; more are rejected (local limit
# exceeded), so one peer can never hold every slot.
max_associations = {d.max_associations}
max_associations_per_peer = {d.max_associations_per_peer}
# Connections still in their handshake, in all and per source address. Past either
# limit the oldest such connection is dropped, so silent sockets cannot lock out a
# registered peer.
max_pending = {d.max_pending}
max_pending_per_address = {d.max_pending_per_address}
# Largest PDU we receive (bytes; 0 means unlimited). Data is streamed to disk as it
# arrives, so this does not bound memory; a bigger PDU aborts the association.
max_pdu = {d.max_pdu}
# Largest C-FIND/C-GET/C-MOVE identifier (bytes); bigger ones are refused (0xA900).
max_query_size = {d.max_query_size}
# Seconds of silence before an established association is dropped.
network_timeout = {d.network_timeout}
# Seconds a new connection has to complete TLS and send its association request.
acse_timeout = {d.acse_timeout}
# Seconds to wait for a receiver's answer to a C-GET/C-MOVE sub-operation.
dimse_timeout = {d.dimse_timeout}
# A SOP Instance UID that is already stored, sent again with different content:
#   "keep-first" keeps the stored copy and answers with warning 0xB006,
#   "replace" stores the new copy in its place, "reject" refuses it with 0x0111
#   (duplicate SOP instance). An identical copy is always answered with success.
duplicate_policy = "{d.duplicate_policy.value}"
# Cap on C-FIND matches per query (0: no cap). Matches past the cap are not sent
# and the query ends with failure 0xA700 (out of resources).
max_find_results = {d.max_find_results}
# TCP load balancers in front of this node (addresses or networks, e.g.
# ["10.0.0.5"]): they must send a PROXY protocol v2 header (HAProxy
# `send-proxy-v2`) carrying the client's address, which the peer allowlist, the
# cleartext networks and the admission limits then use. Connections from them
# without the header are closed; from other addresses the header is never read.
trusted_proxies = []
# DIMSE worker processes behind the listeners (0: one per CPU; 1: serve in the main
# process). Limits, lockouts and the audit trail hold across all of them.
workers = {d.workers}

[tls]
# DICOM over TLS: TLS 1.2+ (1.3 preferred), forward-secret AEAD suites only.
enabled = true
port = 2762
# Empty: use the certificate that `init` issued from this site's own CA (tls/ in the
# data directory). Give PEM paths to use your own certificate and key instead.
cert_file = ""
key_file = ""
# CAs (PEM files) whose client certificates are trusted besides the local CA.
client_ca_files = []
# Names and addresses in the server certificate issued by `init`.
hostnames = ["localhost"]
addresses = ["127.0.0.1", "::1"]

[security]
# Failed associations or logins from one address (or for one account) within
# lockout_window seconds: after lockout_threshold of them, that source is refused
# for lockout_duration seconds, with the same answer as any other failure.
lockout_threshold = 5
lockout_window = 900
lockout_duration = 900
# DICOM user identity: passcodes are accepted over TLS only unless this is true.
allow_passcode_without_tls = false
# JWT user identity: an HS256 shared key file and/or an RS256 public key (PEM).
jwt_hs256_key_file = ""
jwt_rs256_public_key_file = ""
# Required "aud" claim of JWTs (empty: our AE title).
jwt_audience = ""

[index]
# The index database. Empty: index.sqlite in the data directory (SQLite).
# For scale-out, PostgreSQL: "postgresql://pacs@db.example.org/pacs?sslmode=verify-full".
# Keep the password out of this file: libpq reads PGPASSWORD or ~/.pgpass (or give
# ?passfile=PATH). Without sslmode=require or verify-full a remote index is reached in
# cleartext (doctor warns). Needs: pip install 'pacsvault[postgres]'.
url = {index_url}
# This node's name when several `pacsvault serve` nodes share one PostgreSQL index:
# each node's audit records form a chain of their own (lowercase letters, digits,
# '.', '_', '-'). Empty: the site's first chain (a single node).
node = ""

[blobs]
# Where stored objects live. Empty: files below storage.blob_dir. For scale-out,
# S3-compatible object storage: "s3://bucket/prefix" (the bucket must exist).
# Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or boto3's own
# chain: profiles, instance roles), never from this file. Needs 'pacsvault[s3]'.
url = {blob_url}
# The S3 endpoint (empty: AWS_ENDPOINT_URL, else AWS). Use https:// (doctor warns).
endpoint = ""
# The S3 region (empty: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1).
region = ""

[storage]
# Directory of the blob store (and of S3's local spool), relative to the data directory.
blob_dir = "blobs"
# fsync every object and directory before answering success. Turn off only for tests.
fsync = true
# Largest object accepted (bytes, after inflating a deflated one). A bigger C-STORE
# is refused with 0xA700 and nothing of it is kept.
max_object_size = 4294967296

[audit]
# A signed checkpoint (Ed25519, key in secrets/) every this many audit records.
checkpoint_every = 100
# Forward every audit record as a DICOM audit message (RFC 5424 over TLS, RFC 5425)
# to this collector; records wait in the audit table while it is unreachable.
syslog_host = ""
syslog_port = 6514
syslog_ca_file = ""
syslog_client_cert = ""
syslog_client_key = ""
[web]
# HTTPS: DICOMweb (/dicom-web), the viewer and the admin API (/api), every route
# behind a login or a token. Binds where [dicom] bind says (loopback until changed).
enabled = true
port = 8443
# A plain HTTP port that only redirects to HTTPS (0: none).
http_redirect_port = 0
# Browser sessions end after this many seconds idle, and after this many in all.
session_idle = 900
session_absolute = 43200
# Limits: header bytes, body bytes (a STOW of large objects), seconds per request,
# concurrent requests per client address; QIDO answers when no limit is asked, and
# the most a limit may ask for.
max_header_bytes = 16384
max_body_bytes = 4294967296
request_timeout = 300
max_requests_per_client = 32
query_page_size = 1000
max_query_results = 100000
# Other origins allowed to use DICOMweb with a token, e.g. ["https://ohif.example.org"].
cors_origins = []
# Reverse proxies in front of this node (addresses or networks) that terminate HTTPS
# and name the client in X-Forwarded-For (lockouts and the audit trail use it).
# Empty: X-Forwarded-For is ignored, whoever sends it.
trusted_proxies = []
# OpenID Connect bearer tokens (empty issuer: off). Roles come from oidc_role_claim,
# mapped by oidc_roles, e.g. {{ "pacs-radiologists" = "radiologist" }}.
oidc_issuer = ""
oidc_audience = ""
oidc_jwks_url = ""
oidc_role_claim = "roles"
oidc_roles = {{}}
'''
