"""Two `serve` nodes on one PostgreSQL and one S3 endpoint, with HAProxy in front.

deploy/haproxy.cfg runs unchanged (addresses and ports from the environment). A node is
kill -9'd (its whole process group) in the middle of an ingest through the balancer:
every instance a sender saw acknowledged is then retrieved byte-identical through the
balancer from the surviving node, by C-GET and by WADO-RS; fsck and audit verify pass.
Lockouts and sessions made on one node hold on the other.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pynetdicom import AE
from pynetdicom.association import Association

from conftest import (
    CLIENT_AET,
    SERVER_AET,
    Server,
    add_user,
    cli,
    dataset_bytes,
    dcmtk_path,
    free_port,
    https_session,
    https_url,
    web_login,
)
from conftest import write_data_set as write_files
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec
from pg_server import pg_server_fixture, pg_url_fixture  # noqa: F401 (fixtures)
from s3_server import S3Endpoint, moto_server_fixture, s3_fixture  # noqa: F401 (fixtures)
from test_load_balancer import Balancer, _pump, set_in_section

SENDERS = 4
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def nodes(pg_url: str, s3: S3Endpoint, tmp_path: Path):  # type: ignore[no-untyped-def]
    """node1 and node2 (same site: settings, CA and keys copied), HAProxy in front."""
    env = s3.env()
    os.environ.update(env)  # the servers and every command reach moto like this
    servers: list[Server] = []
    lb = None
    try:
        one = tmp_path / "node1"
        cli(one, "init", "--aet", SERVER_AET, "--index-url", pg_url,
            "--blob-url", s3.url("site"))  # fmt: skip
        cli(one, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
            "--allow", "echo,store,find,get")  # fmt: skip
        set_in_section(one, "dicom", "trusted_proxies", '["127.0.0.1"]')
        set_in_section(one, "web", "trusted_proxies", '["127.0.0.1"]')
        two = tmp_path / "node2"
        shutil.copytree(one, two)
        for data, name in ((one, '"node1"'), (two, '"node2"')):
            set_in_section(data, "index", "node", name)
        for n, data in enumerate((one, two), start=1):
            server = Server(data, free_port(), tmp_path / f"node{n}.log")
            server.start()
            servers.append(server)
        lb = Balancer(tmp_path, servers)
        yield servers, lb
    finally:
        if lb is not None:
            lb.stop()
        for server in servers:
            server.stop()
        for key in env:
            os.environ.pop(key, None)


def _send(port: int, files: list[Path], acked: list[str], log: Path) -> None:
    """storescu -v through the balancer; the files it saw acknowledged go into *acked*."""
    proc = subprocess.run(
        [dcmtk_path("storescu"), "-v", "-aet", CLIENT_AET, "-aec", SERVER_AET,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    log.write_text(proc.stdout + proc.stderr)
    current = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"I: Sending file: (.*)$", line):
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None


def _uploader_site(data: Path, *init_args: str) -> str:
    """A site (``init`` with *init_args*) with a peer allowed echo and store, and an
    uploader with a write token; the token."""
    cli(data, "init", "--aet", SERVER_AET, *init_args)
    cli(data, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", "echo,store")  # fmt: skip
    assert add_user(data, "up", "uploader")
    token = cli(data, "token", "create", "--user", "up", "--scope", "write")
    return token.stdout.strip().splitlines()[-1]


def test_a_node_killed_mid_ingest_loses_no_acknowledged_instance(nodes, tmp_path: Path) -> None:
    (node1, node2), lb = nodes
    files = write_files(
        tmp_path / "f",
        Spec(patients=5, studies_per_patient=1, series_per_study=2, instances_per_series=50),
    )
    assert len(files) == 500
    by_path = {str(p): ds for p, ds in files}
    acked: list[str] = []
    share = [[p for p, _ in files[i::SENDERS]] for i in range(SENDERS)]
    senders = [threading.Thread(target=_send, args=(lb.dicom_port, part, acked,
                                                    tmp_path / f"storescu{i}.log"))
               for i, part in enumerate(share)]  # fmt: skip
    for t in senders:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(acked) >= 100, "no ingest through the balancer"
    node1.kill9()  # its workers with it
    for t in senders:
        t.join(timeout=600)
    assert 100 <= len(acked) < 500 or len(acked) == 500
    acked_uids = {str(by_path[p].SOPInstanceUID): p for p in acked}

    # Everything acknowledged, retrieved from the survivor through the balancer.
    studies = {str(by_path[p].StudyInstanceUID) for p in acked}
    got = tmp_path / "get"
    got.mkdir()
    for study in sorted(studies):
        proc = subprocess.run(
            [dcmtk_path("getscu"), "-aet", CLIENT_AET, "-aec", SERVER_AET, "-S", "-od", str(got),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
             "127.0.0.1", str(lb.dicom_port)],
            capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in got.iterdir()}  # fmt: skip
    missing = acked_uids.keys() - received.keys()
    assert not missing, f"{len(missing)} acknowledged instances lost"
    for uid, path in acked_uids.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(Path(path)), uid

    add_user(node2.data, "rad", "radiologist")
    secret = cli(node2.data, "token", "create", "--user", "rad", "--scope", "read")
    web = https_session(node2, secret.stdout.strip().splitlines()[-1])
    study = sorted(studies)[0]
    r = web.get(f"https://localhost:{lb.https_port}/dicom-web/studies/{study}", timeout=120,
                headers={"Accept": 'multipart/related; type="application/dicom"'})  # fmt: skip
    assert r.status_code == 200, r.text[:300]
    in_study = [u for u, p in acked_uids.items() if str(by_path[p].StudyInstanceUID) == study]
    assert r.content.count(b"DICM") >= len(in_study)

    node2.stop()
    # The index and S3 agree: nothing missing or damaged. The killed node may have left
    # the object it was storing when it died (durable in S3, never indexed, never
    # acknowledged): an orphan, at most one per sender, which `fsck --repair` quarantines
    # once it is a minute old.
    fsck = cli(node2.data, "fsck", check=False)
    summary = re.search(r"orphans=(\d+) missing=0 size=0 sha256=0 unreadable=0", fsck.stdout)
    assert summary and int(summary.group(1)) <= SENDERS, fsck.stdout + fsck.stderr
    verify = cli(node2.data, "audit", "verify", "--checkpoints",
                 str(node1.data / "audit" / "checkpoints.log"), check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_lockouts_and_sessions_hold_across_nodes(nodes) -> None:
    (node1, node2), _lb = nodes
    password = add_user(node1.data, "rad", "radiologist")
    web = web_login(node1, "rad", password)
    assert web is not None
    r = web.get(https_url(node2, "/api/session"), timeout=30)  # node1's cookie, at node2
    assert r.status_code == 200 and r.json()["user"] == "rad", r.text

    for _ in range(6):
        assert web_login(node1, "rad", "wrong password") is None
    assert web_login(node2, "rad", password) is None  # locked on node2 too
    assert "address:127.0.0.1" in cli(node2.data, "lockout", "list").stdout


def test_an_unavailable_index_never_answers_success(
    pg_server, pg_url: str, tmp_path: Path, make_server
) -> None:
    """PostgreSQL stopped in the middle of an association: every C-STORE then fails
    (0xA700, never success) and STOW-RS answers 503; after the restart the sender's
    retry stores everything, once."""
    data = tmp_path / "data"
    secret = _uploader_site(data, "--index-url", pg_url)
    server = make_server(data)
    files = write_files(
        tmp_path / "f",
        Spec(patients=2, studies_per_patient=2, series_per_study=1, instances_per_series=5),
    )
    assoc = _storage_association(server, timeout=60)
    first, rest = files[:5], files[5:]
    assert [assoc.send_c_store(ds).Status for _, ds in first] == [0] * len(first)
    pg_server.stop()
    try:
        statuses = []
        for _, ds in rest[:5]:
            rsp = assoc.send_c_store(ds)
            statuses.append(rsp.Status if "Status" in rsp else None)
        assert statuses and all(s is not None and s != 0 and s >= 0xA000 for s in statuses), [
            hex(s) if s is not None else s for s in statuses
        ]
        assert 0xA700 in statuses
        if assoc.is_established:
            assoc.release()
        r = _stow(server, secret, rest[5][0], timeout=60)
        assert r.status_code == 503, (r.status_code, r.text[:300])
    finally:
        pg_server.start()
    # The sender retries everything: stored once each, byte-identical.
    proc = subprocess.run(
        [dcmtk_path("storescu"), "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1",
         str(server.port), *[str(p) for p, _ in files]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"instances: {len(files)}\n" in cli(data, "status").stdout


def _storage_association(server: Server, timeout: float) -> Association:
    """A pynetdicom association to *server* proposing every synthetic storage class."""
    ae = AE(ae_title=CLIENT_AET)
    for uid in SOP_CLASS_FOR.values():
        ae.add_requested_context(uid, EXPLICIT_LE)
    ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
    assert assoc.is_established
    return assoc


def _stow_body(path: Path) -> tuple[bytes, str]:
    boundary = "pacsvault-node-test"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow(server: Server, token: str, path: Path, timeout: float) -> requests.Response:
    """STOW-RS of the file at *path* to *server* with *token*."""
    body, ctype = _stow_body(path)
    return https_session(server, token).post(
        https_url(server, "/dicom-web/studies"), data=body,
        headers={"Content-Type": ctype, "Accept": "application/dicom+json"}, timeout=timeout,
    )  # fmt: skip


class Cuttable:
    """A TCP relay to *target*; :meth:`cut` refuses new connections and resets open ones
    (the endpoint is down), :meth:`restore` listens on the same port again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._run, args=(listener,), daemon=True).start()

    def _run(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        self._listener.close()
        conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset


def test_an_unavailable_object_store_never_answers_success(
    pg_url: str, s3: S3Endpoint, tmp_path: Path, make_server
) -> None:
    """S3 unreachable in the middle of an association: C-STORE fails (0xA700), STOW-RS
    answers 503; once it is back the sender's retry stores everything, and fsck agrees."""
    relay = Cuttable(int(s3.endpoint_url.rsplit(":", 1)[1]))
    env = {**s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"}
    os.environ.update(env)
    try:
        data = tmp_path / "data"
        secret = _uploader_site(data, "--index-url", pg_url, "--blob-url", s3.url("cut"))
        server = make_server(data)
        files = write_files(
            tmp_path / "f",
            Spec(patients=2, studies_per_patient=2, series_per_study=1, instances_per_series=3),
        )
        assoc = _storage_association(server, timeout=120)
        assert [assoc.send_c_store(ds).Status for _, ds in files[:3]] == [0, 0, 0]
        relay.cut()
        statuses = []
        for _, ds in files[3:5]:
            rsp = assoc.send_c_store(ds)
            statuses.append(rsp.Status if "Status" in rsp else None)
        assert statuses == [0xA700, 0xA700], statuses
        if assoc.is_established:
            assoc.release()
        r = _stow(server, secret, files[5][0], timeout=120)
        assert r.status_code == 503, (r.status_code, r.text[:300])
        relay.restore()
        proc = subprocess.run(
            [dcmtk_path("storescu"), "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1",
             str(server.port), *[str(p) for p, _ in files]],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "TCP_NODELAY": "1"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"instances: {len(files)}\n" in cli(data, "status").stdout
        server.stop()
        fsck = cli(data, "fsck", check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        relay.cut()
        for key in env:
            os.environ.pop(key, None)
