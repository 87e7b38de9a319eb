"""Index schema migrations: a data directory of the previous release upgrades on first start.

The fixture tests/fixtures/datadir-v1.tar.gz was made by the schema-1 release
(2 patients of 2 studies, 16 instances, a peer, a user, audit records). Expected
patient names per study are read from the stored DICOM files themselves.
"""

from __future__ import annotations

import logging
import sqlite3
import tarfile
import warnings
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, inspect

from conftest import SERVER_AET, Server, cli, dcmtk, free_port
from pacsvault.dicom.attributes import BY_KEYWORD, Level
from pacsvault.dicom.matching import parse_condition
from pacsvault.storage import migrations
from pacsvault.storage.index import Index
from pacsvault.storage.schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "datadir-v1.tar.gz"
UPGRADE_LINE = "upgrading the index schema from version 1 to 2"


@pytest.fixture
def v1_data(tmp_path: Path) -> Path:
    """A fresh copy of the schema-1 data directory."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "d"


def sql(data: Path, statement: str, *params: object) -> list[tuple]:
    """Run one statement on the data directory's SQLite index (committed)."""
    with sqlite3.connect(data / "index.sqlite") as conn:
        return list(conn.execute(statement, params))


def names_in_files(data: Path) -> dict[str, str]:
    """StudyInstanceUID -> PatientName, from the stored objects."""
    names: dict[str, str] = {}
    for path in (data / "blobs").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert names.setdefault(str(ds.StudyInstanceUID), str(ds.PatientName)) == str(
            ds.PatientName
        )
    return names


def test_v1_data_directory_upgrades_on_first_start(v1_data: Path, tmp_path: Path) -> None:
    assert sql(v1_data, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]
    expected = names_in_files(v1_data)
    assert len(expected) == 4 and len(set(expected.values())) == 2

    proc = cli(v1_data, "status")
    for line in (
        "patients: 2",
        "studies: 4",
        "series: 8",
        "instances: 16",
        "patient identity conflicts: 0",
        "peers: 1, users: 1",
    ):
        assert line in proc.stdout
    assert proc.stderr.count(UPGRADE_LINE) == 1 and " INFO " in proc.stderr
    assert sql(v1_data, "SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION),)]
    assert UPGRADE_LINE not in cli(v1_data, "status").stderr  # once only
    assert "audit trail intact" in cli(v1_data, "audit", "verify").stdout

    index = Index(f"sqlite:///{v1_data / 'index.sqlite'}")
    for level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        rows = list(index.query(level, []))
        assert {r["study_instance_uid"]: r["patient_name"] for r in rows} == expected
    roe = [(BY_KEYWORD["PatientName"], parse_condition(BY_KEYWORD["PatientName"], "roe^jane"))]
    found = {r["study_instance_uid"] for r in index.query(Level.STUDY, roe)}
    assert found == {uid for uid, name in expected.items() if name == "ROE^JANE"}
    patients = list(index.query(Level.PATIENT, []))
    assert [r["number_of_patient_related_instances"] for r in patients] == [8, 8]
    index.close()

    # C-FIND through a real server on the upgraded directory (its peer WS1 may query).
    server = Server(v1_data, free_port(), tmp_path / "server.log")
    server.start()
    try:
        out = tmp_path / "find"
        out.mkdir()
        proc = dcmtk(
            "findscu",
            "-aet",
            "WS1",
            "-aec",
            SERVER_AET,
            "-S",
            "-X",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-k",
            "PatientName",
            "127.0.0.1",
            str(server.port),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rsp = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        assert {str(r.StudyInstanceUID): str(r.PatientName) for r in rsp} == expected
    finally:
        server.stop()

    # Ingest after the upgrade: known patients are found by PatientID, a new one is added.
    assert "loaded" in cli(v1_data, "demo", "--patients", "3", "--seed", "1").stdout
    assert "patients: 3" in cli(v1_data, "status").stdout


def _shape(url: str) -> dict[str, object]:
    """Every table's columns, indexes, keys and foreign keys, as the database reports them."""
    engine = create_engine(url)
    insp = inspect(engine)
    shape: dict[str, object] = {}
    for table in sorted(insp.get_table_names()):
        shape[table] = _table_shape(insp, table)
    engine.dispose()
    if url.startswith("sqlite:///"):  # SQLAlchemy does not reflect expression indexes there
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
            shape["index sql"] = sorted((n, " ".join((q or "").split())) for n, q in rows)
    return shape


def _table_shape(insp, table: str) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        return {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ],
            "indexes": sorted(
                (
                    i["name"],
                    bool(i["unique"]),
                    tuple(i["column_names"]),
                    tuple(i.get("expressions") or ()),
                    str(i.get("dialect_options", {})),
                )
                for i in insp.get_indexes(table)
            ),
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": [
                (f["constrained_columns"], f["referred_table"])
                for f in insp.get_foreign_keys(table)
            ],
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
        }


def test_migrated_schema_equals_a_fresh_one(v1_data: Path, tmp_path: Path) -> None:
    migrated = Index(f"sqlite:///{v1_data / 'index.sqlite'}")
    migrated.create()
    migrated.close()
    fresh = Index(f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    fresh.create()
    fresh.close()
    assert _shape(f"sqlite:///{v1_data / 'index.sqlite'}") == _shape(
        f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    )


def test_studies_merged_by_schema_1_get_patients_of_their_own(
    v1_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Schema 1 put every study without a PatientID on one patient: the upgrade splits it."""
    sql(v1_data, "UPDATE studies SET patient_pk = 1")
    sql(v1_data, "DELETE FROM patients WHERE pk = 2")
    sql(
        v1_data,
        "UPDATE patients SET patient_id = '', number_of_patient_related_studies = 4, "
        "number_of_patient_related_series = 8, number_of_patient_related_instances = 16",
    )
    index = Index(f"sqlite:///{v1_data / 'index.sqlite'}")
    with caplog.at_level(logging.INFO, logger="pacsvault.storage.migrations"):
        index.create()
    assert "3 studies without a PatientID" in caplog.text
    rows = list(index.query(Level.PATIENT, []))
    assert len(rows) == 4 and index.statistics()["patients"] == 4
    for row in rows:
        assert row["patient_id"] == ""
        assert row["number_of_patient_related_studies"] == 1
        assert row["number_of_patient_related_series"] == 2
        assert row["number_of_patient_related_instances"] == 4
    owners = sql(v1_data, "SELECT patient_pk, patient_id FROM studies ORDER BY pk")
    assert owners[0] == (1, "") and len({pk for pk, _ in owners}) == 4
    index.close()


def test_a_failed_migration_leaves_the_previous_version(
    v1_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrations.MIGRATIONS[0]

    def broken(conn) -> None:
        real.apply(conn)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(migrations, "MIGRATIONS", (migrations.Migration(2, "broken", broken),))
    index = Index(f"sqlite:///{v1_data / 'index.sqlite'}")
    with pytest.raises(RuntimeError):
        index.create()
    assert sql(v1_data, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]
    columns = [r[1] for r in sql(v1_data, "PRAGMA table_info(studies)")]
    assert "patient_name" not in columns
    monkeypatch.undo()
    index.create()
    assert sql(v1_data, "SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION),)]
    index.close()


def test_an_index_from_newer_code_is_refused(data_dir: Path) -> None:
    sql(data_dir, "UPDATE meta SET value = '999' WHERE key = 'schema'")
    for args in (
        ("status",),
        (
            "serve",
            "--dicom-port",
            str(free_port()),
            "--tls-port",
            str(free_port()),
            "--https-port",
            str(free_port()),
        ),
    ):
        proc = cli(data_dir, *args, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("pacsvault: the index has schema version 999, newer")
        assert "Traceback" not in proc.stderr
    index = Index(f"sqlite:///{data_dir / 'index.sqlite'}")
    with pytest.raises(migrations.SchemaTooNew, match="schema version 999"):
        index.create()
    index.close()
    assert sql(data_dir, "SELECT value FROM meta WHERE key = 'schema'") == [("999",)]
