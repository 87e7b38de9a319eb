"""S3BlobStore against a real S3 endpoint (moto in server mode, see s3_server.py).

The store's contract is FileBlobStore's: durable, atomic publication, streaming reads,
the fsck inventory. Beyond it: memory stays bounded whatever the object size, staged
uploads leave nothing behind when discarded, and every S3 failure is an OSError whose
text holds no secret. The last tests run the Archive itself on top of the store.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pacsvault.config import DuplicatePolicy, load_settings
from pacsvault.dicom.part10 import split_part10
from pacsvault.dicom.synthetic import Spec, data_set, image, to_bytes
from pacsvault.site import init_site, open_site
from pacsvault.storage.archive import StoreStatus, blob_key
from pacsvault.storage.fsck import Kind, check, repair
from pacsvault.storage.s3blobs import MiB, S3BlobStore, S3Error, parse_url
from s3_server import (  # noqa: F401 (fixtures)
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    MotoServer,
    S3Endpoint,
    free_port,
    moto_server_fixture,
    s3_fixture,
)

PART = 5 * MiB  # the smallest part size S3 allows: big objects stay cheap to make
KEY = "ab/cd/1.2.3.4.dcm"
#: Size of the streaming test; PACSVAULT_S3_STREAM_MIB=1024 checks a 1 GiB object.
STREAM_MIB = int(os.environ.get("PACSVAULT_S3_STREAM_MIB", "200"))


def make_store(s3: S3Endpoint, scratch: Path, prefix: str = "pv", **kw) -> S3BlobStore:
    store = S3BlobStore(s3.url(prefix), scratch, part_size=kw.pop("part_size", PART),
                        **{**s3.settings(), **kw})  # fmt: skip
    store.create()
    return store


@pytest.fixture
def store(s3: S3Endpoint, tmp_path: Path) -> S3BlobStore:
    return make_store(s3, tmp_path / "scratch")


def uploads(s3: S3Endpoint) -> list[str]:
    """Keys of the multipart uploads in progress in the bucket."""
    answer = s3.client().list_multipart_uploads(Bucket=s3.bucket)
    return [u["Key"] for u in answer.get("Uploads", [])]


def bucket_keys(s3: S3Endpoint) -> list[str]:
    """Every object key in the bucket, whatever the area."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def blob(n: int, size: int) -> bytes:
    """*size* bytes that differ for every *n* (cheap, and not all alike)."""
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def status(field: str) -> int:
    """A size from /proc/self/status in bytes (VmRSS: resident now, VmHWM: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def rss() -> int:
    """This process's resident set size in bytes."""
    return status("VmRSS")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss(sampled: int, reset: bool) -> int:
    """The peak RSS since reset_peak_rss (when it worked), at least *sampled*."""
    return max(sampled, status("VmHWM")) if reset else sampled


# -- configuration ------------------------------------------------------------------------


def test_importing_the_module_needs_no_boto3() -> None:
    code = (
        "import sys, pacsvault.storage.s3blobs, pacsvault.site; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_url_parsing() -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("http://bucket/x", "s3://", "s3://B/x", "s3://bucket/a//b", "s3://bucket/../x",
                "s3://bucket:9000/x", "s3://bucket/x?y=1"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError) as err:
        parse_url(f"s3://{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}@bucket/x")
    assert SECRET_ACCESS_KEY not in str(err.value) and ACCESS_KEY_ID not in str(err.value)


def test_settings_from_the_environment(s3: S3Endpoint, tmp_path: Path) -> None:
    store = S3BlobStore(s3.url("env"), tmp_path, env=s3.env())
    assert (store.endpoint_url, store.region) == (s3.endpoint_url, s3.region)
    store.put(KEY, [b"from env"])
    assert store.open(KEY).read() == b"from env"
    env = {**s3.env(), "AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-west-3"}
    assert S3BlobStore(s3.url("env"), tmp_path, env=env).region == "eu-west-3"


def test_credentials_not_in_repr(store: S3BlobStore, s3: S3Endpoint) -> None:
    staged = store.stage()
    for text in (repr(store), str(store), repr(vars(store)), repr(vars(staged))):
        assert SECRET_ACCESS_KEY not in text
        assert ACCESS_KEY_ID not in text
    staged.discard()
    assert s3.bucket in repr(store)
    with pytest.raises(ValueError) as err:
        S3BlobStore("s3://bucket/x", Path("/nonexistent"),
                    endpoint_url=f"http://user:{SECRET_ACCESS_KEY}@127.0.0.1:1")  # fmt: skip
    assert SECRET_ACCESS_KEY not in str(err.value)


def test_invalid_keys_are_refused(store: S3BlobStore) -> None:
    for key in ("/abs/x.dcm", "a/../x.dcm", "a/./x.dcm", "a//x.dcm", "", "a/", ".staging/x",
                "quarantine/b/x.dcm", "x" * 1100):  # fmt: skip
        with pytest.raises(ValueError):
            store.put(key, [b"x"])
        with pytest.raises(ValueError):
            store.open(key)
    with pytest.raises(ValueError):
        store.quarantine(KEY, "a/b")


# -- put, open, exists, delete --------------------------------------------------------------


def test_round_trip(store: S3BlobStore, s3: S3Endpoint) -> None:
    assert not store.exists(KEY)
    store.put(KEY, [b"DICM", b"-", b"data"])
    assert store.exists(KEY)
    head = s3.client().head_object(Bucket=s3.bucket, Key=f"pv/{KEY}")
    assert head["ContentType"] == "application/dicom"
    with store.open(KEY) as f:
        assert f.read() == b"DICM-data"
    assert store.size(KEY) == 9
    assert abs(store.modified(KEY) - time.time()) < 60
    assert bucket_keys(s3) == [f"pv/{KEY}"]
    store.put(KEY, [b"replaced"])  # put replaces
    assert store.open(KEY).read() == b"replaced"
    store.delete(KEY)
    assert not store.exists(KEY)
    store.delete(KEY)  # absent: ignored
    with pytest.raises(FileNotFoundError):
        store.open(KEY)
    with pytest.raises(FileNotFoundError):
        store.size(KEY)
    with pytest.raises(FileNotFoundError):
        store.modified(KEY)
    store.put("ab/cd/empty.dcm", [])
    assert store.open("ab/cd/empty.dcm").read() == b""
    assert bucket_keys(s3) == ["pv/ab/cd/empty.dcm"] and uploads(s3) == []


def test_small_object_is_one_put_at_commit(store: S3BlobStore, s3: S3Endpoint) -> None:
    staged = store.stage()
    staged.write(b"a" * (PART - 1))
    assert staged.size == PART - 1
    assert uploads(s3) == [] and bucket_keys(s3) == []  # nothing sent before commit
    with staged.reader() as r:
        assert r.read() == b"a" * (PART - 1)
    store.commit(staged, KEY)
    assert store.open(KEY).read() == b"a" * (PART - 1)
    assert uploads(s3) == [] and bucket_keys(s3) == [f"pv/{KEY}"]
    assert not list(store.scratch.iterdir())  # spool removed
    staged.discard()  # after commit: a no-op
    assert store.exists(KEY)


def test_reader_sees_everything_written_so_far(store: S3BlobStore, s3: S3Endpoint) -> None:
    data = blob(1, 2 * PART + 12345)
    staged = store.stage()
    staged.write(data[:100])
    with staged.reader() as r:
        assert r.read() == data[:100]
    staged.write(data[100 : PART + 10])  # a part is uploaded meanwhile
    assert len(uploads(s3)) == 1 and uploads(s3)[0].startswith("pv/.staging/")
    with staged.reader() as r:
        r.seek(50)
        assert r.read(10) == data[50:60]
        r.seek(0)
        assert r.read() == data[: PART + 10]
    staged.write(data[PART + 10 :])
    with staged.reader() as r:
        assert hashlib.sha256(r.read()).digest() == hashlib.sha256(data).digest()
    assert list(store.keys()) == []  # nothing visible before commit
    store.commit(staged, KEY)
    assert store.open(KEY).read() == data
    assert uploads(s3) == [] and bucket_keys(s3) == [f"pv/{KEY}"]  # staging object deleted


def test_discard_leaves_nothing(store: S3BlobStore, s3: S3Endpoint) -> None:
    staged = store.stage()
    for n in range(3):
        staged.write(blob(n, 2 * MiB + 1))  # more than one part: an upload is in progress
    assert len(uploads(s3)) == 1
    staged.discard()
    assert uploads(s3) == [] and bucket_keys(s3) == []
    assert not list(store.scratch.iterdir())
    staged.discard()  # idempotent
    small = store.stage()
    small.write(b"x")
    small.discard()
    assert uploads(s3) == [] and bucket_keys(s3) == [] and not list(store.scratch.iterdir())


def test_commit_to_the_announced_key_needs_no_copy(store: S3BlobStore, s3: S3Endpoint) -> None:
    data = blob(2, PART + 7)
    staged = store.stage(KEY)
    staged.write(data)
    assert uploads(s3) == [f"pv/{KEY}"]
    assert not store.exists(KEY)  # in progress: invisible under its own key
    store.commit(staged, KEY)
    assert store.open(KEY).read() == data and uploads(s3) == []


def test_commit_elsewhere_never_completes_at_the_announced_key(
    store: S3BlobStore, s3: S3Endpoint
) -> None:
    store.put(KEY, [b"the first copy"])
    data = blob(3, PART + 7)
    staged = store.stage(KEY)
    staged.write(data)
    store.commit(staged, "ab/cd/1.2.3.4.variant.dcm")
    assert store.open(KEY).read() == b"the first copy"
    assert store.open("ab/cd/1.2.3.4.variant.dcm").read() == data
    assert uploads(s3) == []


def test_large_object_copied_in_parts(s3: S3Endpoint, tmp_path: Path) -> None:
    """Above copy_limit (5 GiB on S3) the publishing copy is a multipart UploadPartCopy."""
    store = make_store(s3, tmp_path, copy_limit=6 * MiB)
    data = blob(4, 13 * MiB + 3)
    store.put(KEY, [data[i : i + MiB] for i in range(0, len(data), MiB)])
    assert store.open(KEY).read() == data
    assert uploads(s3) == [] and bucket_keys(s3) == [f"pv/{KEY}"]
    loc = store.quarantine(KEY, "b1")  # the quarantine copy takes the same path
    assert s3.client().get_object(Bucket=s3.bucket, Key=loc.split("/", 3)[3])["Body"].read() == data


def test_failed_part_upload_is_retried_at_commit(
    store: S3BlobStore, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    real = store.client.upload_part
    failures = iter([True])

    def flaky(**kw):
        if next(failures, False):
            raise EndpointConnectionError(endpoint_url=s3.endpoint_url)
        return real(**kw)

    monkeypatch.setattr(store.client, "upload_part", flaky)
    data = blob(5, 3 * PART + 1)
    staged = store.stage()
    staged.write(data[:PART])  # the first part fails: write does not raise
    assert uploads(s3) == []  # that upload was aborted
    staged.write(data[PART:])  # no more uploads during writes
    assert uploads(s3) == []
    store.commit(staged, KEY)  # the whole spool, sent again
    assert store.open(KEY).read() == data and uploads(s3) == []


def test_streaming_keeps_memory_bounded(store: S3BlobStore, s3: S3Endpoint) -> None:
    """STREAM_MIB MiB in 1 MiB writes: the process grows by less than 64 MiB, the object
    reads back identical, and the read does not hold it in memory either."""
    store.put("warm/up.dcm", [blob(0, PART + 1)])  # boto3's lazily loaded models and pools
    store.open("warm/up.dcm").read()
    base, peak = rss(), 0
    reset = reset_peak_rss()  # the kernel's peak also sees the parts in flight
    sent = hashlib.sha256()
    staged = store.stage()
    for n in range(STREAM_MIB):
        chunk = blob(n, MiB)
        sent.update(chunk)
        staged.write(chunk)
        peak = max(peak, rss())
    store.commit(staged, KEY)
    peak = max(peak, rss())
    assert store.size(KEY) == STREAM_MIB * MiB
    got = hashlib.sha256()
    with store.open(KEY) as f:
        while chunk := f.read(MiB):
            got.update(chunk)
            peak = max(peak, rss())
    assert got.hexdigest() == sent.hexdigest()
    peak = peak_rss(peak, reset)
    assert peak - base < 64 * MiB, f"RSS grew by {(peak - base) / MiB:.0f} MiB"
    assert uploads(s3) == [] and sorted(bucket_keys(s3)) == [f"pv/{KEY}", "pv/warm/up.dcm"]


# -- reading --------------------------------------------------------------------------------


def test_open_range(store: S3BlobStore) -> None:
    data = blob(6, 3 * MiB + 5)
    store.put(KEY, [data])
    for start, length in ((0, 10), (5, 1), (MiB - 3, 2 * MiB), (len(data) - 4, 4)):
        with store.open_range(KEY, start, length) as r:
            assert r.read() == data[start : start + length]
    assert store.open_range(KEY, len(data) - 4, 100).read() == data[-4:]  # ends with the object
    assert store.open_range(KEY, len(data) + 10, 5).read() == b""  # past the end
    assert store.open_range(KEY, 3, 0).read() == b""
    r = store.open_range(KEY, 100, 1000)
    assert r.read(10) == data[100:110]
    r.seek(500)
    assert r.read(10) == data[600:610]
    for start, length in ((0, 10), (0, 0)):
        with pytest.raises(FileNotFoundError):
            store.open_range("ab/cd/absent.dcm", start, length)


def test_open_streams_and_seeks(store: S3BlobStore) -> None:
    data = blob(7, 4 * MiB + 17)
    store.put(KEY, [data])
    with store.open(KEY) as f:
        assert f.read(144) == data[:144]
        f.seek(132)  # back, within the buffer
        assert f.read(12) == data[132:144]
        f.seek(200_000)  # a short skip forward
        assert f.read(5) == data[200_000:200_005]
        f.seek(3 * MiB)  # far forward: a new ranged request
        assert f.read(5) == data[3 * MiB : 3 * MiB + 5]
        f.seek(7)  # far back: another one
        assert f.tell() == 7
        assert f.read(MiB) == data[7 : 7 + MiB]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        assert f.read() == b""


# -- inventory ------------------------------------------------------------------------------


def test_keys_lists_exactly_the_committed_keys(store: S3BlobStore, s3: S3Endpoint) -> None:
    wanted = [blob_key(f"1.2.826.0.1.3680043.8.498.{n}") for n in range(1105)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, [k.encode()]), wanted))
    # Objects that are not keys: a staged upload, the quarantine, a neighbour prefix.
    staged = store.stage()
    staged.write(blob(8, PART + 1))
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="pv/.staging/leftover", Body=b"x")
    for n in range(5):
        client.put_object(Bucket=s3.bucket, Key=f"pv/quarantine/b/{n:02x}/x.dcm", Body=b"q")
    client.put_object(Bucket=s3.bucket, Key="pvother/00/00/x.dcm", Body=b"n")
    keys = list(store.keys())
    assert keys == sorted(wanted)
    staged.discard()


def test_quarantine_moves_a_key(store: S3BlobStore, s3: S3Endpoint) -> None:
    store.put(KEY, [b"orphan"])
    store.put("ab/cd/keep.dcm", [b"keep"])
    where = store.quarantine(KEY, "20260101T000000Z")
    assert where == f"s3://{s3.bucket}/pv/quarantine/20260101T000000Z/{KEY}"
    assert not store.exists(KEY) and list(store.keys()) == ["ab/cd/keep.dcm"]
    moved = s3.client().get_object(Bucket=s3.bucket, Key=f"pv/quarantine/20260101T000000Z/{KEY}")
    assert moved["Body"].read() == b"orphan"
    with pytest.raises(FileNotFoundError):
        store.quarantine(KEY, "20260101T000001Z")
    store.put(KEY, [b"again"])
    with pytest.raises(FileExistsError):
        store.quarantine(KEY, "20260101T000000Z")
    assert store.open(KEY).read() == b"again"
    assert moved["Body"] is not None and bucket_keys(s3) == sorted(
        [f"pv/{KEY}", "pv/ab/cd/keep.dcm", f"pv/quarantine/20260101T000000Z/{KEY}"]
    )


def test_clean_staging_removes_what_crashes_left(store: S3BlobStore, s3: S3Endpoint) -> None:
    abandoned = store.stage()
    abandoned.write(blob(9, PART + 1))  # an upload in progress
    abandoned._file.close()  # the writer "crashed": its lock is gone, its spool stays  # type: ignore[union-attr]
    abandoned._file = None
    s3.client().put_object(Bucket=s3.bucket, Key="pv/.staging/dead", Body=b"x")
    alive = store.stage()
    alive.write(b"in progress")
    first = store.clean_staging()
    # The unlocked spool went, the locked one and the recent staging object stayed.
    # (moto dates every multipart upload 2010-11-10, so it may go now or in the next call.)
    assert not abandoned.path.exists() and alive.path.exists()
    assert "pv/.staging/dead" in bucket_keys(s3)
    second = store.clean_staging(now=time.time() + 2 * 86400)
    assert first + second == 3  # the spool, the upload, the staging object
    assert uploads(s3) == [] and bucket_keys(s3) == [] and alive.path.exists()
    alive.discard()


# -- failures -------------------------------------------------------------------------------


def assert_no_secret(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    assert SECRET_ACCESS_KEY not in text


def test_stopped_endpoint_raises_oserror_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = MotoServer(tmp_path / "moto.log")
    server.start()
    try:
        s3 = server.bucket()
        store = make_store(s3, tmp_path / "scratch", max_attempts=2, connect_timeout=2)
        store.put(KEY, [b"stored before"])
        small, big = store.stage(), store.stage()
        small.write(b"x" * 1000)
        big.write(blob(10, PART + 1))  # one part sent
    finally:
        server.stop()
    errors = []
    for call in (
        lambda: store.commit(small, "ab/cd/small.dcm"),
        lambda: big.write(blob(11, PART)),  # the failed part is left for the commit...
        lambda: store.commit(big, "ab/cd/big.dcm"),  # ...which fails
        lambda: store.put("ab/cd/put.dcm", [b"y"]),
        lambda: store.open(KEY),
        lambda: store.open_range(KEY, 0, 10),
        lambda: store.exists(KEY),
        lambda: store.delete(KEY),
        lambda: list(store.keys()),
        lambda: store.size(KEY),
        lambda: store.quarantine(KEY, "b"),
    ):
        try:
            call()
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 10  # all but the write
    for exc in errors:
        assert isinstance(exc, OSError) and isinstance(exc, S3Error), repr(exc)
        assert isinstance(exc, ConnectionError), repr(exc)
        assert exc.strerror and exc.strerror.startswith("S3 ")
        assert_no_secret(exc)
    assert not list(store.scratch.iterdir())  # the failed commits dropped their spools
    assert SECRET_ACCESS_KEY not in caplog.text


def test_nothing_listening(tmp_path: Path) -> None:
    dead = S3Endpoint(f"http://127.0.0.1:{free_port()}", "nobucket")
    store = make_store(dead, tmp_path, max_attempts=1, connect_timeout=1)
    with pytest.raises(ConnectionError) as err:
        store.put(KEY, [b"x"])
    assert isinstance(err.value, S3Error) and err.value.strerror == (
        "S3 PutObject failed: EndpointConnectionError"
    )
    assert_no_secret(err.value)


def test_access_denied_is_a_permission_error(tmp_path: Path) -> None:
    # moto checks credentials after the first request (which creates the bucket).
    server = MotoServer(tmp_path / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    server.start()
    try:
        store = make_store(server.bucket(), tmp_path / "scratch")
        for call in (lambda: store.put(KEY, [b"x"]), lambda: store.open(KEY),
                     lambda: store.exists(KEY), lambda: list(store.keys())):  # fmt: skip
            with pytest.raises(PermissionError) as err:
                call()
            assert isinstance(err.value, S3Error) and "(HTTP 403)" in str(err.value)
            assert_no_secret(err.value)
    finally:
        server.stop()


def test_missing_bucket_is_unavailable_not_missing_object(s3: S3Endpoint, tmp_path: Path) -> None:
    store = make_store(S3Endpoint(s3.endpoint_url, "no-such-bucket-here"), tmp_path)
    with pytest.raises(S3Error) as err:
        store.open(KEY)
    assert not isinstance(err.value, FileNotFoundError) and "NoSuchBucket" in str(err.value)
    with pytest.raises(S3Error):
        store.check()
    make_store(s3, tmp_path).check()


# -- the Archive on S3 ----------------------------------------------------------------------


class S3Site:
    """A data directory opened as ``open_site`` opens it, with an S3BlobStore for its blobs."""

    def __init__(self, data: Path, blobs: S3BlobStore, policy: DuplicatePolicy) -> None:
        if not (data / "pacsvault.toml").exists():
            init_site(data, "PACSVAULT").close()
        settings = load_settings(data)
        settings = settings.model_copy(
            update={"dicom": settings.dicom.model_copy(update={"duplicate_policy": policy})}
        )
        self.site = open_site(data, settings, blobs=blobs)  # type: ignore[arg-type]
        self.index, self.archive, self.blobs = self.site.index, self.site.archive, blobs
        self.principal = self.site.operator()
        self.path = data / "index.sqlite"

    def close(self) -> None:
        self.site.close()

    def rows(self) -> list[tuple[str, str, int]]:
        """(sop instance uid, blob key, size) of every indexed instance."""
        with sqlite3.connect(self.path) as conn:
            return list(conn.execute("SELECT sop_instance_uid, blob_key, size FROM instances"))


@pytest.fixture
def site_factory(s3: S3Endpoint, tmp_path: Path) -> Iterator:
    sites: list[S3Site] = []

    def make(policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST, **kw) -> S3Site:
        data = tmp_path / "data"
        blobs = make_store(s3, data / "blobs" / "tmp", **kw)
        site = S3Site(data, blobs, policy)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


def dataset_of(ds) -> tuple[bytes, str]:
    """(dataset bytes without file meta, transfer syntax) of a pydicom dataset."""
    data = to_bytes(ds)
    ts, offset = split_part10(data)
    return data[offset:], ts


def stored_dataset(s3: S3Endpoint, key: str) -> bytes:
    """The dataset bytes of the Part-10 object stored under blob *key* (read with boto3)."""
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"pv/{key}")["Body"].read()
    assert body[128:132] == b"DICM"
    _ts, offset = split_part10(body)
    return body[offset:]


def big_image(rows: int = 2048, columns: int = 2048, seed: int = 0):
    """One synthetic image of rows x columns 16-bit pixels (8 MiB at 2048 x 2048)."""
    return image(
        patient_id="PVBIG", patient_name="DOE^BIG", birth_date="19700101", sex="F",
        study_uid="1.2.826.0.1.3680043.8.498.77", study_date="20260101", study_time="080000",
        accession="ABIG", study_description="big", series_uid="1.2.826.0.1.3680043.8.498.78",
        series_number=1, modality="CT", instance_number=1, rows=rows, columns=columns,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.79", pixel_seed=seed,
    )  # fmt: skip


def test_archive_stores_part10_objects_in_s3(site_factory, s3: S3Endpoint) -> None:
    site = site_factory()
    sent = {}
    for ds in data_set(Spec(patients=1, studies_per_patient=1, series_per_study=2)):
        dataset, ts = dataset_of(ds)
        result = site.archive.store(site.principal, dataset, ts)
        assert result.status is StoreStatus.STORED, result
        sent[str(ds.SOPInstanceUID)] = dataset
    big = big_image()  # larger than a part: a multipart upload, then the publishing copy
    dataset, ts = dataset_of(big)
    assert site.archive.store(site.principal, dataset, ts).status is StoreStatus.STORED
    sent[str(big.SOPInstanceUID)] = dataset
    rows = site.rows()
    assert {uid for uid, _k, _s in rows} == set(sent)
    for uid, key, size in rows:
        assert key == blob_key(uid)
        assert stored_dataset(s3, key) == sent[uid]
        assert site.blobs.size(key) == size
    assert sorted(site.blobs.keys()) == sorted(k for _u, k, _s in rows)
    assert uploads(s3) == [] and len(bucket_keys(s3)) == len(rows)  # no staging leftovers
    assert not [p for p in site.blobs.scratch.iterdir()]
    report = check(site.index, site.blobs)  # type: ignore[arg-type]
    assert report.ok and (report.rows, report.blobs) == (len(rows), len(rows))


def test_archive_duplicates_as_with_files(site_factory, s3: S3Endpoint) -> None:
    first, second = big_image(64, 64, seed=1), big_image(64, 64, seed=2)
    (d1, ts), (d2, _ts) = dataset_of(first), dataset_of(second)
    key = blob_key(str(first.SOPInstanceUID))

    site = site_factory(DuplicatePolicy.KEEP_FIRST)
    assert site.archive.store(site.principal, d1, ts).status is StoreStatus.STORED
    assert site.archive.store(site.principal, d1, ts).status is StoreStatus.IDENTICAL_DUPLICATE
    assert site.archive.store(site.principal, d2, ts).status is StoreStatus.DUPLICATE_KEPT_FIRST
    assert stored_dataset(s3, key) == d1 and list(site.blobs.keys()) == [key]
    site.close()

    site = site_factory(DuplicatePolicy.REPLACE)
    assert site.archive.store(site.principal, d2, ts).status is StoreStatus.REPLACED
    [(_uid, new_key, _size)] = site.rows()
    assert new_key != key and new_key.endswith(".dcm")
    assert stored_dataset(s3, new_key) == d2
    assert list(site.blobs.keys()) == [new_key]  # the old object was deleted
    assert uploads(s3) == []


def test_archive_answers_storage_unavailable(tmp_path: Path) -> None:
    server = MotoServer(tmp_path / "moto.log")
    server.start()
    try:
        s3 = server.bucket()
        blobs = make_store(s3, tmp_path / "data" / "blobs" / "tmp", max_attempts=1)
        site = S3Site(tmp_path / "data", blobs, DuplicatePolicy.KEEP_FIRST)
    finally:
        server.stop()
    try:
        dataset, ts = dataset_of(next(data_set(Spec(patients=1))))
        result = site.archive.store(site.principal, dataset, ts)
        assert result.status is StoreStatus.OUT_OF_RESOURCES
        assert result.reason == "storage unavailable"
        assert site.rows() == [] and not list(blobs.scratch.iterdir())
    finally:
        site.close()


def test_fsck_repair_quarantines_an_orphan(site_factory, s3: S3Endpoint) -> None:
    site = site_factory()
    for ds in data_set(Spec(patients=1, studies_per_patient=1, series_per_study=1)):
        dataset, ts = dataset_of(ds)
        assert site.archive.store(site.principal, dataset, ts).status is StoreStatus.STORED
    orphan = blob_key("1.2.826.0.1.3680043.8.498.999")
    site.blobs.put(orphan, [b"orphan"])
    report = check(site.index, site.blobs, quick=True)  # type: ignore[arg-type]
    assert report.keys(Kind.ORPHAN) == [orphan]
    fixed = repair(site.index, site.blobs, report, min_age=0)  # type: ignore[arg-type]
    assert [k for k, _where in fixed.moved] == [orphan]
    assert fixed.moved[0][1].startswith(f"s3://{s3.bucket}/pv/quarantine/")
    assert check(site.index, site.blobs).ok  # type: ignore[arg-type]
