"""The index on each database it supports: SQLite (embedded) and PostgreSQL (scale-out).

Every test taking ``index_url`` runs once per database (conftest.DATABASES; PostgreSQL
is a real server, tests/pg_server.py). The ``pg`` tests are PostgreSQL's own: its
indexes, and several processes writing one index at once as several nodes do.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text

from index_workers import audit_records, ingest, instance_record, lockout_failures
from pacsvault.dicom.attributes import BY_KEYWORD, Level
from pacsvault.dicom.matching import parse_condition
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.audit_verify import check
from pacsvault.security.identity import Scope, physician_key
from pacsvault.storage import schema as s
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.index import Index, InstanceRecord, engine_url, write_transaction
from pacsvault.storage.lockout import Lockout


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:
    idx = Index(index_url)
    idx.create()
    yield idx
    idx.close()


def cond(keyword: str, value: str):
    attr = BY_KEYWORD[keyword]
    return [(attr, parse_condition(attr, value))]


def record(index: Index, *recs: InstanceRecord) -> None:
    with write_transaction(index.engine) as conn:
        for rec in recs:
            index.record_instance(conn, rec)


def study(uid: str, *, name: str, pid: str, date: str = "20240102", accession: str = "",
          referrer: str = "", modality: str = "CT", n: int = 1,
          series: str = "1") -> list[InstanceRecord]:  # fmt: skip
    """*n* instances of one series of study *uid*."""
    out = []
    for i in range(n):
        rec = instance_record(uid, f"{uid}.{series}", f"{uid}.{series}.{i}", patient_id=pid,
                              name=name, modality=modality)  # fmt: skip
        rec.study.update(study_date=date, accession_number=accession or None,
                         referring_physician_name=referrer or None)  # fmt: skip
        out.append(rec)
    return out


@pytest.fixture
def archive(index: Index) -> Index:
    """A few studies whose values exercise every kind of match."""
    record(
        index,
        *study("1.1", name="Smith^John", pid="P-100%", accession="A_1", referrer="House^Greg^^",
               date="20240101", n=2),
        *study("1.1", name="Smith^John", pid="P-100%", series="2", modality="MR"),
        *study("1.2", name="SMITHERS^Wayland", pid="P-200", accession="A21", date="20240215",
               referrer="Wilson^James"),
        *study("1.3", name="Müller^Jürgen", pid="P_300", accession="B-1", date="20231231"),
        *study("1.4", name="Doe^Jane", pid="", date="20240301"),
        *study("1.5", name="Doe^Jane", pid="", date="20240302"),
    )  # fmt: skip
    return index


def uids(index: Index, level: Level, conditions, **kw) -> list[str]:
    key = {Level.PATIENT: "patient_id", Level.STUDY: "study_instance_uid",
           Level.SERIES: "series_instance_uid", Level.IMAGE: "sop_instance_uid"}[level]  # fmt: skip
    return [r[key] for r in index.query(level, conditions, **kw)]


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("PatientName", "smith^john", ["1.1"]),  # case-insensitive exact
        ("PatientName", "SMITH*", ["1.1", "1.2"]),  # prefix
        ("PatientName", "smith?john", ["1.1"]),  # ? is one character, "^" too
        ("PatientName", "smith??john", []),
        ("PatientName", "*jürgen", ["1.3"]),  # non-ASCII, folded
        ("PatientName", "MÜLLER*", ["1.3"]),
        ("PatientID", "P-100%", ["1.1"]),  # LIKE's metacharacters are literal...
        ("PatientID", "P-1*", ["1.1"]),
        ("PatientID", "P_3*", ["1.3"]),  # ..."_" too
        ("PatientID", "P?300", ["1.3"]),
        ("PatientID", "p-200", []),  # text other than names is case-sensitive
        ("AccessionNumber", "A_1", ["1.1"]),
        ("AccessionNumber", "A*", ["1.1", "1.2"]),
        ("StudyDate", "20240101-20240215", ["1.1", "1.2"]),
        ("StudyDate", "-20231231", ["1.3"]),
        ("StudyDate", "20240301-", ["1.4", "1.5"]),
        ("StudyDate", "20240215", ["1.2"]),
        ("StudyInstanceUID", "1.2\\1.4\\9.9", ["1.2", "1.4"]),
        ("ModalitiesInStudy", "MR", ["1.1"]),
        ("ModalitiesInStudy", "M?", ["1.1"]),
        ("ModalitiesInStudy", "PT\\CT", ["1.1", "1.2", "1.3", "1.4", "1.5"]),
        ("ReferringPhysicianName", "house*", ["1.1"]),
    ],
)
def test_study_matching(archive: Index, keyword: str, value: str, expected: list[str]) -> None:
    assert uids(archive, Level.STUDY, cond(keyword, value)) == expected


def test_levels_counts_and_patient_identity(archive: Index) -> None:
    patients = list(archive.query(Level.PATIENT, []))
    by_id = {r["patient_id"]: r for r in patients}
    assert len(patients) == 5  # two empty PatientIDs are two patients
    assert by_id["P-100%"]["number_of_patient_related_instances"] == 3
    assert by_id["P-100%"]["number_of_patient_related_series"] == 2
    assert by_id["P-100%"]["number_of_patient_related_studies"] == 1
    study = next(archive.query(Level.STUDY, cond("StudyInstanceUID", "1.1")))
    assert study["modalities_in_study"] == "CT\\MR"
    assert study["number_of_study_related_series"] == 2
    assert study["number_of_study_related_instances"] == 3
    assert uids(archive, Level.SERIES, cond("StudyInstanceUID", "1.1")) == ["1.1.1", "1.1.2"]
    assert uids(archive, Level.IMAGE, cond("Modality", "MR")) == ["1.1.2.0"]
    assert uids(archive, Level.PATIENT, cond("PatientName", "doe^jane")) == ["", ""]
    assert archive.statistics() == {"patients": 5, "studies": 5, "series": 6, "instances": 7,
                                    "bytes": 70}  # fmt: skip
    picked = archive.instances_for(Level.STUDY, cond("PatientName", "smith^john"))
    assert [i.sop_instance_uid for i in picked] == ["1.1.1.0", "1.1.1.1", "1.1.2.0"]
    with archive.engine.connect() as conn:
        found = archive.find_instance(conn, "1.2.1.0")
    assert found is not None and found.study_instance_uid == "1.2"
    assert archive.stored_copy("1.2.1.0") == ("0" * 64, "blob/1.2.1.0")


def test_scope_limits_every_level(archive: Index) -> None:
    referrer = Scope(False, physicians=(physician_key("HOUSE^GREG"),))
    assert uids(archive, Level.STUDY, [], scope=referrer) == ["1.1"]
    assert uids(archive, Level.PATIENT, [], scope=referrer) == ["P-100%"]
    assert len(uids(archive, Level.IMAGE, [], scope=referrer)) == 3
    shared = Scope(False, studies=("1.3",), physicians=("wilson^james",))
    assert uids(archive, Level.STUDY, [], scope=shared) == ["1.2", "1.3"]
    assert uids(archive, Level.STUDY, [], scope=Scope.nothing()) == []
    assert len(archive.instances_for(Level.STUDY, [], scope=shared)) == 2


def test_limit_offset_and_streaming(index: Index) -> None:
    """Answers come in pk order, pages by limit/offset, and a long answer streams
    (more rows than one fetch of the server-side cursor)."""
    record(index, *study("2.1", name="Many^Rows", pid="P-M", n=1234))
    rows = index.query(Level.IMAGE, cond("PatientID", "P-M"))
    first = next(rows)
    assert first["sop_instance_uid"] == "2.1.1.0"
    assert sum(1 for _ in rows) == 1233
    page = uids(index, Level.IMAGE, [], limit=10, offset=1000)
    assert page == [f"2.1.1.{n}" for n in range(1000, 1010)]


def test_duplicate_sop_instance_is_refused(index: Index) -> None:
    from sqlalchemy.exc import IntegrityError

    (rec,) = study("3.1", name="A^B", pid="P-3")
    record(index, rec)
    with pytest.raises(IntegrityError):
        record(index, rec)
    assert index.statistics()["instances"] == 1


def test_audit_trail_and_chains(index: Index, tmp_path) -> None:
    """Records chain and verify on both databases; a second node's chain is announced in
    the first one, and a chain deleted whole is missed."""
    from pacsvault.security.audit_log import CheckpointLog

    signer = AuditSigner(b"k" * 32)
    first = AuditTrail(index, signer=signer, checkpoint_every=3,
                       checkpoint_log=CheckpointLog(tmp_path / "a"))  # fmt: skip
    first.ensure_genesis(new_site=True)
    for n in range(7):
        first.record(Action.QUERY, Outcome.SUCCESS, None, detail=str(n))
    node_b = AuditTrail(index, signer=signer, checkpoint_every=3, chain="b",
                        checkpoint_log=CheckpointLog(tmp_path / "b"))  # fmt: skip
    node_b.ensure_genesis(new_site=False)
    for n in range(4):
        node_b.record(Action.STORE, Outcome.SUCCESS, None, detail=str(n))
    first.close()
    node_b.close()
    trails = first.read_trails()
    assert set(trails) == {"", "b"}
    assert [r["seq"] for r in trails["b"].rows] == [1, 2, 3, 4]
    assert trails[""].rows[-1]["action"] == "audit-chain"  # b's announcement
    verdict = check(trails, signer)
    assert verdict.intact, [p.describe() for p in verdict.problems]
    assert verdict.chains == 2 and verdict.records == 12
    # The records of node b in another order, or b gone whole: both seen.
    with index.engine.begin() as conn:
        conn.execute(s.audit_events.delete().where(s.audit_events.c.chain == "b",
                                                   s.audit_events.c.seq == 2))  # fmt: skip
    problems = [p.describe() for p in check(first.read_trails(), signer).problems]
    assert any(p.startswith("chain b: seq 3") and "deleted" in p for p in problems), problems
    with index.engine.begin() as conn:
        for table in (s.audit_events, s.audit_checkpoints):
            conn.execute(table.delete().where(table.c.chain == "b"))
        conn.execute(s.settings_kv.delete().where(s.settings_kv.c.key == "audit_head:b"))
    problems = [p.describe() for p in check(first.read_trails(), signer).problems]
    assert problems == ["chain b: announced at seq 8 of the first chain, but missing from the "
                        "index (no genesis): the chain was deleted"]  # fmt: skip


def test_lockout_counts_and_locks(index: Index) -> None:
    lockout = Lockout(index, AuditTrail(index), threshold=3, window=60, duration=60)
    assert lockout.failure("address:10.0.0.1", "user:bob", reason="t") == []
    assert lockout.failure("address:10.0.0.1", reason="t") == []
    assert lockout.failure("address:10.0.0.1", "user:bob", reason="t") == ["address:10.0.0.1"]
    assert lockout.locked("address:10.0.0.1") and not lockout.locked("user:bob")
    assert lockout.failure("user:bob", reason="t") == ["user:bob"]
    assert {e.key for e in lockout.entries()} == {"address:10.0.0.1", "user:bob"}
    with write_transaction(index.engine) as conn:
        assert Lockout.clear(conn, "user:bob") == 1
    assert not lockout.locked("user:bob")


def test_engine_urls() -> None:
    assert engine_url("postgresql://pacs@db/pacs").drivername == "postgresql+psycopg"
    assert engine_url("postgres://pacs@db/pacs").drivername == "postgresql+psycopg"
    assert engine_url("postgresql+psycopg://pacs@db/pacs").drivername == "postgresql+psycopg"
    assert engine_url("sqlite:///x.sqlite").drivername == "sqlite"
    for bad in ("mysql://u:secretpw@h/d", "postgresql+psycopg2://u:secretpw@h/d", "nonsense"):
        with pytest.raises(ValueError) as info:
            engine_url(bad)
        assert "secretpw" not in str(info.value)


# -- PostgreSQL's own -----------------------------------------------------------------------


@pytest.fixture
def pg_index(pg_url: str) -> Iterator[Index]:
    idx = Index(pg_url)
    idx.create()
    yield idx
    idx.close()


def _plan(index: Index, statement: str) -> str:
    with index.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        return "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {statement}")))


def test_pg_prefix_and_scope_matches_use_indexes(pg_index: Index) -> None:
    """Prefix LIKEs use the text_pattern_ops indexes whatever the database's collation;
    the referrer scope uses its expression index."""
    with pg_index.engine.connect() as conn:
        collation = conn.scalar(text("SELECT datcollate FROM pg_database "
                                     "WHERE datname = current_database()"))  # fmt: skip
    assert collation not in ("C", "POSIX")  # else any btree would do: not a test
    for table, column, index_name in (
        ("studies", "patient_name_fold", "ix_studies_patient_name_fold"),
        ("studies", "patient_id", "ix_studies_patient_id"),
        ("studies", "accession_number", "ix_studies_accession"),
        ("patients", "patient_name_fold", "ix_patients_name_fold"),
        ("patients", "patient_id", "ix_patients_patient_id_pattern"),
    ):
        plan = _plan(pg_index, f"SELECT pk FROM {table} WHERE {column} LIKE 'smi%' ESCAPE '\\'")
        assert index_name in plan, plan
    plan = _plan(pg_index, "SELECT pk FROM studies WHERE "
                 "rtrim(referring_physician_name_fold, '^= ') IN ('house^greg')")  # fmt: skip
    assert "ix_studies_referrer_key" in plan, plan


def test_pg_query_streams_through_a_server_side_cursor(pg_index: Index) -> None:
    record(pg_index, *study("4.1", name="A^B", pid="P-4", n=600))
    rows = pg_index.query(Level.IMAGE, [])
    next(rows)
    with pg_index.engine.connect() as other:
        cursors = other.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' "
            "AND datname = current_database()"))  # fmt: skip
    assert cursors == 1  # the query's connection holds its cursor open between fetches
    assert sum(1 for _ in rows) == 599


def _run_processes(target, args_list: list[tuple]) -> list:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(args_list)) as pool:
        return pool.starmap(target, args_list, chunksize=1)


def test_pg_concurrent_ingest_from_several_processes(pg_index: Index, pg_url: str) -> None:
    """Four processes index instances of the same studies, series and patients at once:
    one row each, and every derived count and code list right."""
    start = time.time() + 3
    done = _run_processes(ingest, [(pg_url, w, 30, start) for w in range(4)])
    assert done == [30] * 4
    stats = pg_index.statistics()
    assert stats == {"patients": 3, "studies": 3, "series": 6, "instances": 120, "bytes": 1200}
    for row in pg_index.query(Level.STUDY, []):
        assert row["number_of_study_related_instances"] == 40
        assert row["number_of_study_related_series"] == 2
        assert row["modalities_in_study"] == "CT\\MR\\PT"  # no process's code lost...
        assert len(row["sop_classes_in_study"].split("\\")) == 40  # ...however many
    for row in pg_index.query(Level.PATIENT, []):
        assert row["number_of_patient_related_instances"] == 40
        assert row["number_of_patient_related_studies"] == 1
    for row in pg_index.query(Level.SERIES, []):
        assert row["number_of_series_related_instances"] == 20


def test_pg_lockout_counts_every_failure_once_across_processes(
    pg_index: Index, pg_url: str
) -> None:
    """Failures of one key from six processes at once are counted one after the other:
    150 failures with a threshold of 3 lock the key exactly 50 times (see the worker)."""
    start = time.time() + 3
    work = [(pg_url, "address:192.0.2.9", 25, 3, start)] * 6
    locked = _run_processes(lockout_failures, work)
    assert sum(len(x) for x in locked) == 50
    with pg_index.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(s.lockouts)) == 1
        assert conn.scalar(select(func.count()).select_from(s.lockout_failures)) == 0


def test_pg_audit_chains_written_at_once_stay_intact(pg_index: Index, pg_url: str) -> None:
    """Two processes share the first chain and two nodes have their own: all at once."""
    start = time.time() + 3
    work = [(pg_url, "", 25, start), (pg_url, "", 25, start), (pg_url, "n1", 25, start),
            (pg_url, "n2", 25, start)]  # fmt: skip
    assert _run_processes(audit_records, work) == [25] * 4
    trails = AuditTrail(pg_index).read_trails()
    assert {k: len(v.rows) for k, v in trails.items()} == {"": 50, "n1": 25, "n2": 25}
    for trail in trails.values():
        assert [r["seq"] for r in trail.rows] == list(range(1, len(trail.rows) + 1))
        assert trail.head[0] == len(trail.rows)
    from pacsvault.security.audit_verify import _chain_problems

    assert all(not _chain_problems(t) for t in trails.values())
