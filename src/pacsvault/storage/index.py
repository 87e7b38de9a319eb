"""The index: one SQL database (SQLite by default, PostgreSQL for scale-out).

All statements are SQLAlchemy Core, so the same code runs on both. Writes go
through :meth:`Index.record_instance` inside a transaction owned by the caller
(the group-commit writer); reads stream rows so large result sets never sit in
memory.

Patient identity: a patient row is one PatientID + IssuerOfPatientID; a study with
an empty PatientID gets a patient row of its own. Every study keeps the patient
attributes it was sent with, and everything below the patient level (answers and
matching) uses that copy, so a study never shows another study's patient.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    create_engine,
    event,
    exists,
    false,
    func,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ColumnElement, Select

from pacsvault.dicom.attributes import ATTRIBUTES, IndexAttribute, Kind, Level
from pacsvault.dicom.matching import AnyOf, Condition, Exact, Range, Wildcard, fold
from pacsvault.security.identity import Scope
from pacsvault.storage import migrations
from pacsvault.storage import schema as s

log = logging.getLogger(__name__)

_AFTER_COMMIT = "pacsvault_after_commit"


def advisory_lock_id(namespace: str, key: str) -> int:
    """A PostgreSQL advisory lock id for *key* in *namespace*: 64 bits of a hash, as the
    signed bigint PostgreSQL takes."""
    digest = hashlib.sha256(f"pacsvault-{namespace}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class InstanceRecord:
    """Everything the index keeps about one stored instance, by level."""

    patient: dict[str, str | None]
    study: dict[str, str | None]
    series: dict[str, str | None]
    instance: dict[str, str | None]
    charset: str | None
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    source_aet: str | None = None
    stored_at: float = field(default_factory=time.time)

    @property
    def sop_instance_uid(self) -> str:
        return self.instance["sop_instance_uid"]  # type: ignore[return-value]


@dataclass(frozen=True)
class StoredInstance:
    """Where one indexed instance lives, as needed to retrieve it."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (savepoints work)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we answer success
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA case_sensitive_like=ON")  # DICOM text matching is case-sensitive
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("pacsvault_begin", "DEFERRED")
    # On the driver's connection: every read begins one, and SQLAlchemy's execution
    # path (events, result set-up) costs more than the statement.
    conn.connection.driver_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]


@contextmanager
def _kept(conn: Connection) -> Iterator[Connection]:
    yield conn


@contextmanager
def write_transaction(engine: Engine, held: Connection | None = None) -> Iterator[Connection]:
    """A transaction that takes the write lock up front (no lock upgrade dead-ends on SQLite).

    Actions registered with :func:`after_commit` run once the commit has returned, in
    order, before this context exits; they are dropped if the transaction rolls back.
    An action that raises is logged and does not affect the committed transaction.
    *held*: an open connection of *engine* to use, left open (the index writer's own).
    """
    with engine.connect() if held is None else _kept(held) as conn:
        conn.execution_options(pacsvault_begin="IMMEDIATE")
        actions: list[Callable[[], None]] = []
        conn.info[_AFTER_COMMIT] = actions
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info.pop(_AFTER_COMMIT, None)
        for action in actions:
            try:
                action()
            except Exception as exc:
                log.error("action after commit failed: %s: %s", type(exc).__name__, exc)


def after_commit(conn: Connection, action: Callable[[], None]) -> bool:
    """Run *action* once the :func:`write_transaction` of *conn* has committed.

    Returns False (and does nothing) when *conn* is not inside a ``write_transaction``.
    """
    actions = conn.info.get(_AFTER_COMMIT)
    if actions is None:
        return False
    actions.append(action)
    return True


#: Connections each process keeps open to PostgreSQL, and how many more it may open
#: under load. A serve process needs one for the index writer, one per running query
#: (a streamed C-FIND/QIDO answer holds its connection while it is sent) and a few for
#: policy checks; several nodes share the server's max_connections (100 by default).
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 15


def engine_url(url: str) -> URL:
    """*url* as SQLAlchemy should open it: ``postgresql://`` (and ``postgres://``) mean
    psycopg 3. Raises ValueError for a database or driver pacsvault does not support
    (the message never repeats the URL, which may hold a password)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ValueError("the index URL is not a valid database URL") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(
        "the index URL must be sqlite:///PATH or postgresql://USER@HOST/DATABASE "
        f"(not {parsed.drivername}://)"
    )


def open_engine(url: str) -> Engine:
    """Create the engine for *url*, configured for durable, concurrent use."""
    target = engine_url(url)
    if target.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=16,
            hide_parameters=True,  # bound values (names, IDs) never reach an error message
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        target,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        pool_timeout=30,
        pool_pre_ping=True,  # a connection the server or a proxy dropped is replaced
        pool_recycle=3600,
        hide_parameters=True,
        connect_args={"connect_timeout": 10, "application_name": "pacsvault"},
    )


def _plain_exact(attr: IndexAttribute, cond: Condition) -> bool:
    """True when *cond* is an exact match on *attr*'s own column (a UID, an ID)."""
    return isinstance(cond, Exact) and not cond.fold and attr.kind is not Kind.CODES


def _with_folds(values: Mapping[str, str | None], level: Level) -> dict[str, str | None]:
    row = dict(values)
    for attr in ATTRIBUTES[level]:
        if attr.kind is Kind.NAME:
            row[s.fold_column(attr)] = fold(values.get(attr.column))
    return row


def _patient_copy(patient: Mapping[str, str | None]) -> dict[str, str | None]:
    """The patient attributes a study keeps of its own (PatientID '' when absent)."""
    values = {a.column: patient.get(a.column) for a in s.PATIENT_COPY}
    values["patient_id"] = values["patient_id"] or ""
    return _with_folds(values, Level.PATIENT)


def _add_code(codes: str | None, code: str | None) -> str | None:
    """Add *code* to a backslash-joined, sorted set of codes; None when unchanged."""
    if not code:
        return None
    current = codes.split("\\") if codes else []
    if code in current:
        return None
    return "\\".join(sorted([*current, code]))


# Ingest statements, built once so SQLAlchemy compiles and caches them once.
_SERIES_LOOKUP = (
    select(
        s.series.c.pk,
        s.series.c.study_pk,
        s.studies.c.patient_pk,
        s.studies.c.modalities_in_study,
        s.studies.c.sop_classes_in_study,
    )
    .select_from(s.series.join(s.studies, s.series.c.study_pk == s.studies.c.pk))
    .where(s.series.c.series_instance_uid == bindparam("uid"))
)
_STUDY_LOOKUP = select(
    s.studies.c.pk,
    s.studies.c.patient_pk,
    s.studies.c.modalities_in_study,
    s.studies.c.sop_classes_in_study,
).where(s.studies.c.study_instance_uid == bindparam("uid"))
# Written to match uq_patients_identity (its expression and its WHERE) so it uses it.
_PATIENT_LOOKUP = select(s.patients.c.pk).where(
    s.IDENTIFIED_PATIENT,
    s.patients.c.patient_id == bindparam("pid"),
    func.coalesce(s.patients.c.issuer_of_patient_id, s.EMPTY) == bindparam("issuer"),
)
_INSERT = {level: table.insert() for level, table in s.LEVEL_TABLES.items()}
# PostgreSQL: a row another writer inserted first is not an error; RETURNING gives
# the new key, or nothing when the other writer's row stands (see _record_shared).
_INSERT_NEW = {
    Level.PATIENT: pg_insert(s.patients)
    .on_conflict_do_nothing(
        index_elements=[s.patients.c.patient_id,
                        func.coalesce(s.patients.c.issuer_of_patient_id, s.EMPTY)],
        index_where=s.IDENTIFIED_PATIENT,
    )
    .returning(s.patients.c.pk),
    Level.STUDY: pg_insert(s.studies)
    .on_conflict_do_nothing(index_elements=[s.studies.c.study_instance_uid])
    .returning(s.studies.c.pk),
    Level.SERIES: pg_insert(s.series)
    .on_conflict_do_nothing(index_elements=[s.series.c.series_instance_uid])
    .returning(s.series.c.pk),
}  # fmt: skip
_SERIES_LOOKUP_LOCKED = _SERIES_LOOKUP.with_for_update(of=s.studies)
_STUDY_LOOKUP_LOCKED = _STUDY_LOOKUP.with_for_update()
_COUNT_SERIES = (
    update(s.series)
    .where(s.series.c.pk == bindparam("row_pk"))
    .values(number_of_series_related_instances=s.series.c.number_of_series_related_instances + 1)
)
_COUNT_STUDY = (
    update(s.studies)
    .where(s.studies.c.pk == bindparam("row_pk"))
    .values(
        number_of_study_related_instances=s.studies.c.number_of_study_related_instances + 1,
        number_of_study_related_series=s.studies.c.number_of_study_related_series
        + bindparam("new_series"),
    )
)
_COUNT_PATIENT = (
    update(s.patients)
    .where(s.patients.c.pk == bindparam("row_pk"))
    .values(
        number_of_patient_related_instances=s.patients.c.number_of_patient_related_instances + 1,
        number_of_patient_related_series=s.patients.c.number_of_patient_related_series
        + bindparam("new_series"),
        number_of_patient_related_studies=s.patients.c.number_of_patient_related_studies
        + bindparam("new_study"),
    )
)


_EVERYTHING = Scope.everything()


class _Sqlite:
    """The ingest statements in SQLite's own SQL, run on the DBAPI connection.

    The same statements as the SQLAlchemy ones above (which PostgreSQL runs), without
    SQLAlchemy's per-statement work (coercion, cache keys, result objects): on the
    single-writer hot path that work cost more than SQLite itself. Errors are raised as
    SQLAlchemy's (``IntegrityError`` for a duplicate SOP instance), with parameters
    hidden like every other statement's.
    """

    SERIES_LOOKUP = (
        "SELECT series.pk, series.study_pk, studies.patient_pk, studies.modalities_in_study, "
        "studies.sop_classes_in_study FROM series JOIN studies ON series.study_pk = studies.pk "
        "WHERE series.series_instance_uid = ?"
    )
    STUDY_LOOKUP = (
        "SELECT pk, patient_pk, modalities_in_study, sop_classes_in_study FROM studies "
        "WHERE study_instance_uid = ?"
    )
    # Written to match uq_patients_identity (its expression and its WHERE) so it uses it.
    PATIENT_LOOKUP = (
        "SELECT pk FROM patients WHERE patients.patient_id != '' AND patient_id = ? "
        "AND coalesce(issuer_of_patient_id, '') = ?"
    )
    COUNT_SERIES = (
        "UPDATE series SET number_of_series_related_instances = "
        "number_of_series_related_instances + 1 WHERE pk = ?"
    )
    COUNT_STUDY = (
        "UPDATE studies SET number_of_study_related_instances = "
        "number_of_study_related_instances + 1, number_of_study_related_series = "
        "number_of_study_related_series + ? WHERE pk = ?"
    )
    COUNT_PATIENT = (
        "UPDATE patients SET number_of_patient_related_instances = "
        "number_of_patient_related_instances + 1, number_of_patient_related_series = "
        "number_of_patient_related_series + ?, number_of_patient_related_studies = "
        "number_of_patient_related_studies + ? WHERE pk = ?"
    )
    CODES = "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ? WHERE pk = ?"
    STORED_COPY = "SELECT sha256, blob_key FROM instances WHERE sop_instance_uid = ?"

    def __init__(self) -> None:
        self.insert: dict[Level, tuple[str, list[str], list[Any]]] = {}
        for level, table in s.LEVEL_TABLES.items():
            cols = [c for c in table.c if not c.primary_key]
            sql = (
                f"INSERT INTO {table.name} ({', '.join(c.name for c in cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)})"
            )
            # Column defaults are SQLAlchemy's (Python side): the derived counts start at 0.
            defaults = [c.default.arg if c.default is not None else None for c in cols]
            self.insert[level] = (sql, [c.name for c in cols], defaults)


_SQLITE = _Sqlite()


@contextmanager
def _sqlite_errors(statement: str) -> Iterator[None]:
    """sqlite3 errors as SQLAlchemy's, bound parameters hidden."""
    try:
        yield
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, sqlite3.Error, hide_parameters=True, dialect=None
        ) from exc


def _dbapi(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection under *conn*, or None on another database."""
    if conn.dialect.name != "sqlite":
        return None
    return conn.connection.driver_connection  # type: ignore[return-value]


def _insert_row(cur: sqlite3.Cursor, level: Level, values: Mapping[str, Any]) -> int:
    sql, names, defaults = _SQLITE.insert[level]
    with _sqlite_errors(sql):
        cur.execute(sql, [values.get(n, d) for n, d in zip(names, defaults, strict=True)])
    return int(cur.lastrowid)  # type: ignore[arg-type]


class Index:
    """The SQL index of patients, studies, series, instances, peers and audit events."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)
        self._instances_stmt: Select | None = None
        # Retrieves by exact UIDs (every WADO-RS, C-GET and C-MOVE): statements built
        # once per level and attributes, with the values bound (see instances_for).
        self._exact_stmts: dict[tuple[Level, tuple[str, ...]], Select] = {}

    def create(self) -> None:
        """Make the schema current: create it in an empty database, or upgrade an older one.

        Each migration runs in a transaction of its own (logged at INFO), so an
        interrupted upgrade resumes from the last completed version. Raises
        :class:`~pacsvault.storage.migrations.SchemaTooNew` for an index written by a
        newer pacsvault, leaving it untouched. Only reads when the schema is current.
        """
        with self.engine.connect() as conn:
            if migrations.is_current(migrations.stored_version(conn)):
                return
        while True:
            with write_transaction(self.engine) as conn:
                if not migrations.step(conn):
                    return

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------

    def find_instance(self, conn: Connection, sop_instance_uid: str) -> StoredInstance | None:
        """The stored instance with this SOP Instance UID, if any."""
        rows = self._instance_select().where(s.instances.c.sop_instance_uid == sop_instance_uid)
        row = conn.execute(rows).mappings().first()
        return _stored(row) if row else None

    def stored_copy(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(sha256, blob key) of the stored copy of this SOP instance, if any.

        The duplicate check of every ingest: one indexed lookup, on SQLite without
        SQLAlchemy's statement machinery.
        """
        if self.engine.dialect.name != "sqlite":
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(s.instances.c.sha256, s.instances.c.blob_key).where(
                        s.instances.c.sop_instance_uid == sop_instance_uid
                    )
                ).first()
            return (row[0], row[1]) if row else None
        raw = self.engine.raw_connection()
        try:
            with _sqlite_errors(_Sqlite.STORED_COPY):
                row = raw.cursor().execute(_Sqlite.STORED_COPY, (sop_instance_uid,)).fetchone()
        finally:
            raw.close()
        return (row[0], row[1]) if row else None

    def record_instance(self, conn: Connection, rec: InstanceRecord) -> None:
        """Index *rec* (a new SOP instance) and update every derived count.

        Runs inside the caller's transaction. A study or series that already exists
        keeps its first-seen attributes (and its patient); an existing SOP Instance UID
        violates the unique constraint and raises. This is the ingest hot path: the
        common case (a series already known) costs one lookup, one insert and three
        updates, all through statements compiled once. On SQLite they run on the
        sqlite3 connection itself (:class:`_Sqlite`); elsewhere (PostgreSQL) through
        SQLAlchemy, safe against writers in other processes (see :meth:`_record_shared`).
        """
        raw = _dbapi(conn)
        if raw is None:
            self._record_shared(conn, rec)
            return
        cur = raw.cursor()
        try:
            self._record_instance_sqlite(cur, rec)
        finally:
            cur.close()

    def _record_shared(self, conn: Connection, rec: InstanceRecord) -> None:
        """:meth:`record_instance` on a database that several processes write (PostgreSQL).

        SQLite's single writer made lookup-then-insert safe; here other nodes insert and
        count concurrently, so: the study row is locked (``FOR UPDATE``) where it is read,
        which keeps its modality and SOP class lists from losing another node's addition
        (its counts are updated in place and lock it anyway); and patients, studies and
        series are inserted ``ON CONFLICT DO NOTHING``: a node that loses the race to
        create one waits for the winner's commit and then uses its row.
        """
        series_uid = {"uid": rec.series["series_instance_uid"]}
        hit = conn.execute(_SERIES_LOOKUP_LOCKED, series_uid).first()
        new_series = new_study = hit is None
        if hit is not None:
            series_pk, study_pk, patient_pk, modalities, classes = hit
        else:
            study_uid = {"uid": rec.study["study_instance_uid"]}
            study = conn.execute(_STUDY_LOOKUP_LOCKED, study_uid).first()
            if study is None:
                patient_pk, patient_is_new = self._patient_pk(conn, rec)
                created = conn.execute(
                    _INSERT_NEW[Level.STUDY],
                    {
                        **_with_folds(rec.study, Level.STUDY),
                        **_patient_copy(rec.patient),
                        "patient_pk": patient_pk,
                        "charset": rec.charset,
                        "created_at": rec.stored_at,
                        "modalities_in_study": None,
                        "sop_classes_in_study": None,
                    },
                ).scalar()
                if created is None:  # another node created the study meanwhile
                    if patient_is_new:
                        conn.execute(s.patients.delete().where(s.patients.c.pk == patient_pk))
                    study = conn.execute(_STUDY_LOOKUP_LOCKED, study_uid).one()
                else:
                    study_pk, modalities, classes = created, None, None
            if study is not None:
                new_study = False
                study_pk, patient_pk, modalities, classes = study
            series_pk = conn.execute(
                _INSERT_NEW[Level.SERIES],
                {**_with_folds(rec.series, Level.SERIES), "study_pk": study_pk,
                 "charset": rec.charset},
            ).scalar()  # fmt: skip
            if series_pk is None:  # another node created the series meanwhile
                hit = conn.execute(_SERIES_LOOKUP_LOCKED, series_uid).one()
                series_pk, study_pk, patient_pk, modalities, classes = hit
                new_series = False

        conn.execute(
            _INSERT[Level.IMAGE],
            {
                **_with_folds(rec.instance, Level.IMAGE),
                "series_pk": series_pk,
                "charset": rec.charset,
                "transfer_syntax_uid": rec.transfer_syntax_uid,
                "blob_key": rec.blob_key,
                "size": rec.size,
                "sha256": rec.sha256,
                "source_aet": rec.source_aet,
                "stored_at": rec.stored_at,
            },
        )
        conn.execute(_COUNT_SERIES, {"row_pk": series_pk})
        conn.execute(_COUNT_STUDY, {"row_pk": study_pk, "new_series": int(new_series)})
        conn.execute(
            _COUNT_PATIENT,
            {"row_pk": patient_pk, "new_series": int(new_series), "new_study": int(new_study)},
        )
        m = _add_code(modalities, rec.series.get("modality"))
        c = _add_code(classes, rec.instance.get("sop_class_uid"))
        if m is not None or c is not None:
            codes = {"modalities_in_study": m or modalities, "sop_classes_in_study": c or classes}
            conn.execute(update(s.studies).where(s.studies.c.pk == study_pk).values(**codes))

    def _record_instance_sqlite(self, cur: sqlite3.Cursor, rec: InstanceRecord) -> None:
        """:meth:`record_instance` on SQLite (the same statements, see :class:`_Sqlite`)."""
        q = _Sqlite
        with _sqlite_errors(q.SERIES_LOOKUP):
            hit = cur.execute(q.SERIES_LOOKUP, (rec.series["series_instance_uid"],)).fetchone()
        new_series = new_study = hit is None
        if hit is not None:
            series_pk, study_pk, patient_pk, modalities, classes = hit
        else:
            with _sqlite_errors(q.STUDY_LOOKUP):
                study = cur.execute(q.STUDY_LOOKUP, (rec.study["study_instance_uid"],)).fetchone()
            new_study = study is None
            if study is not None:
                study_pk, patient_pk, modalities, classes = study
            else:
                patient_pk = self._patient_pk_sqlite(cur, rec)
                study_pk = _insert_row(cur, Level.STUDY, {
                    **_with_folds(rec.study, Level.STUDY),
                    **_patient_copy(rec.patient),
                    "patient_pk": patient_pk,
                    "charset": rec.charset,
                    "created_at": rec.stored_at,
                    "modalities_in_study": None,
                    "sop_classes_in_study": None,
                })  # fmt: skip
                modalities = classes = None
            series_pk = _insert_row(cur, Level.SERIES, {
                **_with_folds(rec.series, Level.SERIES), "study_pk": study_pk,
                "charset": rec.charset,
            })  # fmt: skip
        _insert_row(cur, Level.IMAGE, {
            **_with_folds(rec.instance, Level.IMAGE),
            "series_pk": series_pk,
            "charset": rec.charset,
            "transfer_syntax_uid": rec.transfer_syntax_uid,
            "blob_key": rec.blob_key,
            "size": rec.size,
            "sha256": rec.sha256,
            "source_aet": rec.source_aet,
            "stored_at": rec.stored_at,
        })  # fmt: skip
        with _sqlite_errors(q.COUNT_SERIES):
            cur.execute(q.COUNT_SERIES, (series_pk,))
            cur.execute(q.COUNT_STUDY, (int(new_series), study_pk))
            cur.execute(q.COUNT_PATIENT, (int(new_series), int(new_study), patient_pk))
        m = _add_code(modalities, rec.series.get("modality"))
        c = _add_code(classes, rec.instance.get("sop_class_uid"))
        if m is not None or c is not None:
            with _sqlite_errors(q.CODES):
                cur.execute(q.CODES, (m or modalities, c or classes, study_pk))

    def _patient_pk_sqlite(self, cur: sqlite3.Cursor, rec: InstanceRecord) -> int:
        """:meth:`_patient_pk` on SQLite."""
        patient_id = rec.patient.get("patient_id") or ""
        if patient_id:
            issuer = rec.patient.get("issuer_of_patient_id") or ""
            with _sqlite_errors(_Sqlite.PATIENT_LOOKUP):
                row = cur.execute(_Sqlite.PATIENT_LOOKUP, (patient_id, issuer)).fetchone()
            if row is not None:
                return int(row[0])
        values = _with_folds({**rec.patient, "patient_id": patient_id}, Level.PATIENT)
        return _insert_row(cur, Level.PATIENT, {**values, "charset": rec.charset})

    def _patient_pk(self, conn: Connection, rec: InstanceRecord) -> tuple[int, bool]:
        """The patient of a new study: the row of its PatientID + issuer, or a new row
        (then True).

        A study without a PatientID (absent or empty) always gets a new patient row.
        An existing row keeps its first-seen attributes; the study keeps its own.
        """
        patient_id = rec.patient.get("patient_id") or ""
        values = _with_folds({**rec.patient, "patient_id": patient_id}, Level.PATIENT)
        issuer = rec.patient.get("issuer_of_patient_id") or ""
        lookup = {"pid": patient_id, "issuer": issuer}
        if patient_id:
            row = conn.execute(_PATIENT_LOOKUP, lookup).first()
            if row is not None:
                return int(row[0]), False
        pk = conn.execute(_INSERT_NEW[Level.PATIENT], {**values, "charset": rec.charset}).scalar()
        if pk is None:  # another node added this patient meanwhile
            return int(conn.execute(_PATIENT_LOOKUP, lookup).scalar_one()), False
        return int(pk), True

    def replace_instance(self, conn: Connection, rec: InstanceRecord) -> None:
        """Point an existing SOP instance at a new copy (the 'replace' duplicate policy).

        The instance keeps its place in the hierarchy; only its own attributes and
        storage details change.
        """
        conn.execute(
            update(s.instances)
            .where(s.instances.c.sop_instance_uid == rec.sop_instance_uid)
            .values(
                **_with_folds(rec.instance, Level.IMAGE),
                charset=rec.charset,
                transfer_syntax_uid=rec.transfer_syntax_uid,
                blob_key=rec.blob_key,
                size=rec.size,
                sha256=rec.sha256,
                source_aet=rec.source_aet,
                stored_at=rec.stored_at,
            )
        )

    # -- reads ----------------------------------------------------------------------------

    def _joined(self, level: Level) -> Any:
        joined: Any = s.patients
        if level.depth >= 1:
            joined = joined.join(s.studies, s.studies.c.patient_pk == s.patients.c.pk)
        if level.depth >= 2:
            joined = joined.join(s.series, s.series.c.study_pk == s.studies.c.pk)
        if level.depth >= 3:
            joined = joined.join(s.instances, s.instances.c.series_pk == s.series.c.pk)
        return joined

    def _instance_select(self) -> Select:
        if self._instances_stmt is None:
            self._instances_stmt = self._build_instance_select()
        return self._instances_stmt

    def _build_instance_select(self) -> Select:
        return select(
            s.studies.c.patient_id,
            s.studies.c.study_instance_uid,
            s.series.c.series_instance_uid,
            s.instances.c.sop_instance_uid,
            s.instances.c.sop_class_uid,
            s.instances.c.transfer_syntax_uid,
            s.instances.c.blob_key,
            s.instances.c.size,
            s.instances.c.sha256,
        ).select_from(self._joined(Level.IMAGE))

    def _clause(self, attr: IndexAttribute, cond: Condition, level: Level) -> ColumnElement[bool]:
        """The SQL condition of *cond* on *attr* in a query at *level*."""
        table = _table_for(attr, level)
        if attr.kind is Kind.CODES:
            return self._codes_clause(attr, cond)
        folded = getattr(cond, "fold", False)
        col = table.c[s.fold_column(attr)] if folded else table.c[attr.column]
        match cond:
            case Exact(value=value):
                return col == (fold(value) if folded else value)
            case Wildcard(pattern=pattern):
                return col.like(_like_pattern(fold(pattern) if folded else pattern), escape="\\")
            case AnyOf(values=values):
                return col.in_(values)
            case Range(low=low, high=high):
                parts = []
                if low is not None:
                    parts.append(col >= low)
                if high is not None:
                    parts.append(col <= high)
                return and_(*parts)
        raise TypeError(cond)

    def _codes_clause(self, attr: IndexAttribute, cond: Condition) -> ColumnElement[bool]:
        """A study has one of the codes in any of its series (or instances).

        The subquery reads aliases of the series and instances tables, so that only the
        study correlates with a query at the series or instance level, which joins those
        tables too.
        """
        values = cond.values if isinstance(cond, AnyOf) else ()
        series = s.series.alias("codes_series")
        if attr.keyword == "ModalitiesInStudy":
            col = series.c.modality
            sub = select(series.c.pk).where(series.c.study_pk == s.studies.c.pk)
        else:
            instances = s.instances.alias("codes_instances")
            col = instances.c.sop_class_uid
            sub = (
                select(instances.c.pk)
                .select_from(instances.join(series, instances.c.series_pk == series.c.pk))
                .where(series.c.study_pk == s.studies.c.pk)
            )
        matchers = [
            col.like(_like_pattern(v), escape="\\") if ("*" in v or "?" in v) else col == v
            for v in values
        ]
        return exists(sub.where(or_(*matchers)))

    def _scope_clause(self, scope: Scope, level: Level) -> ColumnElement[bool] | None:
        """The condition a study must meet to be within *scope* (None: no restriction).

        At the patient level, a patient is visible when one of its studies is.
        """
        if scope.unrestricted:
            return None
        if scope.empty:
            return false()
        st = s.studies
        parts: list[ColumnElement[bool]] = []
        if scope.physicians:
            # The stored fold keeps trailing empty components ("smith^john^^"); the
            # scope's keys are without them (see physician_key).
            parts.append(s.REFERRER_KEY.in_(scope.physicians))
        if scope.studies:
            parts.append(st.c.study_instance_uid.in_(scope.studies))
        visible = or_(*parts)
        if level is Level.PATIENT:
            return exists(select(st.c.pk).where(st.c.patient_pk == s.patients.c.pk, visible))
        return visible

    def query(
        self,
        level: Level,
        conditions: Iterable[tuple[IndexAttribute, Condition]],
        *,
        scope: Scope = _EVERYTHING,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[Mapping[str, Any]]:
        """Stream the rows of *level* matching every condition, with all levels above joined.

        Each row maps column names (of every joined level) to values. Below the patient
        level, the patient attributes are the study's own copy (the study table's columns
        of the same names); the patient-related counts are the patient row's. The
        connection is held only while the iterator is being consumed.
        """
        tables = [s.LEVEL_TABLES[lvl] for lvl in Level if lvl.depth <= level.depth]
        columns = []
        seen: set[str] = set()
        for table in reversed(tables):  # the deepest level wins name clashes
            for col in table.c:
                if col.name not in seen:
                    seen.add(col.name)
                    columns.append(col)
        stmt = select(*columns).select_from(self._joined(level))
        for attr, cond in conditions:
            if attr.level.depth <= level.depth:
                stmt = stmt.where(self._clause(attr, cond, level))
        visible = self._scope_clause(scope, level)
        if visible is not None:
            stmt = stmt.where(visible)
        stmt = stmt.order_by(s.LEVEL_TABLES[level].c.pk)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=500).execute(stmt)
            yield from result.mappings()

    def instances_for(
        self,
        level: Level,
        conditions: Iterable[tuple[IndexAttribute, Condition]],
        *,
        scope: Scope = _EVERYTHING,
    ) -> list[StoredInstance]:
        """Every stored instance within *scope* under the entities of *level* matching the
        conditions."""
        used = [(a, c) for a, c in conditions if a.level.depth <= level.depth]
        visible = self._scope_clause(scope, Level.IMAGE)
        if visible is None and used and all(_plain_exact(a, c) for a, c in used):
            stmt, params = self._exact_select(level, used)
        else:
            stmt, params = self._instance_select(), {}
            for attr, cond in used:
                stmt = stmt.where(self._clause(attr, cond, level))
            if visible is not None:
                stmt = stmt.where(visible)
            stmt = stmt.order_by(s.instances.c.pk)
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(stmt, params).mappings()]

    def _exact_select(
        self, level: Level, used: list[tuple[IndexAttribute, Condition]]
    ) -> tuple[Select, dict[str, str]]:
        """The instances statement for exact values of *used*, built once, and its values."""
        key = (level, tuple(attr.keyword for attr, _cond in used))
        stmt = self._exact_stmts.get(key)
        if stmt is None:
            stmt = self._instance_select()
            for n, (attr, _cond) in enumerate(used):
                stmt = stmt.where(_table_for(attr, level).c[attr.column] == bindparam(f"v{n}"))
            stmt = self._exact_stmts.setdefault(key, stmt.order_by(s.instances.c.pk))
        values = [cond.value for _attr, cond in used if isinstance(cond, Exact)]
        return stmt, {f"v{n}": value for n, value in enumerate(values)}

    def statistics(self) -> dict[str, int]:
        """Counts of patients, studies, series, instances and stored bytes."""
        with self.engine.connect() as conn:
            return {
                "patients": conn.scalar(select(func.count()).select_from(s.patients)) or 0,
                "studies": conn.scalar(select(func.count()).select_from(s.studies)) or 0,
                "series": conn.scalar(select(func.count()).select_from(s.series)) or 0,
                "instances": conn.scalar(select(func.count()).select_from(s.instances)) or 0,
                "bytes": conn.scalar(select(func.coalesce(func.sum(s.instances.c.size), 0))) or 0,
            }

    def identity_conflicts(self) -> int:
        """How many studies name their patient differently from the patient's first study.

        Counts studies of an identified patient (non-empty PatientID) whose own
        PatientName (compared case-insensitively) or PatientBirthDate differs from the
        patient row's, where both are known.
        """
        st, p = s.studies, s.patients
        stmt = (
            select(func.count())
            .select_from(st.join(p, st.c.patient_pk == p.c.pk))
            .where(
                s.IDENTIFIED_PATIENT,
                or_(
                    st.c.patient_name_fold != p.c.patient_name_fold,
                    st.c.patient_birth_date != p.c.patient_birth_date,
                ),
            )
        )
        with self.engine.connect() as conn:
            return conn.scalar(stmt) or 0


def _table_for(attr: IndexAttribute, level: Level) -> Table:
    """Where *attr* is matched in a query at *level*.

    Below the patient level, patient attributes match the study's own copy (a study
    is found by the name it was sent with); the derived counts stay the patient's.
    """
    if attr.level is Level.PATIENT and level is not Level.PATIENT and not attr.derived:
        return s.studies
    return s.LEVEL_TABLES[attr.level]


def _stored(row: Mapping[str, Any]) -> StoredInstance:
    return StoredInstance(**{k: row[k] for k in StoredInstance.__dataclass_fields__})


def _like_pattern(pattern: str) -> str:
    """DICOM wildcard -> SQL LIKE, with LIKE's own metacharacters escaped."""
    out = []
    for ch in pattern:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)
