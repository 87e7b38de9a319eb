"""``pacsvault migrate``: an embedded archive (SQLite + files) copied to PostgreSQL + S3,
verified (counts and hashes), resumable, and then served from there.

PostgreSQL is tests/pg_server.py's, S3 is moto (tests/s3_server.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from conftest import CLIENT_AET, SERVER_AET, cli, dataset_bytes, dcmtk, write_data_set
from pacsvault.dicom.synthetic import Spec
from pg_server import PASSWORD
from s3_server import (  # noqa: F401 (fixtures)
    SECRET_ACCESS_KEY,
    S3Endpoint,
    moto_server_fixture,
    s3_fixture,
)


@pytest.fixture
def s3_env(s3: S3Endpoint) -> Iterator[S3Endpoint]:
    """moto's endpoint and credentials in the environment, as an operator would set them."""
    env = s3.env()
    os.environ.update(env)
    yield s3
    for key in env:
        os.environ.pop(key, None)


@pytest.fixture
def embedded(tmp_path: Path) -> tuple[Path, list]:
    """An embedded archive: studies sent with storescu, a peer, a user, a share, audit."""
    data = tmp_path / "data"
    cli(data, "init", "--aet", SERVER_AET)
    cli(data, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", "echo,store,find,get")  # fmt: skip
    cli(data, "user", "add", "rita", "--role", "referrer")
    files = write_data_set(tmp_path / "f", Spec(patients=3, studies_per_patient=1, seed=5))
    assert f"stored: {len(files)}" in cli(data, "import", str(tmp_path / "f")).stdout
    cli(data, "share", str(files[0][1].StudyInstanceUID), "--user", "rita")
    return data, files


def migrate(data: Path, pg_url: str, s3: S3Endpoint, *extra: str, check: bool = True):
    return cli(data, "migrate", "--to-index", pg_url, "--to-blobs", s3.url("moved"), *extra,
               check=check)  # fmt: skip


def test_migrate_copies_verifies_and_switches(embedded, pg_url: str, s3_env: S3Endpoint,
                                              make_server, tmp_path: Path) -> None:  # fmt: skip
    data, files = embedded
    before = cli(data, "status").stdout
    out = migrate(data, pg_url, s3_env)
    assert "every table compared equal" in out.stdout, out.stdout
    assert f"objects: {len(files)} verified" in out.stdout and f"({len(files)} copied" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr and "pacs:***@" in out.stdout
    assert "index: SQLite" in cli(data, "status").stdout  # not switched yet

    # Run again (as after an interruption): nothing copied twice, everything compared again.
    again = migrate(data, pg_url, s3_env, "--switch")
    assert "already copied" in again.stdout and f"{len(files)} already there" in again.stdout
    after = cli(data, "status").stdout
    assert "index: postgresql" in after and "objects: S3 s3://" in after
    for line in ("patients: 3", f"instances: {len(files)}", "peers: 1, users: 1"):
        assert line in before and line in after
    assert "rita" in cli(data, "share", "--list").stdout
    verify = cli(data, "audit", "verify", check=False)
    assert verify.returncode == 0 and "audit trail intact" in verify.stdout, verify.stdout
    assert "migrate to index postgresql://pacs:***@" in cli(data, "audit", "search").stdout

    # Served from PostgreSQL + S3: retrieved byte for byte, new objects go to S3.
    os.rename(data / "index.sqlite", tmp_path / "old-index.sqlite")  # not used any more
    server = make_server(data)
    study = str(files[0][1].StudyInstanceUID)
    got = tmp_path / "got"
    got.mkdir()
    proc = dcmtk("getscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "-S", "-od", str(got),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                 "127.0.0.1", str(server.port))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sent = {str(ds.SOPInstanceUID): p for p, ds in files if str(ds.StudyInstanceUID) == study}
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in got.iterdir()}  # fmt: skip
    assert received.keys() == sent.keys()
    for uid, path in sent.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(path)
    more = write_data_set(tmp_path / "more", Spec(patients=1, studies_per_patient=1, seed=99))
    proc = dcmtk("storescu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), *[str(p) for p, _ in more])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix="moved/")
    assert listed["KeyCount"] == len(files) + len(more)
    server.stop()
    assert PASSWORD not in server.log_text() and SECRET_ACCESS_KEY not in server.log_text()


def test_an_interrupted_or_damaged_copy_is_completed(embedded, pg_url: str,
                                                     s3_env: S3Endpoint) -> None:  # fmt: skip
    data, files = embedded
    migrate(data, pg_url, s3_env)
    client, bucket = s3_env.client(), s3_env.bucket
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="moved/")["Contents"]]
    client.delete_object(Bucket=bucket, Key=keys[0])  # never copied (interrupted)
    client.put_object(Bucket=bucket, Key=keys[1], Body=b"not what was stored")  # damaged
    out = migrate(data, pg_url, s3_env)
    assert f"objects: {len(files)} verified" in out.stdout
    assert "1 copied," in out.stdout and "1 copied again" in out.stdout, out.stdout


def test_a_source_changed_after_the_copy_or_a_used_target_is_refused(
    embedded, pg_url: str, s3_env: S3Endpoint, tmp_path: Path
) -> None:
    data, _files = embedded
    migrate(data, pg_url, s3_env)
    cli(data, "peer", "add", "late", "--aet", "LATE", "--host", "127.0.0.1", "--allow", "echo")
    out = migrate(data, pg_url, s3_env, check=False)
    assert out.returncode == 2 and "the source changed since it was copied" in out.stderr
    other = tmp_path / "other"
    cli(other, "init")
    out = cli(other, "migrate", "--to-index", pg_url, check=False)
    assert out.returncode == 2 and "migrated from another archive" in out.stderr
    out = cli(other, "migrate", check=False)
    assert out.returncode == 2 and "nothing to do" in out.stderr


def test_the_reference_set_moves_and_fsck_confirms_it(pg_url: str, s3_env: S3Endpoint,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """pydicom's bundled files (every one the importer accepts, from many vendors and
    syntaxes) and a generated 1,000-instance set, moved and checked by fsck on S3."""
    data = tmp_path / "data"
    cli(data, "init", "--aet", SERVER_AET)
    bundled = cli(data, "import", str(Path(pydicom.__file__).parent / "data" / "test_files"),
                  check=False)  # fmt: skip
    stored = int(re.search(r"stored: (\d+)", bundled.stdout).group(1))  # type: ignore[union-attr]
    assert stored >= 50, bundled.stdout
    files = write_data_set(
        tmp_path / "f",
        Spec(patients=10, studies_per_patient=1, series_per_study=2, instances_per_series=50),
    )
    assert len(files) == 1000
    assert "stored: 1000" in cli(data, "import", str(tmp_path / "f")).stdout
    before = cli(data, "status").stdout
    total = int(re.search(r"instances: (\d+)", before).group(1))  # type: ignore[union-attr]
    assert total == stored + 1000
    assert cli(data, "fsck", check=False).returncode == 0

    out = migrate(data, pg_url, s3_env, "--switch")
    assert "every table compared equal" in out.stdout, out.stdout
    assert f"objects: {total} verified" in out.stdout, out.stdout
    after = cli(data, "status").stdout
    assert "index: postgresql" in after and "objects: S3 s3://" in after
    for key in ("patients", "studies", "series", "instances", "bytes"):
        line = re.search(rf"(?m)^{key}: .*$", before).group(0)  # type: ignore[union-attr]
        assert line in after, (line, after)
    fsck = cli(data, "fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert f"{total} index rows and {total} blobs" in fsck.stdout, fsck.stdout
    verify = cli(data, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout
