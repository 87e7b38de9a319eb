"""Evidence that outlives the index: the signed genesis, the checkpoint log and clean shutdowns.

Every attack here has write access to ``index.sqlite`` (and, in one test, root on the
machine: the signing key and the local checkpoint log too). Each used to verify as
"intact"; each must now fail, or be revealed by a copy of the log kept elsewhere.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import CLIENT_AET, SERVER_AET, IndexDB, add_echo_peers, cli, dcmtk
from pacsvault.security.audit import checkpoint_statement, record_hash
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.tls import LocalCA
from test_audit import SyslogReceiver, wait_for

FIXTURES = Path(__file__).parent / "fixtures"
FIELDS = (
    "seq", "time", "event_code", "action", "outcome", "actor", "address",
    "study_uid", "patient_ref", "detail",
)  # fmt: skip


def verify(data: Path, *extra: str):
    return cli(data, "audit", "verify", *extra, check=False)


def db(data: Path) -> IndexDB:
    """The data directory's index (SQLite or PostgreSQL), to tamper with."""
    return IndexDB(data)


def set_checkpoint_every(data: Path, n: int) -> None:
    settings = data / "pacsvault.toml"
    settings.write_text(
        settings.read_text().replace("checkpoint_every = 100", f"checkpoint_every = {n}")
    )


@pytest.fixture
def trail(any_data_dir: Path) -> Path:
    """A data directory whose trail has several signed checkpoints (one every 5 records),
    its index in SQLite, then PostgreSQL."""
    data_dir = any_data_dir
    set_checkpoint_every(data_dir, 5)
    cli(data_dir, "demo", "--patients", "2")
    add_echo_peers(data_dir, 4)
    return data_dir


def reset_head(conn: IndexDB) -> None:
    """Point ``audit_head`` at the last record left (what an attacker does after a cut)."""
    row = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    conn.execute("UPDATE meta SET value=? WHERE key='audit_head'", (f"{row[0]}:{row[1]}",))


def rechain_from(conn: IndexDB, seq: int) -> dict[int, str]:
    """Recompute the hash of record *seq* and every later one, and the head; new hashes."""
    (prev,) = conn.execute("SELECT hash FROM audit_events WHERE seq=?", (seq - 1,)).fetchone()
    rows = conn.execute(
        f"SELECT id, {','.join(FIELDS)} FROM audit_events WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    new: dict[int, str] = {}
    for row_id, *values in rows:
        row = dict(zip(FIELDS, values, strict=True))
        digest = record_hash(prev, row)
        conn.execute(
            "UPDATE audit_events SET prev_hash=?, hash=? WHERE id=?", (prev, digest, row_id)
        )
        new[row["seq"]] = prev = digest
    reset_head(conn)
    return new


def test_deleting_the_tail_with_its_checkpoints_and_head_is_detected(trail: Path) -> None:
    with db(trail) as conn:
        cps = [r[0] for r in conn.execute("SELECT seq FROM audit_checkpoints WHERE seq > 0")]
        cut = sorted(cps)[len(cps) // 2]  # keep the first half of the checkpoints
        conn.execute("DELETE FROM audit_events WHERE seq > ?", (cut - 2,))
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (cut - 2,))
        reset_head(conn)
    out = verify(trail)
    assert out.returncode == 1, out.stdout
    assert f"seq {cut} " in out.stdout
    assert "missing from the index" in out.stdout


def test_rewritten_record_with_recomputed_chain_is_detected(trail: Path) -> None:
    with db(trail) as conn:
        (cp,) = conn.execute("SELECT min(seq) FROM audit_checkpoints WHERE seq > 10").fetchone()
        target = cp - 2
        conn.execute(
            "UPDATE audit_events SET outcome='success', detail='nothing to see' WHERE seq=?",
            (target,),
        )
        rechain_from(conn, target)
        conn.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (target,))
    out = verify(trail)
    assert out.returncode == 1, out.stdout
    assert f"seq {cp} " in out.stdout
    assert "differs from the checkpoint log" in out.stdout


def test_wiping_the_whole_trail_is_detected(trail: Path) -> None:
    with db(trail) as conn:
        conn.execute("DELETE FROM audit_events")
        conn.execute("DELETE FROM audit_checkpoints")
        conn.execute("DELETE FROM meta WHERE key='audit_head'")
    out = verify(trail)
    assert out.returncode == 1, out.stdout
    assert "genesis" in out.stdout and "missing" in out.stdout
    # Opening the site again does not quietly write a new genesis over the evidence.
    cli(trail, "status")
    assert verify(trail).returncode == 1


def test_genesis_is_written_at_init_and_logged(data_dir: Path) -> None:
    log = data_dir / "audit" / "checkpoints.log"
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.parent.stat().st_mode & 0o777 == 0o700
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0]["kind"] == "genesis" and lines[0]["seq"] == 0
    with db(data_dir) as conn:
        (digest,) = conn.execute("SELECT hash FROM audit_checkpoints WHERE seq=0").fetchone()
    assert digest == lines[0]["hash"]
    out = verify(data_dir)
    assert out.returncode == 0, out.stdout
    assert "older release" not in out.stdout


def test_a_root_attacker_is_caught_by_an_exported_copy(trail: Path, tmp_path: Path) -> None:
    copy = tmp_path / "offsite-checkpoints.log"
    cli(trail, "audit", "export-checkpoints", "--out", str(copy))
    signer = AuditSigner((trail / "secrets" / "audit-signing.key").read_bytes())
    local = trail / "audit" / "checkpoints.log"
    with db(trail) as conn:
        target = 4
        conn.execute("UPDATE audit_events SET detail='nothing to see' WHERE seq=?", (target,))
        new = rechain_from(conn, target)
        for seq, digest in new.items():
            conn.execute(
                "UPDATE audit_checkpoints SET hash=?, signature=? WHERE seq=?",
                (digest, signer.sign(checkpoint_statement(seq, digest)), seq),
            )
    lines = []
    for text in local.read_text().splitlines():
        entry = json.loads(text)
        if entry.get("seq") in new:
            entry["hash"] = new[entry["seq"]]
            entry["signature"] = signer.sign(checkpoint_statement(entry["seq"], entry["hash"]))
        lines.append(json.dumps(entry, separators=(",", ":")))
    local.write_text("\n".join(lines) + "\n")
    # Index, key and local log rewritten consistently: the machine alone cannot tell.
    assert verify(trail).returncode == 0
    out = verify(trail, "--checkpoints", str(copy))
    assert out.returncode == 1, out.stdout
    assert str(copy) in out.stdout and "differs" in out.stdout


def test_exported_copy_of_an_untouched_trail_verifies(trail: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.log"
    cli(trail, "audit", "export-checkpoints", "--out", str(copy))
    assert copy.stat().st_mode & 0o777 == 0o600
    cli(trail, "peer", "remove", "p0")
    out = verify(trail, "--checkpoints", str(copy))
    assert out.returncode == 0, out.stdout


def test_clean_shutdown_then_cut_of_the_final_checkpoint_is_detected(
    data_dir: Path, make_server
) -> None:
    server = make_server(data_dir)
    assert server.stop() == 0
    with db(data_dir) as conn:
        (final,) = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()
        (before,) = conn.execute(
            "SELECT max(seq) FROM audit_checkpoints WHERE seq < ?", (final,)
        ).fetchone()
        conn.execute("DELETE FROM audit_events WHERE seq > ?", (before,))
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (before,))
        reset_head(conn)
    out = verify(data_dir)
    assert out.returncode == 1, out.stdout
    assert f"seq {final} " in out.stdout and "missing from the index" in out.stdout


def test_untouched_trail_after_serve_stop_verifies(data_dir: Path, make_server) -> None:
    server = make_server(data_dir)
    assert server.stop() == 0
    lines = [json.loads(x) for x in (data_dir / "audit" / "checkpoints.log").read_text().split()]
    assert lines[-1]["kind"] == "checkpoint" and lines[-1]["final"] is True
    assert [x for x in lines if x["kind"] == "start" and x["program"] == "serve"]
    for _ in range(2):  # verify's own audit record is signed when it exits
        out = verify(data_dir)
        assert out.returncode == 0, out.stdout
        assert "warning" not in out.stdout


def test_records_beyond_the_last_clean_shutdown_fail(data_dir: Path, make_server) -> None:
    server = make_server(data_dir)
    assert server.stop() == 0
    with db(data_dir) as conn:
        seq, prev = conn.execute(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        row = dict.fromkeys(FIELDS)
        row.update(seq=seq + 1, time=1.0, event_code="110114", action="login",
                   outcome="success", actor="user:mallory")  # fmt: skip
        digest = record_hash(prev, row)
        conn.execute(
            "INSERT INTO audit_events (seq, time, event_code, action, outcome, actor,"
            " prev_hash, hash) VALUES (?, 1.0, '110114', 'login', 'success', 'user:mallory',"
            " ?, ?)",
            (seq + 1, prev, digest),
        )
        reset_head(conn)
    out = verify(data_dir)
    assert out.returncode == 1, out.stdout
    assert "clean shutdown" in out.stdout and "not covered" in out.stdout


def test_a_crash_is_a_warning_not_a_failure(data_dir: Path, make_server) -> None:
    server = make_server(data_dir)
    server.kill9()
    out = verify(data_dir)
    assert out.returncode == 0, out.stdout
    assert "warning:" in out.stdout and "did not stop cleanly" in out.stdout
    # The next writer (this verify, recording its own use) settles the crash.
    out = verify(data_dir)
    assert out.returncode == 0 and "warning" not in out.stdout, out.stdout


def test_a_running_server_is_a_warning(server) -> None:
    out = verify(server.data)
    assert out.returncode == 0, out.stdout
    assert "warning:" in out.stdout and "running" in out.stdout


def unpack_v1(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURES / "datadir-v1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "d"


def test_data_dir_from_the_previous_release_verifies_and_gets_a_genesis(tmp_path: Path) -> None:
    data = unpack_v1(tmp_path)
    assert not (data / "audit").exists()
    out = verify(data)
    assert out.returncode == 0, out.stdout
    assert re.search(r"genesis .*older release", out.stdout), out.stdout
    assert (data / "audit" / "checkpoints.log").exists()
    again = verify(data)
    assert again.returncode == 0 and "older release" in again.stdout, again.stdout
    # From now on the old trail is protected like a new one.
    with db(data) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 10")
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > 10")
        reset_head(conn)
    assert verify(data).returncode == 1


def test_a_torn_last_log_line_is_tolerated_but_not_one_in_the_middle(trail: Path) -> None:
    log = trail / "audit" / "checkpoints.log"
    text = log.read_text()
    log.write_text(text + '{"kind":"checkpoint","seq":99')  # a write cut short by a crash
    out = verify(trail)
    assert out.returncode == 0, out.stdout
    assert "warning:" in out.stdout and "incomplete" in out.stdout
    # The next append (this verify's own run) ends the torn line and marks it repaired.
    out = verify(trail)
    assert out.returncode == 0 and "warning" not in out.stdout, out.stdout
    assert "cut short by a crash" in out.stdout
    lines = text.splitlines()
    lines.insert(2, "garbage")
    log.write_text("\n".join(lines) + "\n")
    assert verify(trail).returncode == 1


def collector(tmp_path: Path, data: Path) -> tuple[SyslogReceiver, Path]:
    """A TLS syslog receiver, with *data* configured to forward to it."""
    ca = LocalCA(tmp_path / "collector")
    ca.create("collector")
    cert, key = ca.issue("localhost", server=True, dns_names=["localhost"], addresses=["127.0.0.1"])
    certs = tmp_path / "collector" / "tls"
    (certs / "server.crt").write_bytes(cert)
    (certs / "server.key").write_bytes(key)
    receiver = SyslogReceiver(certs)
    settings = data / "pacsvault.toml"
    settings.write_text(
        settings.read_text()
        .replace('syslog_host = ""', 'syslog_host = "localhost"')
        .replace("syslog_port = 6514", f"syslog_port = {receiver.port}")
        .replace('syslog_ca_file = ""', f'syslog_ca_file = "{certs / "ca.crt"}"')
    )
    return receiver, certs


def test_checkpoints_are_forwarded_to_syslog(data_dir: Path, make_server, tmp_path: Path) -> None:
    receiver, _ = collector(tmp_path, data_dir)
    cli(data_dir, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", "echo")  # fmt: skip
    try:
        server = make_server(data_dir)
        ok = dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(server.port))
        assert ok.returncode == 0
        assert server.stop() == 0

        def checkpoints() -> list[dict]:
            return [
                json.loads(m.partition(" AUDIT-CHECKPOINT - ")[2])
                for m in list(receiver.messages)
                if " AUDIT-CHECKPOINT - " in m
            ]

        assert wait_for(lambda: any(c.get("final") for c in checkpoints()[-1:]))
    finally:
        receiver.stop()
    got = checkpoints()
    assert got[0]["kind"] == "genesis"
    assert [c for c in got if c["kind"] == "start"]
    signer = AuditSigner((data_dir / "secrets" / "audit-signing.key").read_bytes())
    with db(data_dir) as conn:
        in_db = dict(conn.execute("SELECT seq, signature FROM audit_checkpoints"))
    for c in got:
        if c["kind"] in ("genesis", "checkpoint"):
            assert c["signature"] == in_db[c["seq"]]
            assert signer.verify(checkpoint_statement(c["seq"], c["hash"]), c["signature"])
            base64.b64decode(c["signature"], validate=True)
    assert got[-1]["kind"] == "checkpoint" and got[-1]["final"] is True
    # What the collector received is a copy `audit verify --checkpoints` can use.
    copy = tmp_path / "syslog.txt"
    copy.write_text("\n".join(receiver.messages) + "\n")
    assert verify(data_dir, "--checkpoints", str(copy)).returncode == 0
    with db(data_dir) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE seq > 0")
        conn.execute("DELETE FROM audit_events WHERE seq > 2")
        reset_head(conn)
    (data_dir / "audit" / "checkpoints.log").unlink()
    out = verify(data_dir, "--checkpoints", str(copy))
    assert out.returncode == 1 and "missing from the index" in out.stdout, out.stdout
    assert not any("PV0" in m for m in receiver.messages)


def test_two_nodes_on_one_postgresql_index_keep_a_chain_each(pg_url: str, tmp_path: Path) -> None:
    """Two data directories (the second a copy of the first, as a new node is made) share
    one PostgreSQL index with their own index.node: each writes its own chain, both verify,
    a node's log checks its chain from the other node, and a cut or a deleted chain shows."""
    a, b = tmp_path / "a", tmp_path / "b"
    cli(a, "init", "--aet", SERVER_AET, "--index-url", pg_url)
    set_checkpoint_every(a, 5)
    shutil.copytree(a, b)  # the same secrets (audit key, pseudonyms) and TLS material
    settings = b / "pacsvault.toml"
    settings.write_text(settings.read_text().replace('node = ""', 'node = "b"', 1))
    for node, seed in ((a, "1"), (b, "2"), (a, "3")):
        cli(node, "demo", "--patients", "1", "--seed", seed)
        cli(node, "peer", "add", f"p{seed}", "--aet", f"P{seed}", "--host", "10.0.0.1",
            "--allow", "echo")  # fmt: skip
    for node in (a, b):
        out = verify(node)
        assert out.returncode == 0, out.stdout
        intact = r"audit trail intact: \d+ records, \d+ checkpoints in 2 chains"
        assert re.search(intact, out.stdout), out.stdout
    assert "patients: 3" in cli(b, "status").stdout
    with db(a) as conn:
        chains = dict(conn.execute("SELECT chain, count(*) FROM audit_events GROUP BY chain"))
        assert set(chains) == {"", "b"} and chains["b"] >= 10
        (announcement,) = conn.execute(
            "SELECT detail FROM audit_events WHERE chain = '' AND action = 'audit-chain'"
        ).fetchone()
        assert announcement.startswith("audit chain b started, genesis ")
    b_log = tmp_path / "b-checkpoints.log"
    cli(b, "audit", "export-checkpoints", "--out", str(b_log))
    assert verify(a, "--checkpoints", str(b_log)).returncode == 0

    # Node b's tail cut, with its checkpoints and a forged head: b's log, here or as a copy.
    with db(a) as conn:
        conn.execute("DELETE FROM audit_events WHERE chain = 'b' AND seq > 4")
        conn.execute("DELETE FROM audit_checkpoints WHERE chain = 'b' AND seq > 4")
        (seq, digest) = conn.execute(
            "SELECT seq, hash FROM audit_events WHERE chain = 'b' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head:b'", (f"{seq}:{digest}",))
    out = verify(b)
    assert out.returncode == 1 and "chain b: seq 5 " in out.stdout, out.stdout
    out = verify(a, "--checkpoints", str(b_log))
    assert out.returncode == 1 and "chain b: seq 5 " in out.stdout, out.stdout
    assert verify(a).returncode == 0  # node a alone has no evidence of b's tail...

    # ...but a chain deleted whole is missed by every node.
    with db(a) as conn:
        for table in ("audit_events", "audit_checkpoints"):
            conn.execute(f"DELETE FROM {table} WHERE chain = 'b'")
        conn.execute("DELETE FROM meta WHERE key = 'audit_head:b'")
    out = verify(a)
    assert out.returncode == 1
    assert "chain b: announced at seq" in out.stdout and "the chain was deleted" in out.stdout
