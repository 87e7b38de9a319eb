"""An S3-compatible blob store: the Part-10 files as objects in one bucket, below one prefix.

Same contract as :class:`~pacsvault.storage.blobstore.FileBlobStore`: ``commit`` and
``put`` return only once S3 has acknowledged the object, and no reader ever sees a
partial object under its key. boto3 is imported only when a store is constructed, so
the embedded default (files) never needs it (``pip install 'pacsvault[s3]'``).

Layout below ``s3://bucket/prefix/``::

    <key>                         committed objects (the Archive's ``hh/hh/<uid>.dcm``)
    .staging/<uuid>               a large staged object, between its upload and its copy
    quarantine/<batch>/<key>      objects fsck moved aside

Keys whose first component is ``.staging`` or ``quarantine`` are refused, so the areas
cannot collide with objects.

Design
------
*Spooling.* A staged object is written to a spool file in a local scratch directory
(the data directory's ``blobs/tmp``) and uploaded from there as it grows: as soon as a
full part (``part_size``, 8 MiB by default) is in the spool it is read back (one part in
memory, only while it is sent) and sent as the next part of a multipart upload.
:meth:`StagedS3Object.reader` opens the spool. The alternative, reading back uploaded
parts, does not exist: S3 has no API that reads the parts of an incomplete multipart
upload, so a reader over it would have to keep the unsent tail in memory and could
not serve the Archive's repeated, seeking passes over the header (the deflate check
reads the data three times). The spool costs local disk (the whole object, as the
file store's ``tmp/`` does), never memory: nothing is buffered in RAM between writes,
so a thousand concurrent uploads hold no part buffers, and a 1 GB object needs one
part of memory. Spool files are ``flock``-ed by their writer, like the file store's
staged files, so :meth:`S3BlobStore.clean_staging` (and the file store's own
``clean_staging`` over the same directory) removes only a crashed writer's leftovers.

*Publish.* S3 has no rename, and the multipart upload's key is fixed when it starts,
before the Archive knows the object's key. So:

* an object smaller than one part is never uploaded before ``commit``, which sends it
  with one ``PutObject`` straight to its key (atomic: S3 shows all of it or nothing);
* a larger one is uploaded, part by part, to ``.staging/<uuid>``; ``commit`` completes
  that upload, copies the object server side to its key (``CopyObject``, or a
  multipart ``UploadPartCopy`` above 5 GiB: atomic too, and no data through this
  process), then deletes the staging object. The copy, not a second upload from the
  spool, because it moves no bytes over the network.
* ``stage(key=...)`` can name the key in advance (a C-STORE request names its SOP
  Instance UID): the upload then starts at that key and ``commit`` to the same key just
  completes it (no copy). Until completion S3 shows nothing new under the key, and an
  abort leaves the previous object untouched. Committed under another key, the upload
  is aborted and the spool uploaded again to the right one: an upload is never
  completed at a key it was not committed to.

Every part and single upload carries a Content-MD5, so S3 refuses corrupted bytes.
A part that cannot be sent while data arrives (each request is already retried by
boto3) does not fail the write: the upload is aborted, no more parts are sent, and
``commit`` sends the whole spool again, raising if S3 still fails. So a C-STORE gets
its "storage unavailable" status instead of an error in the middle of its transfer.
``discard`` aborts the multipart upload (no orphaned parts); an abort that fails (the
endpoint is down) is logged, and ``clean_staging`` aborts uploads older than a day on
the next start (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` is the
belt to those braces).

*Errors.* Every failure of S3 or of the way to it surfaces as an :class:`S3Error`, an
OSError (FileNotFoundError for a missing object, PermissionError for a refusal,
ConnectionError for an unreachable endpoint or a dropped stream), whose message names
the operation and S3's error code only: never credentials, never the endpoint's text.
The Archive turns it into "storage unavailable".
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from pacsvault.storage.blobstore import StagedBlob, remove_if_abandoned

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
#: S3's smallest part (all but the last) and its largest.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
#: S3's most parts in one multipart upload.
MAX_PARTS = 10_000
#: The largest object one CopyObject copies; above it, a multipart copy.
COPY_LIMIT = 5 * 1024 * MiB
#: Part size of a multipart copy (raised when the object needs more than MAX_PARTS).
COPY_PART_SIZE = 512 * MiB
#: Staged objects and multipart uploads older than this are a crash's leftovers.
STALE_AFTER = 24 * 3600.0
#: Read buffer of :meth:`S3BlobStore.open`; forward seeks up to SKIP_LIMIT read on,
#: longer ones (and backward seeks past the buffer) start a new ranged request.
READ_BUFFER = 256 * 1024
SKIP_LIMIT = 256 * 1024

CONTENT_TYPE = "application/dicom"  # every object is a Part-10 file
STAGING = ".staging/"
QUARANTINE = "quarantine/"
SPOOL_SUFFIX = ".s3part"
_RESERVED = (STAGING[:-1], QUARANTINE[:-1])
_AFTER_ALL = "\U0010ffff"  # sorts after any character a key of an area continues with
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SAFE_CODE = re.compile(r"[^A-Za-z0-9._-]")
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "AllAccessDisabled", "AccountProblem", "403"}  # fmt: skip
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                "NoSuchBucket", "RequestTimeTooSkewed"}  # fmt: skip


# -- errors -------------------------------------------------------------------------------


class S3Error(OSError):
    """An S3 request failed. The message names the operation and S3's error code only."""

    #: S3's error code ("NoSuchKey", "InvalidRange"...) or the library's error class name.
    code: str = ""


class S3NotFound(S3Error, FileNotFoundError):
    """The object does not exist."""


class S3AccessDenied(S3Error, PermissionError):
    """S3 refused the request (credentials, policy) or no credentials are configured."""


class S3Unavailable(S3Error, ConnectionError):
    """The endpoint is unreachable, overloaded or failing (5xx), or a stream broke off."""


def _code(value: object) -> str:
    """An S3 error code fit for a message: letters, digits and ``._-`` only, short."""
    return _SAFE_CODE.sub("", str(value or ""))[:64] or "error"


def _os_error(exc: BaseException, op: str) -> S3Error | None:
    """The S3Error that stands for a boto3/botocore/urllib3 failure of *op*, or None.

    Built from the error's class name, S3's error code and the HTTP status only: the
    library's own text may quote the endpoint URL, and nothing of it is kept.
    """
    mapped = _classify(exc, op)
    if mapped is not None:
        mapped.code = mapped.code or type(exc).__name__
    return mapped


def _classify(exc: BaseException, op: str) -> S3Error | None:
    """See :func:`_os_error`."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        return _client_error(exc.response, op)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return S3AccessDenied(errno.EACCES, f"S3 {op} failed: no usable credentials")
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError):
        return S3Unavailable(errno.EIO, f"S3 {op} failed: {type(exc).__name__}")
    if isinstance(exc, bx.BotoCoreError):
        return S3Error(errno.EIO, f"S3 {op} failed: {type(exc).__name__}")
    from urllib3.exceptions import HTTPError

    if isinstance(exc, HTTPError):
        return S3Unavailable(errno.EIO, f"S3 {op} failed: {type(exc).__name__}")
    return None


def _client_error(response: Mapping[str, Any], op: str) -> S3Error:
    """The S3Error for an error answer of S3 (its code and HTTP status)."""
    code = _code(response.get("Error", {}).get("Code"))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    msg = f"S3 {op} failed: {code} (HTTP {status})"
    error: S3Error
    if code in _NOT_FOUND or (status == 404 and code not in _UNAVAILABLE | {"NoSuchUpload"}):
        error = S3NotFound(errno.ENOENT, msg)
    elif code in _DENIED or status == 403:
        error = S3AccessDenied(errno.EACCES, msg)
    elif code == "PreconditionFailed" or status == 412:
        error = S3Error(errno.ESTALE, msg + ": the object changed")
    elif code in _UNAVAILABLE or status >= 500:
        error = S3Unavailable(errno.EIO, msg)
    else:
        error = S3Error(errno.EIO, msg)
    error.code = code
    return error


@contextlib.contextmanager
def _s3(op: str) -> Iterator[None]:
    """Turn library errors raised inside the block into :class:`S3Error` (see _os_error)."""
    try:
        yield
    except S3Error:
        raise
    except Exception as exc:  # some botocore errors are OSErrors too: map them all
        mapped = _os_error(exc, op)
        if mapped is None:
            raise
        raise mapped from None


def _md5(data: bytes) -> str:
    """The Content-MD5 header value of *data*."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


# -- configuration ------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket[/prefix]``; the prefix is '' or ends with '/'.

    Raises ValueError (without repeating the URL, which might hold a secret) for
    anything else, including a URL with a user or password in it.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError("S3 storage URL must look like s3://bucket/prefix")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("S3 storage URL must not contain credentials")
    if parts.query or parts.fragment or parts.port is not None:
        raise ValueError("S3 storage URL must look like s3://bucket/prefix")
    bucket = parts.netloc
    if not _BUCKET.match(bucket):
        raise ValueError("invalid S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix:
        _check_components(prefix, "invalid S3 prefix")
        prefix += "/"
    return bucket, prefix


def _check_components(key: str, message: str) -> None:
    """Raise ValueError(*message*) unless *key* is relative with no '', '.', '..' parts."""
    if key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(message)


def _safe_endpoint(endpoint: str | None) -> str | None:
    """*endpoint* checked: http(s), no user or password in it (ValueError otherwise)."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("S3 endpoint must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("S3 endpoint must not contain credentials")
    return endpoint


# -- the store ----------------------------------------------------------------------------


class S3BlobStore:
    """Blobs as objects under ``s3://bucket/prefix/`` (see the module documentation).

    *scratch* is a local directory for spool files (the data directory's ``blobs/tmp``).
    The endpoint, region and credentials come from the keyword arguments or else from
    *env* (default: the process environment): ``AWS_ENDPOINT_URL``, ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_SESSION_TOKEN``; without keys there, boto3's own chain (profiles, instance
    roles) applies. Credentials are handed to boto3 and not kept here, so they appear
    in no repr, log line or exception. Thread-safe: one boto3 client serves all threads.
    """

    def __init__(
        self,
        url: str,
        scratch: Path,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        copy_limit: int = COPY_LIMIT,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
        addressing_style: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.bucket, self.prefix = parse_url(url)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        self.part_size = part_size
        self.copy_limit = copy_limit
        self.scratch = scratch
        self.endpoint_url = _safe_endpoint(endpoint_url or env.get("AWS_ENDPOINT_URL"))
        self.region = (
            region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        if access_key_id is None and secret_access_key is None:
            access_key_id = env.get("AWS_ACCESS_KEY_ID") or None
            secret_access_key = env.get("AWS_SECRET_ACCESS_KEY") or None
            session_token = session_token or env.get("AWS_SESSION_TOKEN") or None
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("S3 credentials need both an access key ID and a secret access key")
        style = addressing_style or ("path" if self.endpoint_url else "auto")
        self._client = _make_client(
            endpoint_url=self.endpoint_url,
            region=self.region,
            credentials=(access_key_id, secret_access_key, session_token),
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            addressing_style=style,
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}{where}, region={self.region})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (for tests and diagnostics)."""
        return self._client

    # -- setup ----------------------------------------------------------------------------

    def create(self) -> None:
        """Create the scratch directory (0700). The bucket must exist: nothing is created there."""
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)

    def check(self) -> None:
        """Raise an :class:`S3Error` unless the bucket answers (HeadBucket)."""
        with _s3("HeadBucket"):
            self._client.head_bucket(Bucket=self.bucket)

    def clean_staging(self, *, max_age: float = STALE_AFTER, now: float | None = None) -> int:
        """Remove what crashed writers left: returns how many items were removed.

        Spool files no process holds locked go at once. Multipart uploads below the prefix
        and ``.staging/`` objects go once older than *max_age* seconds: other processes
        (another node, an import beside ``serve``) may be uploading, and their uploads
        cannot be told apart from a crash's other than by age.
        """
        removed = self._clean_spools()
        cutoff = (time.time() if now is None else now) - max_age
        removed += self._abort_uploads_before(cutoff)
        for key, modified in self._list(self.prefix + STAGING):
            if modified < cutoff:
                self._delete_full(key)
                removed += 1
        return removed

    def _clean_spools(self) -> int:
        """Remove the spool files in scratch that no writer holds locked."""
        try:
            entries = list(os.scandir(self.scratch))
        except FileNotFoundError:
            return 0
        return sum(remove_if_abandoned(e.path) for e in entries if e.name.endswith(SPOOL_SUFFIX))

    def _abort_uploads_before(self, cutoff: float) -> int:
        """Abort the multipart uploads below the prefix started before *cutoff*."""
        aborted = 0
        with _s3("ListMultipartUploads"):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            stale = [
                (u["Key"], u["UploadId"])
                for page in pages
                for u in page.get("Uploads", [])
                if u["Initiated"].timestamp() < cutoff
            ]
        for key, upload_id in stale:
            with _s3("AbortMultipartUpload"):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            aborted += 1
        return aborted

    # -- keys -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """The full S3 key of blob *key*; ValueError for keys FileBlobStore would refuse,
        and for keys in the staging or quarantine areas."""
        _check_components(key, "invalid blob key")
        if key.split("/", 1)[0] in _RESERVED:
            raise ValueError("invalid blob key")
        full = self.prefix + key
        if len(full.encode("utf-8")) > 1024:
            raise ValueError("invalid blob key")
        return full

    def _staging_key(self) -> str:
        return f"{self.prefix}{STAGING}{uuid.uuid4().hex}"

    def _location(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    # -- BlobStore ------------------------------------------------------------------------

    def stage(self, key: str | None = None) -> StagedS3Object:
        """A new, empty staged object. Naming the *key* it will be committed to (when known)
        lets a large object's upload go straight there, saving the copy at commit."""
        return StagedS3Object(self, None if key is None else self._key(key))

    def commit(self, staged: StagedBlob, key: str) -> None:
        """Publish *staged* under *key*; returns once S3 acknowledged the whole object.

        On any failure the staged object is discarded (its upload aborted) and an OSError
        raised; the key then holds what it held before.
        """
        if not isinstance(staged, StagedS3Object) or staged.store is not self:
            raise TypeError("not an object staged by this store")
        try:
            target = self._key(key)
            staged.publish(target)
        except BaseException:
            staged.discard()
            raise

    def put(self, key: str, parts: Iterable[bytes]) -> None:
        """Store the concatenation of *parts* under *key*, durably and atomically."""
        staged = self.stage()
        try:
            for part in parts:
                staged.write(part)
        except BaseException:
            staged.discard()
            raise
        self.commit(staged, key)

    def open(self, key: str) -> BinaryIO:
        """A buffered, seekable stream over the object (GetObject, read as it is consumed).

        Raises FileNotFoundError (S3NotFound) when absent. Seeking back past the buffer,
        or far ahead, costs one ranged request; every request after the first asks for
        the same version (If-Match on its ETag), so a replaced object is never spliced.
        """
        return io.BufferedReader(_ObjectReader(self, self._key(key), 0, None), READ_BUFFER)  # type: ignore[return-value]

    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        """A stream of *length* bytes of the object from offset *start* (an HTTP Range
        request); shorter when the object ends first, empty past its end."""
        full = self._key(key)
        if start < 0 or length < 0:
            raise ValueError("invalid range")
        if length == 0:
            if self._head(full) is None:
                raise S3NotFound(errno.ENOENT, f"no such object: {key}")
            return io.BytesIO(b"")
        return io.BufferedReader(_ObjectReader(self, full, start, length), READ_BUFFER)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        """True when the object is present (HeadObject)."""
        return self._head(self._key(key)) is not None

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are ignored."""
        self._delete_full(self._key(key))

    # -- inventory (fsck) -----------------------------------------------------------------

    def keys(self) -> Iterator[str]:
        """Every key the store holds, in S3's order (by UTF-8 bytes); staging and quarantine
        areas are not listed (ListObjectsV2, 1000 keys a page, areas skipped over)."""
        for full, _modified in self._list(self.prefix, skip=(STAGING, QUARANTINE)):
            yield full[len(self.prefix) :]

    def size(self, key: str) -> int:
        """The object's size in bytes; FileNotFoundError when there is no such object."""
        return int(self._head_or_raise(key)["ContentLength"])

    def modified(self, key: str) -> float:
        """When the object was last written, in seconds since the epoch (FileNotFoundError
        when absent)."""
        return float(self._head_or_raise(key)["LastModified"].timestamp())

    def quarantine(self, key: str, batch: str) -> str:
        """Move the object to ``quarantine/<batch>/<key>`` (copy, then delete); returns its
        ``s3://`` location. FileNotFoundError when absent, FileExistsError when the batch
        already holds this key. The copy asks for the version just looked at (If-Match).
        """
        if batch in ("", ".", "..") or "/" in batch:
            raise ValueError("invalid quarantine batch")
        source = self._key(key)
        target = f"{self.prefix}{QUARANTINE}{batch}/{key}"
        if self._head(target) is not None:
            raise FileExistsError(errno.EEXIST, f"already quarantined: {key}")
        head = self._head(source)
        if head is None:
            raise S3NotFound(errno.ENOENT, f"no such object: {key}")
        self._copy(source, target, int(head["ContentLength"]), etag=head.get("ETag"))
        self._delete_full(source)
        return self._location(target)

    # -- S3 requests ----------------------------------------------------------------------

    def _head(self, full_key: str) -> dict[str, Any] | None:
        """HeadObject's answer, or None when the object does not exist."""
        try:
            with _s3("HeadObject"):
                return self._client.head_object(Bucket=self.bucket, Key=full_key)
        except FileNotFoundError:
            return None

    def _head_or_raise(self, key: str) -> dict[str, Any]:
        head = self._head(self._key(key))
        if head is None:
            raise S3NotFound(errno.ENOENT, f"no such object: {key}")
        return head

    def _delete_full(self, full_key: str) -> None:
        with _s3("DeleteObject"):
            self._client.delete_object(Bucket=self.bucket, Key=full_key)

    def _list(self, prefix: str, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
        """(full key, modified) of every object below *prefix* except in the areas
        ``prefix + s`` for s in *skip*; paginated.

        The first key met in an area restarts the listing past it (StartAfter), so a large
        quarantine costs one request, not a walk through it; any key of the area still
        listed after that is filtered out.
        """
        areas = [prefix + s for s in skip]
        pending = list(areas)
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
        while True:
            with _s3("ListObjectsV2"):
                page = self._client.list_objects_v2(**args)
            args.pop("ContinuationToken", None)
            restart = None
            for obj in page.get("Contents", []):
                key = obj["Key"]
                area = next((a for a in areas if key.startswith(a)), None)
                if area is None:
                    yield key, obj["LastModified"].timestamp()
                elif area in pending:
                    pending.remove(area)
                    restart = area + _AFTER_ALL
                    break
            if restart is not None:
                args["StartAfter"] = restart
            elif page.get("IsTruncated"):
                args["ContinuationToken"] = page["NextContinuationToken"]
            else:
                return

    def _copy(self, source: str, target: str, size: int, *, etag: str | None = None) -> None:
        """Copy *source* to *target* server side: CopyObject up to copy_limit, else in parts."""
        src = {"Bucket": self.bucket, "Key": source}
        cond = {"CopySourceIfMatch": etag} if etag else {}
        if size <= self.copy_limit:
            with _s3("CopyObject"):
                self._client.copy_object(Bucket=self.bucket, Key=target, CopySource=src, **cond)
            return
        chunk = max(min(self.copy_limit, COPY_PART_SIZE), -(-size // MAX_PARTS), MIN_PART_SIZE)
        upload = _MultipartUpload(self, target)
        try:
            for offset in range(0, size, chunk):
                upload.copy_part(src, offset, min(offset + chunk, size) - 1, cond)
            upload.complete()
        except BaseException:
            upload.abort_quietly()
            raise


def _make_client(
    *,
    endpoint_url: str | None,
    region: str,
    credentials: tuple[str | None, str | None, str | None],
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool_connections: int,
    addressing_style: str,
) -> Any:
    """A boto3 S3 client (boto3 imported here, not at module import)."""
    try:
        import boto3.session
        from botocore.config import Config
    except ImportError:
        raise RuntimeError("S3 storage needs boto3: pip install 'pacsvault[s3]'") from None
    key_id, secret, token = credentials
    session = boto3.session.Session(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=region,
    )
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        signature_version="s3v4",
        s3={"addressing_style": addressing_style},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


# -- multipart uploads --------------------------------------------------------------------


class _MultipartUpload:
    """One multipart upload to *key*: started on creation, then parts, then complete or abort."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.parts: list[dict[str, Any]] = []
        with _s3("CreateMultipartUpload"):
            answer = store.client.create_multipart_upload(
                Bucket=store.bucket, Key=key, ContentType=CONTENT_TYPE
            )
        self.upload_id: str = answer["UploadId"]

    def _number(self) -> int:
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise S3Error(errno.EFBIG, f"S3 upload failed: more than {MAX_PARTS} parts")
        return number

    def send_part(self, data: bytes) -> None:
        """Upload *data* as the next part (with its Content-MD5)."""
        number = self._number()
        with _s3("UploadPart"):
            answer = self.store.client.upload_part(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                PartNumber=number, Body=data, ContentMD5=_md5(data),
            )  # fmt: skip
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def copy_part(self, source: dict[str, str], first: int, last: int, cond: dict) -> None:
        """Copy bytes *first*..*last* (inclusive) of *source* as the next part."""
        number = self._number()
        with _s3("UploadPartCopy"):
            answer = self.store.client.upload_part_copy(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                PartNumber=number, CopySource=source, CopySourceRange=f"bytes={first}-{last}",
                **cond,
            )  # fmt: skip
        self.parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})

    def complete(self) -> None:
        """Complete the upload: the object appears, whole, under the key."""
        with _s3("CompleteMultipartUpload"):
            self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )  # fmt: skip

    def abort_quietly(self) -> None:
        """Abort the upload, dropping its parts; a failure is logged (clean_staging retries)."""
        try:
            with _s3("AbortMultipartUpload"):
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
        except OSError as exc:
            log.warning("could not abort an S3 upload (left for clean-up): %s", exc.strerror)


# -- staged objects -----------------------------------------------------------------------


class StagedS3Object:
    """An object being written: a local spool file, uploaded part by part as it grows.

    See the module documentation. One thread writes it; ``reader`` may be called at any
    time before ``commit``/``discard`` and sees everything written so far.
    """

    def __init__(self, store: S3BlobStore, key: str | None) -> None:
        self.store = store
        self.target_hint = key
        self.path = store.scratch / f"{uuid.uuid4().hex}{SPOOL_SUFFIX}"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file: BinaryIO | None = os.fdopen(fd, "w+b")
        fcntl.flock(fd, fcntl.LOCK_EX)  # "in use" (see clean_staging)
        self._size = 0
        self._sent = 0  # bytes uploaded as parts
        self._upload: _MultipartUpload | None = None
        self._eager = True  # upload parts as they fill (until an upload fails)
        self._staging_key = store._staging_key()
        self._staging_object: str | None = None  # a completed upload awaiting its copy
        self._committed = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data* to the spool and upload every full part.

        Raises OSError only for the local spool (disk full). A failed upload is aborted
        and no more parts are sent: ``commit`` sends the whole spool again (and raises
        if S3 still fails), so the Archive answers "storage unavailable" with a status
        rather than through an error in the middle of a transfer.
        """
        assert self._file is not None and not self._committed, "staged object already finished"
        self._file.write(data)
        self._size += len(data)
        while self._eager and self._size - self._sent >= self.store.part_size:
            try:
                self._send_part()
            except S3Error as exc:
                log.warning("S3 upload interrupted, retried from the spool at commit: %s",
                            exc.strerror)  # fmt: skip
                self._abandon_upload()
                self._eager = False

    def reader(self) -> BinaryIO:
        """A new stream over everything written so far, from the start (the spool)."""
        assert self._file is not None, "staged object already finished"
        self._file.flush()
        return open(self.path, "rb")

    def _read_spool(self, offset: int, length: int) -> bytes:
        """*length* bytes of the spool from *offset* (the spool is flushed first)."""
        assert self._file is not None
        self._file.flush()
        fd = self._file.fileno()
        chunks, got = [], 0
        while got < length:
            chunk = os.pread(fd, length - got, offset + got)
            if not chunk:
                raise OSError(errno.EIO, "spool file shorter than written")
            chunks.append(chunk)
            got += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _send_part(self) -> None:
        """Upload the next part (a full one, or the rest at commit), starting the upload."""
        if self._upload is None:
            self._upload = _MultipartUpload(self.store, self.target_hint or self._staging_key)
        length = min(self.store.part_size, self._size - self._sent)
        self._upload.send_part(self._read_spool(self._sent, length))
        self._sent += length

    def publish(self, target: str) -> None:
        """Make the object durable under the full key *target* (see the module documentation).

        Called by :meth:`S3BlobStore.commit`, which discards the object if this raises.
        """
        assert self._file is not None and not self._committed, "staged object already finished"
        if self._upload is not None and self._upload.key not in (target, self._staging_key):
            self._abandon_upload()  # parts at another final key: never complete it there
        upload = self._upload
        if upload is None:
            self._send_spool(target)
        elif upload.key == target:
            self._finish_upload()
        else:
            self._finish_upload()
            self._upload = None  # completed: nothing to abort any more
            self._staging_object = upload.key
            self.store._copy(upload.key, target, self._size)
            self._drop_staging_object()
        self._committed = True
        self._upload = None
        self._close_spool()

    def _abandon_upload(self) -> None:
        """Abort the upload in progress; what it held is sent again from the spool."""
        upload, self._upload = self._upload, None
        self._sent = 0
        if upload is not None:
            upload.abort_quietly()

    def _send_spool(self, target: str) -> None:
        """Upload the whole spool to *target*: one PutObject below a part, else in parts."""
        if self._size < self.store.part_size:
            data = self._read_spool(0, self._size)
            with _s3("PutObject"):
                self.store.client.put_object(
                    Bucket=self.store.bucket, Key=target, Body=data, ContentMD5=_md5(data),
                    ContentType=CONTENT_TYPE,
                )  # fmt: skip
            return
        self._sent = 0
        self._upload = _MultipartUpload(self.store, target)
        self._finish_upload()

    def _finish_upload(self) -> None:
        """Send what is left of the spool as parts, then complete the upload."""
        assert self._upload is not None
        while self._sent < self._size:
            self._send_part()
        self._upload.complete()

    def _drop_staging_object(self) -> None:
        """Delete the completed staging object (a failure is logged: clean_staging retries)."""
        key, self._staging_object = self._staging_object, None
        if key is None:
            return
        try:
            self.store._delete_full(key)
        except OSError as exc:
            log.warning("could not delete an S3 staging object (left for clean-up): %s",
                        exc.strerror)  # fmt: skip

    def _close_spool(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def discard(self) -> None:
        """Drop the staged object: abort its upload, remove the spool (idempotent; a no-op
        after a successful commit). Never raises for S3 failures: they are logged."""
        upload, self._upload = self._upload, None
        if upload is not None and not self._committed:
            upload.abort_quietly()
        if not self._committed:
            self._drop_staging_object()
        self._close_spool()


# -- reading ------------------------------------------------------------------------------


class _ObjectReader(io.RawIOBase):
    """A seekable raw stream over bytes [start, start+length) of an object (GetObject).

    Positions are relative to *start*. The body is read as consumed; a seek drops it
    (or reads on, for a short forward seek) and the next read asks for a new range of
    the same version (If-Match). A stream that breaks off is resumed once per read.
    """

    def __init__(self, store: S3BlobStore, key: str, start: int, length: int | None) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._start = start
        self._pos = start
        self._etag: str | None = None
        self._body: Any = None
        self._end = start + length if length is not None else None
        self._open_body()
        if self._body is None:  # the range starts past the end
            self._end = start

    def _open_body(self) -> None:
        """Start a GetObject at the current position (sets ETag and end on the first)."""
        args: dict[str, Any] = {"Bucket": self._store.bucket, "Key": self._key}
        if self._pos > 0 or self._end is not None:
            last = "" if self._end is None else str(self._end - 1)
            args["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            args["IfMatch"] = self._etag
        try:
            with _s3("GetObject"):
                answer = self._store.client.get_object(**args)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                self._body = None  # nothing at or after pos
                return
            raise
        self._etag = self._etag or answer.get("ETag")
        total = _total_size(answer, self._pos)
        self._end = total if self._end is None else min(self._end, total)
        self._body = answer["Body"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        assert self._end is not None
        want = min(len(b), self._end - self._pos)
        if want <= 0:
            return 0
        data = self._read(want)
        n = len(data)
        memoryview(b)[:n] = data
        self._pos += n
        return n

    def _read(self, want: int) -> bytes:
        """Up to *want* bytes from the body, reopening it once if the stream broke off."""
        for attempt in (1, 2):
            if self._body is None:
                self._open_body()
                if self._body is None:
                    raise S3Unavailable(errno.EIO, "S3 GetObject failed: object shorter")
            try:
                with _s3("GetObject"):
                    data = self._body.read(want)
            except S3Unavailable:
                self._drop_body()
                if attempt == 2:
                    raise
                continue
            if data:
                return data
            self._drop_body()  # ended early: ask again from here
        raise S3Unavailable(errno.EIO, "S3 GetObject failed: object ended early")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        assert self._end is not None
        if whence == io.SEEK_SET:
            target = self._start + offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._end + offset
        else:
            raise ValueError("invalid whence")
        target = max(self._start, target)
        if target != self._pos:
            if self._body is not None and 0 < target - self._pos <= SKIP_LIMIT:
                self._skip(target - self._pos)
            else:
                self._drop_body()
                self._pos = target
        return self._pos - self._start

    def _skip(self, n: int) -> None:
        """Read on and drop *n* bytes (a short forward seek)."""
        scratch = bytearray(min(n, 65536))
        while n > 0 and self._pos < (self._end or 0):
            got = self.readinto(memoryview(scratch)[: min(n, len(scratch))])
            if not got:
                break
            n -= got

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


def _total_size(answer: Mapping[str, Any], pos: int) -> int:
    """The object's size from a GetObject answer (Content-Range for a ranged one)."""
    content_range = answer.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return pos + int(answer["ContentLength"])
