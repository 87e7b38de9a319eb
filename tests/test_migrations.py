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
from sqlalchemy import INTEGER, MetaData, create_engine, inspect, text

from conftest import SERVER_AET, Server, cli, dcmtk, free_port
from pacsvault.dicom.attributes import BY_KEYWORD, Level
from pacsvault.dicom.matching import parse_condition
from pacsvault.storage import migrations
from pacsvault.storage.index import Index, engine_url
from pacsvault.storage.schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "datadir-v1.tar.gz"
UPGRADE_LINE = "upgrading the index schema from version 1 to 2"


@pytest.fixture
def v1_data(tmp_path: Path) -> Path:
    """A fresh copy of the schema-1 data directory."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "d"


def copy_to_postgres(sqlite_path: Path, url: str) -> None:
    """Put the tables and rows of a SQLite index into the empty PostgreSQL database *url*,
    as the release that made it would have created them there (same SQLAlchemy tables:
    SERIAL keys, unnamed unique constraints, the same named indexes)."""
    source = create_engine(f"sqlite:///{sqlite_path}")
    target = create_engine(engine_url(url))
    meta = MetaData()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        meta.reflect(source)
    meta.create_all(target)
    with source.connect() as src, target.begin() as dst:
        for table in meta.sorted_tables:
            rows = [dict(r) for r in src.execute(table.select()).mappings()]
            if rows:
                dst.execute(table.insert(), rows)
            for col in table.primary_key.columns:
                if col.autoincrement is not False and isinstance(col.type, INTEGER):
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                                     f"'{col.name}'), (SELECT coalesce(max({col.name}), 0) + 1 "
                                     f"FROM {table.name}), false)"))  # fmt: skip
    source.dispose()
    target.dispose()


def pg_sql(url: str, statement: str) -> list[tuple]:
    """Run one statement on a PostgreSQL index (committed); its rows, if any."""
    engine = create_engine(engine_url(url))
    with engine.begin() as conn:
        result = conn.execute(text(statement))
        rows = [tuple(r) for r in result] if result.returns_rows else []
    engine.dispose()
    return rows


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
    engine = create_engine(engine_url(url))
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


def test_v1_upgrades_on_postgresql(v1_data: Path, pg_url: str, tmp_path: Path) -> None:
    """A schema-1 index in PostgreSQL: the same migrations bring it to the shape a fresh
    PostgreSQL index has, in transactional steps, and the data reads as on SQLite."""
    copy_to_postgres(v1_data / "index.sqlite", pg_url)
    assert pg_sql(pg_url, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]
    migrated = Index(pg_url)
    migrated.create()
    expected = names_in_files(v1_data)
    for level in (Level.STUDY, Level.SERIES, Level.IMAGE):
        rows = list(migrated.query(level, []))
        assert {r["study_instance_uid"]: r["patient_name"] for r in rows} == expected
    patients = list(migrated.query(Level.PATIENT, []))
    assert [r["number_of_patient_related_instances"] for r in patients] == [8, 8]
    migrated.close()
    assert pg_sql(pg_url, "SELECT value FROM meta WHERE key = 'schema'") == [
        (str(SCHEMA_VERSION),)
    ]
    fresh_url = pg_url.rsplit("/", 1)[0] + "/postgres"
    fresh_db = f"fresh_{tmp_path.name[-20:]}".lower().replace("-", "_")
    _autocommit(fresh_url, f'CREATE DATABASE "{fresh_db}"')
    try:
        fresh = Index(pg_url.rsplit("/", 1)[0] + f"/{fresh_db}")
        fresh.create()
        fresh.close()
        assert _shape(pg_url) == _shape(fresh.url)
    finally:
        _autocommit(fresh_url, f'DROP DATABASE "{fresh_db}" WITH (FORCE)')


def _autocommit(url: str, statement: str) -> None:
    engine = create_engine(engine_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(statement))
    engine.dispose()


def test_v1_data_directory_on_postgresql_upgrades_on_first_start(
    v1_data: Path, pg_url: str, tmp_path: Path
) -> None:
    """The whole data directory of the schema-1 release, its index moved to PostgreSQL and
    named by the older key storage.index_url: status upgrades, the trail verifies (its
    genesis written as a legacy one), a real server answers C-FIND, ingest goes on."""
    copy_to_postgres(v1_data / "index.sqlite", pg_url)
    (v1_data / "index.sqlite").unlink()
    settings = v1_data / "pacsvault.toml"
    settings.write_text(settings.read_text().replace('index_url = ""', f'index_url = "{pg_url}"'))
    proc = cli(v1_data, "status")
    assert "instances: 16" in proc.stdout and "patients: 2" in proc.stdout
    assert proc.stderr.count(UPGRADE_LINE) == 1
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in proc.stdout + proc.stderr
    assert "index: postgresql postgresql://pacs:***@" in proc.stdout
    assert "audit trail intact" in cli(v1_data, "audit", "verify").stdout
    server = Server(v1_data, free_port(), tmp_path / "server.log")
    server.start()
    try:
        out = tmp_path / "find"
        out.mkdir()
        proc = dcmtk("findscu", "-aet", "WS1", "-aec", SERVER_AET, "-S", "-X", "-od", str(out),
                     "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k",
                     "PatientName=roe*", "127.0.0.1", str(server.port))  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rsp = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        assert {str(r.PatientName) for r in rsp} == {"ROE^JANE"} and len(rsp) == 2
    finally:
        server.stop()
    assert password not in server.log_text()
    assert "loaded" in cli(v1_data, "demo", "--patients", "3", "--seed", "1").stdout
    assert "patients: 3" in cli(v1_data, "status").stdout
    assert "audit trail intact" in cli(v1_data, "audit", "verify").stdout


def test_a_failed_migration_on_postgresql_leaves_the_previous_version(
    v1_data: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's DDL is transactional too: a migration that fails undoes its ALTERs."""
    copy_to_postgres(v1_data / "index.sqlite", pg_url)
    real = migrations.MIGRATIONS[0]

    def broken(conn) -> None:
        real.apply(conn)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(migrations, "MIGRATIONS", (migrations.Migration(2, "broken", broken),))
    index = Index(pg_url)
    with pytest.raises(RuntimeError):
        index.create()
    assert pg_sql(pg_url, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]
    columns = pg_sql(pg_url, "SELECT column_name FROM information_schema.columns "
                     "WHERE table_name = 'studies' AND column_name = 'patient_name'")  # fmt: skip
    assert columns == []
    monkeypatch.undo()
    index.create()
    assert pg_sql(pg_url, "SELECT value FROM meta WHERE key = 'schema'") == [
        (str(SCHEMA_VERSION),)
    ]
    pg_sql(pg_url, "UPDATE meta SET value = '999' WHERE key = 'schema'")
    newer = Index(pg_url)
    with pytest.raises(migrations.SchemaTooNew, match="schema version 999"):
        newer.create()
    newer.close()
    index.close()


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
