"""The audit trail: tamper evidence, accounting of disclosures, export and syslog forwarding."""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import CLIENT_AET, SERVER_AET, IndexDB, add_echo_peers, cli, dcmtk
from pacsvault.security.audit import record_hash
from pacsvault.security.tls import LocalCA


@pytest.fixture
def trail(any_data_dir: Path) -> Path:
    """A data directory with a few dozen audit records (init, demo load, peer changes),
    its index in SQLite, then PostgreSQL."""
    data_dir = any_data_dir
    cli(data_dir, "demo", "--patients", "2")
    add_echo_peers(data_dir, 3)
    return data_dir


def verify(data: Path):
    return cli(data, "audit", "verify", check=False)


def db(data: Path) -> IndexDB:
    """The data directory's index (SQLite or PostgreSQL), to tamper with."""
    return IndexDB(data)


def test_untouched_trail_verifies(trail: Path) -> None:
    out = verify(trail)
    assert out.returncode == 0, out.stdout
    assert re.search(r"audit trail intact: \d+ records", out.stdout)


def test_edited_record_is_pinpointed(trail: Path) -> None:
    with db(trail) as conn:
        conn.execute("UPDATE audit_events SET outcome='refused' WHERE seq=5")
    out = verify(trail)
    assert out.returncode == 1
    assert out.stdout.startswith("seq 5 ") and "modified" in out.stdout


def test_deleted_record_is_pinpointed(trail: Path) -> None:
    with db(trail) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq=7")
    out = verify(trail)
    assert out.returncode == 1
    assert "seq 8 " in out.stdout and "record(s) 7 deleted" in out.stdout


def test_swapped_records_are_pinpointed(trail: Path) -> None:
    with db(trail) as conn:
        rows = {
            r[0]: r for r in conn.execute("SELECT id, seq FROM audit_events WHERE seq IN (9, 10)")
        }
        (id9,) = [i for i, r in rows.items() if r[1] == 9]
        (id10,) = [i for i, r in rows.items() if r[1] == 10]
        described = conn.execute("SELECT * FROM audit_events WHERE 1 = 0").description
        cols = [c[0] for c in described if c[0] != "id"]
        r9 = conn.execute(
            f"SELECT {','.join(cols)} FROM audit_events WHERE id=?", (id9,)
        ).fetchone()
        r10 = conn.execute(
            f"SELECT {','.join(cols)} FROM audit_events WHERE id=?", (id10,)
        ).fetchone()
        conn.execute("DELETE FROM audit_events WHERE id IN (?, ?)", (id9, id10))
        marks = ",".join("?" * (len(cols) + 1))
        conn.execute(
            f"INSERT INTO audit_events (id,{','.join(cols)}) VALUES ({marks})", (id9, *r10)
        )
        conn.execute(
            f"INSERT INTO audit_events (id,{','.join(cols)}) VALUES ({marks})", (id10, *r9)
        )
    out = verify(trail)
    assert out.returncode == 1
    assert "seq 9 " in out.stdout and "out of order" in out.stdout


def test_inserted_record_is_pinpointed(trail: Path) -> None:
    with db(trail) as conn:
        (prev,) = conn.execute("SELECT hash FROM audit_events WHERE seq=3").fetchone()
        conn.execute("UPDATE audit_events SET seq = seq + 1000 WHERE seq > 3")
        row = {
            "seq": 4,
            "time": time.time(),
            "event_code": "110114",
            "action": "login",
            "outcome": "success",
            "actor": "user:mallory",
            "address": "10.6.6.6",
            "study_uid": None,
            "patient_ref": None,
            "detail": None,
        }
        digest = record_hash(prev, row)
        conn.execute(
            "INSERT INTO audit_events (seq, time, event_code, action, outcome, actor, address,"
            " prev_hash, hash) VALUES (4, ?, '110114', 'login', 'success', 'user:mallory',"
            " '10.6.6.6', ?, ?)",
            (row["time"], prev, digest),
        )
        conn.execute("UPDATE audit_events SET seq = seq - 1000 + 1 WHERE seq > 1000")
    out = verify(trail)
    assert out.returncode == 1
    assert "seq 5 " in out.stdout  # the record after the forged one no longer chains


def test_truncated_tail_is_detected(trail: Path) -> None:
    with db(trail) as conn:
        (last,) = conn.execute("SELECT max(seq) FROM audit_events").fetchone()
        conn.execute("DELETE FROM audit_events WHERE seq > ?", (last - 3,))
    out = verify(trail)
    assert out.returncode == 1
    assert f"tail truncated: records {last - 2}-{last} are missing" in out.stdout


def test_truncation_with_a_forged_head_is_caught_by_signed_checkpoints(trail: Path) -> None:
    settings = trail / "pacsvault.toml"
    settings.write_text(
        settings.read_text().replace("checkpoint_every = 100", "checkpoint_every = 2")
    )
    for n in range(10):
        cli(trail, "peer", "remove", f"p{n}", check=False)
    with db(trail) as conn:
        (cp,) = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()
        assert cp
        conn.execute("DELETE FROM audit_events WHERE seq >= ?", (cp - 1,))
        (seq, digest) = conn.execute(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE meta SET value=? WHERE key='audit_head'", (f"{seq}:{digest}",))
    out = verify(trail)
    assert out.returncode == 1
    assert f"signed checkpoint at seq {cp}" in out.stdout


def test_who_accessed_and_no_phi(server, tmp_path: Path) -> None:
    cli(server.data, "demo", "--patients", "3")
    from pacsvault.dicom.synthetic import Spec, data_set

    names = {str(ds.PatientName) for ds in data_set(Spec(patients=3))}
    out = tmp_path / "got"
    out.mkdir()
    proc = dcmtk(
        "getscu",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "-P",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=PV0100001",
        "127.0.0.1",
        str(server.port),
    )
    assert proc.returncode == 0, proc.stderr
    report = cli(server.data, "audit", "who-accessed", "--patient", "PV0100001").stdout
    lines = report.strip().splitlines()
    retrieves = [x for x in lines if "\tretrieve\t" in x]
    # Per study: one record when the retrieve starts, one with what was sent when it ends.
    assert len(retrieves) == 4 and all("peer:test\t127.0.0.1" in x for x in retrieves)
    assert len([x for x in retrieves if "started: 4 instances" in x]) == 2
    assert len([x for x in retrieves if "ended: completed 4, failed 0, warning 0" in x]) == 2
    assert len([x for x in lines if "\tstore\t" in x]) == 8
    other = cli(server.data, "audit", "who-accessed", "--patient", "PV0100002").stdout
    assert "\tretrieve\t" not in other and other.count("\tstore\t") == 8
    # Nothing in the trail identifies a patient in clear.
    with sqlite3.connect(server.data / "index.sqlite") as conn:
        dump = "\n".join(str(r) for r in conn.execute("SELECT * FROM audit_events"))
    assert "PV0100001" not in dump and not any(n in dump for n in names)
    used = [d for a, o, _, _, d in server.audit() if a == "audit-use"]
    assert any(d.startswith("who-accessed by patient") for d in used)
    assert not any("PV01" in d for d in used)


def test_export_is_dicom_audit_xml(trail: Path, tmp_path: Path) -> None:
    path = tmp_path / "audit.xml"
    cli(trail, "audit", "export", "--out", str(path))
    messages = [ET.fromstring(line) for line in path.read_text().splitlines()]
    assert len(messages) > 10
    stores = [
        m for m in messages if m.find("EventIdentification/EventID").get("csd-code") == "110104"
    ]
    assert stores
    m = stores[0]
    assert m.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    assert m.find("AuditSourceIdentification").get("AuditSourceID") == SERVER_AET
    kinds = {
        p.get("ParticipantObjectTypeCode") for p in m.findall("ParticipantObjectIdentification")
    }
    assert kinds == {"1", "2"}


class SyslogReceiver:
    """A TLS syslog collector (RFC 5425 octet counting) on a loopback port."""

    def __init__(self, certs: Path, port: int = 0) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.messages: list[str] = []
        self._stop = False
        self._conns: list[ssl.SSLSocket] = []
        self._readers: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            reader = threading.Thread(target=self._read, args=(raw,), daemon=True)
            self._readers.append(reader)
            reader.start()

    def _read(self, raw: socket.socket) -> None:
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self._conns.append(conn)
        buf = b""
        conn.settimeout(0.5)
        while not self._stop:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                length, _, rest = buf.partition(b" ")
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)].decode())
                buf = rest[int(length) :]
        conn.close()

    def stop(self) -> None:
        """Go away as a collector that dies does: its connections close now (a reader
        that kept one open past this would receive what the outage should not)."""
        self._stop = True
        self.sock.close()
        self.thread.join()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for reader in self._readers:
            reader.join(timeout=5)


def audit_messages(receiver: SyslogReceiver) -> list[str]:
    """The DICOM audit messages received (checkpoint log lines travel in the same stream)."""
    return [m for m in list(receiver.messages) if " DICOM+RFC3881 " in m]


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_forwarding_survives_a_collector_outage(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    ca = LocalCA(tmp_path / "collector")
    ca.create("collector")
    cert, key = ca.issue("localhost", server=True, dns_names=["localhost"], addresses=["127.0.0.1"])
    certs = tmp_path / "collector" / "tls"
    (certs / "server.crt").write_bytes(cert)
    (certs / "server.key").write_bytes(key)
    receiver = SyslogReceiver(certs)
    port = receiver.port
    settings = data_dir / "pacsvault.toml"
    settings.write_text(
        settings.read_text()
        .replace('syslog_host = ""', 'syslog_host = "localhost"')
        .replace("syslog_port = 6514", f"syslog_port = {port}")
        .replace('syslog_ca_file = ""', f'syslog_ca_file = "{certs.parent / "tls" / "ca.crt"}"')
    )
    cli(
        data_dir,
        "peer",
        "add",
        "test",
        "--aet",
        CLIENT_AET,
        "--host",
        "127.0.0.1",
        "--allow",
        "echo",
    )
    server = make_server(data_dir)

    def audit_count() -> int:
        return len(server.audit())

    try:
        ok = dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(server.port))
        assert ok.returncode == 0
        assert wait_for(lambda: len(audit_messages(receiver)) == audit_count())
        before_outage = len(audit_messages(receiver))
        # The signed checkpoints (from the genesis on) are in the stream too.
        assert any('"kind":"genesis"' in m for m in receiver.messages if "AUDIT-CHECKPOINT" in m)
        receiver.stop()  # outage: these three refusals happen while nobody listens
        for n in range(3):
            dcmtk(
                "echoscu", "-aet", f"STRANGER{n}", "-aec", SERVER_AET, "127.0.0.1", str(server.port)
            )
        time.sleep(1.0)
        assert audit_count() >= before_outage + 3
        receiver = SyslogReceiver(certs, port)  # the collector comes back
        # Everything recorded since the outage arrives: none lost, none sent twice.
        assert wait_for(lambda: before_outage + len(audit_messages(receiver)) == audit_count())
    finally:
        receiver.stop()
    # Every message is RFC 5424 with a well-formed DICOM audit message as its body.
    for msg in audit_messages(receiver):
        header, _, xml = msg.partition(" <AuditMessage>")
        assert re.match(
            r"<\d+>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ pacsvault - DICOM\+RFC3881 -$", header
        )
        root = ET.fromstring("<AuditMessage>" + xml)
        assert root.find("EventIdentification/EventID").get("codeSystemName") == "DCM"
    refused_sent = [m for m in audit_messages(receiver) if 'EventOutcomeIndicator="4"' in m]
    assert len(refused_sent) == 3  # the three refusals made during the outage arrived
