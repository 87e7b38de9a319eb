"""Crash safety: kill -9 the server while storescu sends, then check what survived.

Acceptance: while storescu sends at least 500 instances, kill -9 the server; after
restart, every instance that was answered with success is retrievable byte-identical,
and no index row lacks its file.

storescu sends its files in argument order on one association and waits for each
response, so the acknowledged instances are read from its debug log: every C-STORE-RQ
and C-STORE-RSP is dumped there with its message ID and SOP Instance UID, so each
success is paired with the file it answers instead of being assumed from a count.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from conftest import (
    CLIENT_AET,
    SERVER_AET,
    Server,
    add_test_peer,
    dataset_bytes,
    dcmtk,
    dcmtk_path,
    write_data_set,
)
from pacsvault.dicom.part10 import split_part10
from pacsvault.dicom.synthetic import SOP_CLASS_FOR, Spec
from test_robustness import set_dicom_setting

# 50 patients x 2 studies x 2 series x 3 instances = 600 instances of 64x64 pixels.
SPEC = Spec(patients=50, studies_per_patient=2, series_per_study=2, instances_per_series=3, seed=11)
TOTAL = 600


@dataclass(frozen=True)
class Message:
    """One C-STORE-RQ or C-STORE-RSP as dumped by ``storescu -d``."""

    kind: str  # "C-STORE RQ" or "C-STORE RSP"
    fields: dict[str, str]
    file: Path | None  # the file being sent (requests only)


_FIELD = re.compile(r"^D: (?P<key>[A-Za-z][A-Za-z /]*?)\s*: (?P<value>.*)$")


def parse_storescu_log(text: str) -> list[Message]:
    """Every C-STORE request and response in a ``storescu -d`` log, in order."""
    messages: list[Message] = []
    current_file: Path | None = None
    block: dict[str, str] | None = None
    kind = ""

    def close() -> None:
        nonlocal block
        if block is not None:
            messages.append(Message(kind, block, current_file if kind.endswith("RQ") else None))
            block = None

    for line in text.splitlines():
        m = _FIELD.match(line)
        if m and m["key"] == "Message Type":
            close()
            kind, block = m["value"].strip(), {}
        elif m and block is not None:
            block[m["key"]] = m["value"].strip()
        else:
            close()
            if line.startswith("I: Sending file: "):
                current_file = Path(line.removeprefix("I: Sending file: ").strip())
    close()
    return [m for m in messages if m.kind in ("C-STORE RQ", "C-STORE RSP")]


def acknowledged(log_text: str, args: list[Path], uid_of: dict[Path, str]) -> list[Path]:
    """The files storescu sent and got a Success response for, checked for consistency.

    Also checks the assumptions the test rests on: files go out in argument order,
    message IDs count up from 1, each response answers the latest request (same
    message ID and SOP Instance UID, which is that of the file sent).
    """
    messages = parse_storescu_log(log_text)
    requests = [m for m in messages if m.kind == "C-STORE RQ"]
    responses = [m for m in messages if m.kind == "C-STORE RSP"]
    assert [r.file for r in requests] == args[: len(requests)], "files not sent in order"
    assert [int(r.fields["Message ID"]) for r in requests] == list(range(1, len(requests) + 1))
    for r in requests:
        assert r.file is not None
        assert r.fields["Affected SOP Instance UID"] == uid_of[r.file]
    # Strictly request, response, request, response... (at most one outstanding).
    kinds = [m.kind for m in messages]
    assert all(a != b for a, b in itertools.pairwise(kinds)), "pipelined requests"
    assert kinds[:1] in ([], ["C-STORE RQ"])
    by_id = {int(r.fields["Message ID"]): r for r in requests}
    acked = []
    for rsp in responses:
        rq = by_id[int(rsp.fields["Message ID Being Responded To"])]
        assert rsp.fields["Affected SOP Instance UID"] == rq.fields["Affected SOP Instance UID"]
        status = rsp.fields["DIMSE Status"]
        if status.startswith("0x0000"):
            assert rq.file is not None
            acked.append(rq.file)
        else:
            raise AssertionError(f"unexpected store status {status} for {rq.file}")
    return acked


def store_until_killed(
    server: Server,
    files: list[Path],
    kill_after: int,
    log: Path,
    delay: float = 0.0,
    kill: Callable[[], None] | None = None,
) -> int:
    """Run storescu over *files*; kill -9 *server* (its process group, or what *kill*
    kills) *delay* s after *kill_after* responses.

    Returns storescu's exit status.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                dcmtk_path("storescu"),
                "-d",
                "-aet",
                CLIENT_AET,
                "-aec",
                SERVER_AET,
                "127.0.0.1",
                str(server.port),
                *[str(p) for p in files],
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    responses = 0
    pending = b""
    deadline = time.monotonic() + 60
    try:
        with open(log, "rb") as tail:
            while responses < kill_after:
                assert proc.poll() is None, "storescu finished before the kill"
                assert time.monotonic() < deadline, "storescu too slow"
                chunk = tail.read()
                if not chunk:
                    time.sleep(0.002)
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                responses += sum(line.startswith(b"I: Received Store Response") for line in lines)
        time.sleep(delay)
        (kill or server.kill9)()
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def retrieve_studies(server: Server, study_uids: set[str]) -> dict[str, bytes]:
    """C-GET every study in *study_uids*; SOP Instance UID -> dataset bytes received."""
    received: dict[str, bytes] = {}

    def on_store(event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title=CLIENT_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for uid in sorted(set(SOP_CLASS_FOR.values())):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
        roles.append(build_role(uid, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title=SERVER_AET,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        for study_uid in sorted(study_uids):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study_uid
            statuses = [
                s.Status
                for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                if s
            ]
            assert statuses and statuses[-1] == 0x0000, (study_uid, statuses)
    finally:
        assoc.release()
    return received


def check_index_and_blobs(data: Path, expected_sha: dict[str, str]) -> set[str]:
    """Check every index row against its blob file and the derived counts.

    *expected_sha* maps each SOP Instance UID sent to the SHA-256 of its dataset bytes.
    Returns the SOP Instance UIDs in the index.
    """
    objects = data / "blobs" / "objects"
    conn = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute(
            "SELECT sop_instance_uid, blob_key, size, sha256, transfer_syntax_uid FROM instances"
        ).fetchall()
        problems = []
        for uid, key, size, sha, ts in rows:
            path = objects / key
            if not path.is_file():
                problems.append((uid, "blob file missing"))
                continue
            blob = path.read_bytes()
            if len(blob) != size:
                problems.append((uid, f"size {len(blob)} != {size}"))
            file_ts, offset = split_part10(blob)
            if file_ts != ts:
                problems.append((uid, f"transfer syntax {file_ts} != {ts}"))
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            if meta.MediaStorageSOPInstanceUID != uid:
                problems.append((uid, "file meta names another instance"))
            if hashlib.sha256(blob[offset:]).hexdigest() != sha:
                problems.append((uid, "sha256 of the stored dataset differs from the index"))
            if expected_sha.get(uid) != sha:
                problems.append((uid, "stored dataset differs from what was sent"))
        assert problems == []
        uids = [r[0] for r in rows]
        assert len(uids) == len(set(uids))

        # Derived counts equal what the hierarchy holds; no empty entity survives.
        assert (
            conn.execute(
                """SELECT se.pk FROM series se
                   WHERE se.number_of_series_related_instances
                         != (SELECT count(*) FROM instances i WHERE i.series_pk = se.pk)
                      OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.series_pk = se.pk)"""
            ).fetchall()
            == []
        )
        assert (
            conn.execute(
                """SELECT st.pk FROM studies st
                   WHERE st.number_of_study_related_instances
                         != (SELECT count(*) FROM instances i JOIN series se
                             ON i.series_pk = se.pk WHERE se.study_pk = st.pk)
                      OR st.number_of_study_related_series
                         != (SELECT count(*) FROM series se WHERE se.study_pk = st.pk)
                      OR NOT EXISTS (SELECT 1 FROM series se WHERE se.study_pk = st.pk)"""
            ).fetchall()
            == []
        )
        assert (
            conn.execute(
                """SELECT p.pk FROM patients p
                   WHERE p.number_of_patient_related_instances
                         != (SELECT count(*) FROM instances i JOIN series se
                             ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk
                             WHERE st.patient_pk = p.pk)
                      OR p.number_of_patient_related_series
                         != (SELECT count(*) FROM series se JOIN studies st
                             ON se.study_pk = st.pk WHERE st.patient_pk = p.pk)
                      OR p.number_of_patient_related_studies
                         != (SELECT count(*) FROM studies st WHERE st.patient_pk = p.pk)
                      OR NOT EXISTS (SELECT 1 FROM studies st WHERE st.patient_pk = p.pk)"""
            ).fetchall()
            == []
        )
        # Each stored instance committed together with its audit record.
        stored_audits = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'store' AND outcome = 'success'"
        ).fetchone()[0]
        assert stored_audits == len(uids)
    finally:
        conn.close()
    # Temporary files a crash left behind were cleared when the server started again.
    assert list((data / "blobs" / "tmp").iterdir()) == []
    return set(uids)


def unindexed_blobs(data: Path) -> list[str]:
    """Blob files no index row points at (an object written, then killed before commit)."""
    conn = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    try:
        keys = {k for (k,) in conn.execute("SELECT blob_key FROM instances")}
    finally:
        conn.close()
    objects = data / "blobs" / "objects"
    files = {p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file()}
    return sorted(files - keys)


def start_with_workers(data: Path, make_server, workers: int) -> Server:
    """A server on *data* (TESTSCU granted every service) with *workers* DICOM processes."""
    add_test_peer(data)
    set_dicom_setting(data, "workers", str(workers))
    server = make_server(data)
    assert len(server.workers()) == workers
    return server


def test_kill_9_during_storescu_loses_no_acknowledged_instance(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    started = time.monotonic()
    server = start_with_workers(data_dir, make_server, 3)
    written = write_data_set(tmp_path / "files", SPEC)
    assert len(written) == TOTAL
    files = [p for p, _ in written]
    uid_of = {p: str(ds.SOPInstanceUID) for p, ds in written}
    study_of = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for _, ds in written}
    original = {uid_of[p]: dataset_bytes(p) for p in files}
    expected_sha = {uid: hashlib.sha256(b).hexdigest() for uid, b in original.items()}
    data = server.data

    # Round 1: all 600 files; kill -9 after 250 responses.
    rc = store_until_killed(server, files, 250, tmp_path / "storescu1.log")
    assert rc != 0  # storescu saw the association die
    acked1 = acknowledged((tmp_path / "storescu1.log").read_text(), files, uid_of)
    assert 100 <= len(acked1) < TOTAL

    # Restart on the same data directory (a new Server: a new log and port).
    server2 = make_server(data)
    assert server2.proc is not None and server2.proc.poll() is None
    in_index = check_index_and_blobs(data, expected_sha)
    assert {uid_of[p] for p in acked1} <= in_index

    # Round 2: the files not acknowledged yet; kill -9 again a few milliseconds after
    # 150 responses, so most likely while the next store is being written or committed.
    rest = [p for p in files if p not in set(acked1)]
    rc = store_until_killed(server2, rest, 150, tmp_path / "storescu2.log", delay=0.004)
    assert rc != 0
    acked2 = acknowledged((tmp_path / "storescu2.log").read_text(), rest, uid_of)
    assert 100 <= len(acked2) < len(rest)

    server3 = make_server(data)
    in_index = check_index_and_blobs(data, expected_sha)
    # One association, one request outstanding: each kill can strand at most one object.
    stranded = unindexed_blobs(data)
    assert len(stranded) <= 2
    acked = {uid_of[p] for p in [*acked1, *acked2]}
    assert len(acked) == len(acked1) + len(acked2)
    assert acked <= in_index
    assert in_index <= set(original)

    received = retrieve_studies(server3, {study_of[uid] for uid in acked})
    missing = sorted(acked - received.keys())
    assert missing == []
    different = sorted(uid for uid in acked if received[uid] != original[uid])
    assert different == []
    # Everything the studies hold was retrieved, and is what was sent.
    assert all(received[uid] == original[uid] for uid in received)

    elapsed = time.monotonic() - started
    print(
        f"sent {TOTAL}; acknowledged {len(acked1)} + {len(acked2)} = {len(acked)}; "
        f"indexed {len(in_index)}; unindexed blob files {len(stranded)}; "
        f"retrieved identical {len(acked)}; {elapsed:.1f} s"
    )


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def serving_worker(server: Server) -> int:
    """The worker process holding an established connection to the server's DICOM port."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == server.port and fields[3] == "01":  # ESTABLISHED
                established.add(fields[9])
    holders = [pid for pid in server.workers() if _socket_inodes(pid) & established]
    assert len(holders) == 1, holders
    return holders[0]


def test_kill_9_of_one_worker_loses_no_acknowledged_instance(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    """One worker killed mid-ingest: its association dies, the server goes on serving
    (a new worker replaces it), and every acknowledged instance is there."""
    server = start_with_workers(data_dir, make_server, 2)
    written = write_data_set(tmp_path / "files", SPEC)
    files = [p for p, _ in written]
    uid_of = {p: str(ds.SOPInstanceUID) for p, ds in written}
    study_of = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for _, ds in written}
    original = {uid_of[p]: dataset_bytes(p) for p in files}
    expected_sha = {uid: hashlib.sha256(b).hexdigest() for uid, b in original.items()}
    killed: list[int] = []

    def kill_the_serving_worker() -> None:
        pid = serving_worker(server)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    log = tmp_path / "storescu.log"
    rc = store_until_killed(server, files, 200, log, delay=0.003, kill=kill_the_serving_worker)
    assert rc != 0
    acked = acknowledged(log.read_text(), files, uid_of)
    assert 150 <= len(acked) < TOTAL
    assert server.proc is not None and server.proc.poll() is None  # the parent goes on

    deadline = time.monotonic() + 30
    while len(server.workers()) < 2 or killed[0] in server.workers():
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.1)
    assert "DICOM worker" in server.log_text() and "starting a new one" in server.log_text()

    # The rest goes in through the new workers.
    rest = [p for p in files if p not in set(acked)]
    proc = dcmtk("storescu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1",
                 str(server.port), *[str(p) for p in rest])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    in_index = check_index_and_blobs(server.data, expected_sha)
    assert in_index == set(original)
    assert len(unindexed_blobs(server.data)) <= 1

    received = retrieve_studies(server, {study_of[uid] for uid in original})
    assert received == original
    assert "Traceback" not in server.log_text()
    assert server.stop() == 0
