"""The scale-out configuration: index.url and blobs.url, what doctor says of them, and a
site whose index is in PostgreSQL and whose objects are in S3, served end to end.

Passwords must never be shown: every output here is searched for the test cluster's
password and moto's secret key.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import CLIENT_AET, SERVER_AET, Server, cli, dataset_bytes, dcmtk, free_port
from conftest import write_data_set as write_files
from pacsvault.config import Settings, redact_url
from pacsvault.dicom.synthetic import Spec
from pacsvault.security.hardening import check_blob_connection, check_index_connection
from pg_server import PASSWORD
from s3_server import (  # noqa: F401 (fixtures)
    SECRET_ACCESS_KEY,
    S3Endpoint,
    moto_server_fixture,
    s3_fixture,
)


def test_redact_url() -> None:
    assert redact_url("postgresql://pacs:s3cret@db:5432/pacs?sslmode=verify-full") == (
        "postgresql://pacs:***@db:5432/pacs?sslmode=verify-full"
    )
    assert redact_url("postgresql:///pacs?host=/run/pg&password=s3cret") == (
        "postgresql:///pacs?host=/run/pg&password=***"
    )
    for same in ("postgresql://pacs@db/pacs", "s3://bucket/p", "", "sqlite:////x/index.sqlite"):
        assert redact_url(same) == same


@pytest.mark.parametrize(
    ("url", "ok", "severity", "shown"),
    [
        ("", True, None, "SQLite"),
        ("postgresql://pacs:pw@db.example.org/pacs", False, "medium", "pacs:***@db.example.org"),
        ("postgresql://pacs@db.example.org/pacs?sslmode=prefer", False, "medium", "sslmode=prefer"),
        ("postgresql://pacs@db.example.org/pacs?sslmode=require", False, "low", "not checked"),
        ("postgresql://pacs@db.example.org/pacs?sslmode=verify-full", True, None, "verify-full"),
        ("postgresql://pacs@127.0.0.1:5432/pacs", True, None, "this machine only"),
        ("postgresql://pacs@[::1]/pacs", True, None, "this machine only"),
        ("postgresql:///pacs?host=/var/run/postgresql", True, None, "this machine only"),
        ("postgresql://pacs@localhost,db2.example.org/pacs", False, "medium", "cleartext"),
    ],
)
def test_doctor_on_the_index_connection(url: str, ok: bool, severity, shown: str) -> None:
    check = check_index_connection(url)[0]
    assert check.ok is ok and shown in check.detail, check
    if not ok:
        assert check.severity == severity
    assert "pw@" not in check.detail


def test_doctor_on_the_object_storage_connection() -> None:
    def blobs(url: str = "", endpoint: str = "") -> Settings:
        return Settings.model_validate({"blobs": {"url": url, "endpoint": endpoint}})

    assert check_blob_connection(blobs(), {})[0].ok
    assert check_blob_connection(blobs("s3://b/p"), {})[0].ok  # AWS itself: HTTPS
    assert check_blob_connection(blobs("s3://b/p", "https://minio.example.org"), {})[0].ok
    assert check_blob_connection(blobs("s3://b/p", "http://127.0.0.1:9000"), {})[0].ok
    remote = check_blob_connection(blobs("s3://b/p", "http://minio.example.org:9000"), {})[0]
    assert not remote.ok and remote.severity == "medium" and "cleartext" in remote.detail
    from_env = check_blob_connection(blobs("s3://b/p"), {"AWS_ENDPOINT_URL": "http://10.1.1.1"})
    assert not from_env[0].ok


def test_settings_keys(tmp_path: Path) -> None:
    """index.url is the key; storage.index_url is still read; bad values name the key."""
    assert Settings.model_validate({"index": {"url": "postgresql://h/d"}}).index_url
    assert Settings.model_validate({"storage": {"index_url": "postgresql://h/d"}}).index_url
    for bad in ({"index": {"url": "mysql://u:pw@h/d"}}, {"blobs": {"url": "/srv/blobs"}},
                {"blobs": {"endpoint": "http://key:secret@minio"}},
                {"index": {"node": "Node 1"}}):  # fmt: skip
        with pytest.raises(ValueError):
            Settings.model_validate(bad)
    proc = cli(tmp_path / "d", "init", "--index-url", "mysql://u:pw@h/d", check=False)
    assert proc.returncode == 2 and "index.url" in proc.stderr and "pw" not in proc.stderr
    assert not (tmp_path / "d").exists()


def test_an_unreachable_index_is_one_line_without_the_password(tmp_path: Path) -> None:
    data = tmp_path / "d"
    cli(data, "init")
    url = f"postgresql://pacs:{PASSWORD}@127.0.0.1:{free_port()}/pacs"
    settings = data / "pacsvault.toml"
    settings.write_text(settings.read_text().replace('url = ""', f'url = "{url}"', 1))
    proc = cli(data, "status", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("pacsvault: cannot open the index at postgresql://pacs:***@")
    assert PASSWORD not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def scaled(pg_url: str, s3: S3Endpoint, tmp_path: Path, make_server):  # type: ignore[no-untyped-def]
    """A site on PostgreSQL + S3 (moto), with TESTSCU registered, served."""
    env = s3.env()
    os.environ.update(env)  # the server and every command reach moto like this
    try:
        data = tmp_path / "data"
        out = cli(data, "init", "--aet", SERVER_AET, "--index-url", pg_url,
                  "--blob-url", s3.url("site1"))  # fmt: skip
        assert "objects: S3 s3://" in out.stdout and "index: postgresql" in out.stdout
        cli(data, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
            "--allow", "echo,store,find,get")  # fmt: skip
        yield make_server(data), s3
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_postgresql_and_s3_end_to_end(scaled, tmp_path: Path) -> None:
    """storescu into PostgreSQL + S3, findscu and getscu back byte-identical, QIDO-RS and
    WADO-RS over HTTPS; no object in the data directory; no secret in any output."""
    server, s3 = scaled
    files = write_files(tmp_path / "f", Spec(patients=2, studies_per_patient=1, seed=11))
    proc = dcmtk("storescu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), *[str(p) for p, _ in files])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert len(keys) == len(files) and all(k.startswith("site1/") for k in keys)
    assert not [p for p in (server.data / "blobs").rglob("*.dcm")]

    out = tmp_path / "find"
    out.mkdir()
    patient = str(files[0][1].PatientName)
    prefix = patient.lower()[:3]  # matched case-insensitively
    proc = dcmtk("findscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "-S", "-X", "-od", str(out),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                 "-k", f"PatientName={prefix}*", "127.0.0.1", str(server.port))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = {str(pydicom.dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm")}
    expected = {str(ds.StudyInstanceUID) for _, ds in files
                if str(ds.PatientName).lower().startswith(prefix)}  # fmt: skip
    assert found == expected and found

    study = sorted(found)[0]
    got = tmp_path / "get"
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

    password = cli(server.data, "user", "add", "rad", "--role", "radiologist").stdout
    assert "(shown once)" in password
    token = cli(server.data, "token", "create", "--user", "rad", "--scope", "read")
    token = token.stdout.strip().splitlines()[-1]
    web = requests.Session()
    web.verify = str(server.data / "tls" / "ca.crt")
    web.trust_env = False
    web.headers["Authorization"] = f"Bearer {token}"
    base = f"https://localhost:{server.https_port}/dicom-web"
    r = web.get(f"{base}/studies", params={"PatientName": f"{patient[:3]}*"}, timeout=30)
    assert r.status_code == 200, r.text
    assert {s["0020000D"]["Value"][0] for s in r.json()} == expected
    r = web.get(f"{base}/studies/{study}/series", timeout=30)
    assert r.status_code == 200 and len(r.json()) >= 1
    r = web.get(f"{base}/studies/{study}", timeout=60,
                headers={"Accept": 'multipart/related; type="application/dicom"'})  # fmt: skip
    assert r.status_code == 200 and r.content.count(b"DICM") == len(sent)

    status = cli(server.data, "status").stdout
    assert f"instances: {len(files)}" in status and "index: postgresql" in status
    doctor = cli(server.data, "doctor", check=False)
    assert "index connection" in doctor.stdout and "this machine only" in doctor.stdout
    assert "audit trail intact" in cli(server.data, "audit", "verify").stdout
    server.stop()
    outputs = status + doctor.stdout + doctor.stderr + server.log_text()
    for secret in (PASSWORD, SECRET_ACCESS_KEY):
        assert secret not in outputs


def test_server_on_postgresql_starts_from_a_settings_file_with_the_older_key(
    pg_url: str, tmp_path: Path
) -> None:
    """storage.index_url (the key before index.url) still puts the index in PostgreSQL."""
    data = tmp_path / "d"
    cli(data, "init")
    settings = data / "pacsvault.toml"
    text = settings.read_text().replace("[storage]\n", f'[storage]\nindex_url = "{pg_url}"\n')
    settings.write_text(text)
    (data / "index.sqlite").unlink()
    server = Server(data, free_port(), tmp_path / "s.log")
    server.start()
    try:
        assert "index: postgresql" in cli(data, "status").stdout
    finally:
        server.stop()
    assert not (data / "index.sqlite").exists()


def test_a_second_node_with_the_same_name_is_warned(pg_url: str, tmp_path: Path) -> None:
    """A data directory copied for a new node without its own index.node: the second
    ``serve`` on the shared index says so at start (and serves: a misnamed node costs
    speed, not correctness); once the first has died, the name is free again."""
    one, two = tmp_path / "one", tmp_path / "two"
    cli(one, "init", "--index-url", pg_url)
    shutil.copytree(one, two)
    first = Server(one, free_port(), tmp_path / "one.log")
    first.start()
    warning = "another running node uses the node name '' (the default) on this index"
    try:
        second = Server(two, free_port(), tmp_path / "two.log")
        second.start()
        second.stop()
        assert warning in second.log_text() and "index.node" in second.log_text()
        assert warning not in first.log_text()
    finally:
        first.kill9()  # no clean stop: the lock goes with the dead process's session
    third = Server(two, free_port(), tmp_path / "three.log")
    third.start()
    third.stop()
    assert warning not in third.log_text()
