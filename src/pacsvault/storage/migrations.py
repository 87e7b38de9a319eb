"""Versioned index migrations: each takes the schema from version N to N+1 in one transaction.

The version lives in the ``meta`` table under the key ``schema``. :func:`step` is
called by :meth:`pacsvault.storage.index.Index.create` inside a write transaction,
repeatedly, until it reports the schema current: a fresh database gets the latest
schema directly, an older one is upgraded one migration per transaction (a failed
migration leaves the index at its previous version), and an index written by newer
code is refused with :class:`SchemaTooNew`.

Migrations are frozen history: they name tables, columns and indexes literally (and
use their own table definitions) rather than deriving them from the current
:mod:`pacsvault.storage.schema`, which keeps changing. DDL is written in the SQL
common to SQLite and PostgreSQL; data changes use SQLAlchemy Core. On SQLite a
change to a column constraint needs a table rebuild; uniqueness here lives in
indexes, which both databases drop and create in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    ScalarSelect,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.schema import CreateTable

from pacsvault import __version__
from pacsvault.storage import schema as s

log = logging.getLogger(__name__)

SCHEMA_KEY = "schema"


class SchemaError(Exception):
    """The index's schema cannot be used by this code; the message says why (no values)."""


class SchemaTooNew(SchemaError):
    """The index was written by a newer pacsvault (its schema version is above ours)."""


@dataclass(frozen=True)
class Migration:
    """One upgrade step: *apply* takes the schema from ``version - 1`` to ``version``."""

    version: int
    summary: str
    apply: Callable[[Connection], None]


# -- migration 2: a patient is PatientID + issuer; studies keep their patient attributes ----

# The patient-level columns as of schema 2, in table order (fold twin after the name).
_V2_PATIENT_COPY = (
    "patient_id",
    "patient_name",
    "patient_name_fold",
    "issuer_of_patient_id",
    "patient_birth_date",
    "patient_birth_time",
    "patient_sex",
    "ethnic_group",
    "patient_comments",
)
_V2_COUNTS = (
    "number_of_patient_related_studies",
    "number_of_patient_related_series",
    "number_of_patient_related_instances",
)

_v2 = MetaData()
_v2_patients = Table(
    "patients",
    _v2,
    Column("pk", Integer, primary_key=True),
    *(Column(name, Text) for name in _V2_PATIENT_COPY),
    *(Column(name, Integer) for name in _V2_COUNTS),
    Column("charset", Text),
)
_v2_studies = Table(
    "studies",
    _v2,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", Integer),
    Column("number_of_study_related_series", Integer),
    Column("number_of_study_related_instances", Integer),
    *(Column(name, Text) for name in _V2_PATIENT_COPY),
)

_V2_INDEXES = (
    "CREATE INDEX ix_patients_patient_id ON patients (patient_id)",
    "CREATE UNIQUE INDEX uq_patients_identity ON patients "
    "(patient_id, coalesce(issuer_of_patient_id, '')) WHERE patient_id != ''",
    "CREATE INDEX ix_studies_patient_id ON studies (patient_id)",
    "CREATE INDEX ix_studies_patient_name_fold ON studies (patient_name_fold)",
)


def _v2_copy_patient_attributes(conn: Connection) -> None:
    """Give every study its own copy of its patient row's attributes (all schema 1 kept)."""
    p, st = _v2_patients, _v2_studies
    conn.execute(
        update(st).values(
            {
                st.c[name]: select(p.c[name]).where(p.c.pk == st.c.patient_pk).scalar_subquery()
                for name in _V2_PATIENT_COPY
            }
        )
    )


def _v2_split_unidentified(conn: Connection) -> int:
    """Give each study of a merged empty-PatientID patient a patient row of its own.

    Schema 1 merged every study without a PatientID into one patient; the first
    study keeps that row, every later one gets a copy (the attributes schema 1 kept
    are the first study's: the later studies' own were not indexed). Returns the
    number of studies moved; their patients' counts are recomputed.
    """
    p, st = _v2_patients, _v2_studies
    merged = (
        select(st.c.patient_pk)
        .join(p, p.c.pk == st.c.patient_pk)
        .where(p.c.patient_id == "")
        .group_by(st.c.patient_pk)
        .having(func.count() > 1)
    )
    firsts: list[int] = list(conn.scalars(merged).all())
    moved: list[int] = []
    for patient_pk in firsts:
        row = conn.execute(select(p).where(p.c.pk == patient_pk)).mappings().one()
        values = {k: v for k, v in row.items() if k != "pk"}
        later = select(st.c.pk).where(st.c.patient_pk == patient_pk).order_by(st.c.pk).offset(1)
        for study_pk in conn.scalars(later).all():
            new_pk = conn.execute(insert(p).values(values)).inserted_primary_key[0]
            conn.execute(update(st).where(st.c.pk == study_pk).values(patient_pk=new_pk))
            moved.append(new_pk)
    if moved:
        _v2_recount(conn, firsts + moved)
    return len(moved)


def _v2_recount(conn: Connection, patient_pks: list[int]) -> None:
    """Recompute the derived counts of the patients *patient_pks* from their studies."""
    p, st = _v2_patients, _v2_studies
    own = st.c.patient_pk == p.c.pk

    def total(column: Column[Any]) -> ScalarSelect[Any]:
        return select(func.coalesce(func.sum(column), 0)).where(own).scalar_subquery()

    conn.execute(
        update(p)
        .where(p.c.pk.in_(patient_pks))
        .values(
            number_of_patient_related_studies=select(func.count())
            .select_from(st)
            .where(own)
            .scalar_subquery(),
            number_of_patient_related_series=total(st.c.number_of_study_related_series),
            number_of_patient_related_instances=total(st.c.number_of_study_related_instances),
        )
    )


def _to_v2(conn: Connection) -> None:
    """Schema 2: patients keyed by PatientID + issuer, studies with their own patient copy."""
    quote = conn.dialect.identifier_preparer.quote
    conn.execute(text("DROP INDEX ix_patients_patient_id"))  # was UNIQUE
    for name in _V2_PATIENT_COPY:
        conn.execute(text(f"ALTER TABLE studies ADD COLUMN {quote(name)} TEXT"))
    _v2_copy_patient_attributes(conn)
    moved = _v2_split_unidentified(conn)
    if moved:
        log.warning(
            "%d studies without a PatientID had been merged into another study's patient by "
            "schema 1; each now has a patient of its own, but the index shows them with the "
            "first such study's patient attributes (schema 1 never indexed their own, which "
            "their stored objects still hold)",
            moved,
        )
    for ddl in _V2_INDEXES:
        conn.execute(text(ddl))


# -- migration 3: roles of the access policy, referrers' physician links, shared studies ----

_V3_TABLES = (
    "CREATE TABLE user_physicians (user_name VARCHAR(64) NOT NULL REFERENCES users (name) "
    "ON DELETE CASCADE, physician_key TEXT NOT NULL, physician TEXT NOT NULL, "
    "created_at FLOAT NOT NULL, PRIMARY KEY (user_name, physician_key))",
    "CREATE TABLE shares (id INTEGER NOT NULL PRIMARY KEY, study_instance_uid VARCHAR(64) "
    "NOT NULL, user_name VARCHAR(64) NOT NULL REFERENCES users (name) ON DELETE CASCADE, "
    "created_at FLOAT NOT NULL, expires_at FLOAT, created_by TEXT NOT NULL)",
    "CREATE INDEX ix_shares_user_name ON shares (user_name)",
)
#: Schema 2's roles that the access policy renamed.
_V3_ROLES = {"physician": "referrer", "technologist": "uploader"}


def _to_v3(conn: Connection) -> None:
    """Schema 3: user_physicians and shares tables; physician/technologist roles renamed."""
    if conn.dialect.name == "postgresql":
        ddl = [d.replace("id INTEGER NOT NULL PRIMARY KEY", "id SERIAL PRIMARY KEY")
               for d in _V3_TABLES]  # fmt: skip
    else:
        ddl = list(_V3_TABLES)
    for statement in ddl:
        conn.execute(text(statement))
    for old, new in _V3_ROLES.items():
        rename = text("UPDATE users SET role = :new WHERE role = :old")
        conn.execute(rename, {"new": new, "old": old})


# -- migration 4: the web door: sessions, API tokens, second factors ------------------------

_V4_DDL = (
    "ALTER TABLE users ADD COLUMN totp_secret TEXT",
    "CREATE TABLE web_sessions (id_hash VARCHAR(64) NOT NULL PRIMARY KEY, user_name "
    "VARCHAR(64) NOT NULL REFERENCES users (name) ON DELETE CASCADE, csrf_hash VARCHAR(64) "
    "NOT NULL, address TEXT, created_at FLOAT NOT NULL, last_seen FLOAT NOT NULL, "
    "expires_at FLOAT NOT NULL)",
    "CREATE INDEX ix_web_sessions_user_name ON web_sessions (user_name)",
    "CREATE TABLE api_tokens (id VARCHAR(32) NOT NULL PRIMARY KEY, user_name VARCHAR(64) "
    "NOT NULL REFERENCES users (name) ON DELETE CASCADE, secret_hash VARCHAR(64) NOT NULL, "
    "scope VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL, expires_at FLOAT, "
    "revoked_at FLOAT, last_used_at FLOAT, created_by TEXT NOT NULL)",
    "CREATE INDEX ix_api_tokens_user_name ON api_tokens (user_name)",
)


def _to_v4(conn: Connection) -> None:
    """Schema 4: users.totp_secret, web_sessions and api_tokens tables."""
    for statement in _V4_DDL:
        conn.execute(text(statement))


# -- migration 5: one audit chain per node; PostgreSQL's pattern indexes ------------------

_v5 = MetaData()
_V5_AUDIT_EVENTS = Table(
    "audit_events",
    _v5,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("time", Float, nullable=False),
    Column("event_code", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor", Text),
    Column("address", Text),
    Column("study_uid", String(64)),
    Column("patient_ref", String(64)),
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("chain", String(32), nullable=False, server_default=""),
    UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),
)
_V5_AUDIT_CHECKPOINTS = Table(
    "audit_checkpoints",
    _v5,
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("time", Float, nullable=False),
    Column("signature", Text, nullable=False),
    Column("chain", String(32), nullable=False, server_default=""),
    PrimaryKeyConstraint("chain", "seq", name="pk_audit_checkpoints"),
)
_V5_AUDIT_INDEXES = ("CREATE INDEX ix_audit_time ON audit_events (time)",)
_V5_PG = (
    # The audit tables: (chain, seq) is the key where seq alone was.
    "ALTER TABLE audit_events ADD COLUMN chain VARCHAR(32) DEFAULT '' NOT NULL",
    "ALTER TABLE audit_events DROP CONSTRAINT audit_events_seq_key",
    "ALTER TABLE audit_events ADD CONSTRAINT uq_audit_events_chain_seq UNIQUE (chain, seq)",
    "ALTER TABLE audit_checkpoints ADD COLUMN chain VARCHAR(32) DEFAULT '' NOT NULL",
    "ALTER TABLE audit_checkpoints DROP CONSTRAINT audit_checkpoints_pkey",
    "ALTER TABLE audit_checkpoints ADD CONSTRAINT pk_audit_checkpoints PRIMARY KEY (chain, seq)",
    # Prefix (LIKE 'abc%') matches use these in any collation.
    "DROP INDEX ix_patients_name_fold",
    "CREATE INDEX ix_patients_name_fold ON patients (patient_name_fold text_pattern_ops)",
    "DROP INDEX ix_studies_accession",
    "CREATE INDEX ix_studies_accession ON studies (accession_number text_pattern_ops)",
    "DROP INDEX ix_studies_patient_id",
    "CREATE INDEX ix_studies_patient_id ON studies (patient_id text_pattern_ops)",
    "DROP INDEX ix_studies_patient_name_fold",
    "CREATE INDEX ix_studies_patient_name_fold ON studies (patient_name_fold text_pattern_ops)",
    "CREATE INDEX ix_patients_patient_id_pattern ON patients (patient_id text_pattern_ops)",
    "CREATE INDEX ix_studies_referrer_key ON studies "
    "(rtrim(referring_physician_name_fold, '^= '))",
)


def _v5_rebuild_sqlite(conn: Connection, table: Table) -> None:
    """Rebuild *table* on SQLite with its v5 definition (a constraint changes), rows kept."""
    old = [c.name for c in table.c if c.name != "chain"]
    columns = ", ".join(old)
    staging = table.to_metadata(MetaData(), name=f"{table.name}_v5")
    conn.execute(CreateTable(staging))
    conn.execute(text(f"INSERT INTO {staging.name} ({columns}) SELECT {columns} FROM {table.name}"))
    conn.execute(text(f"DROP TABLE {table.name}"))
    conn.execute(text(f"ALTER TABLE {staging.name} RENAME TO {table.name}"))


def _to_v5(conn: Connection) -> None:
    """Schema 5: audit records and checkpoints keyed by (chain, seq); PostgreSQL indexes."""
    if conn.dialect.name == "postgresql":
        for statement in _V5_PG:
            conn.execute(text(statement))
        return
    _v5_rebuild_sqlite(conn, _V5_AUDIT_EVENTS)
    _v5_rebuild_sqlite(conn, _V5_AUDIT_CHECKPOINTS)
    for statement in _V5_AUDIT_INDEXES:
        conn.execute(text(statement))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "a patient is PatientID + IssuerOfPatientID; studies keep their own copy", _to_v2),
    Migration(3, "access policy roles, referrer physician links, shared studies", _to_v3),
    Migration(4, "web sessions, API tokens, second factors", _to_v4),
    Migration(5, "one audit chain per node; pattern indexes on PostgreSQL", _to_v5),
)
assert [m.version for m in MIGRATIONS] == list(range(2, s.SCHEMA_VERSION + 1))


# -- the driver ---------------------------------------------------------------------------


def stored_version(conn: Connection, *, lock: bool = False) -> int | None:
    """The index's schema version; None for an empty database.

    An index with tables but no recorded version is schema 1 (whose ``create`` wrote
    the version after the tables). With *lock*, the version row is locked for the
    rest of the transaction where the database supports it (PostgreSQL).
    Raises :class:`SchemaError` when the recorded version is not a number.
    """
    inspector = inspect(conn)
    value = None
    if inspector.has_table(s.settings_kv.name):
        query = select(s.settings_kv.c.value).where(s.settings_kv.c.key == SCHEMA_KEY)
        value = conn.scalar(query.with_for_update() if lock else query)
    if value is None:
        return 1 if inspector.has_table(s.patients.name) else None
    try:
        return int(value)
    except ValueError:
        raise SchemaError("the index's schema version is unreadable") from None


def is_current(version: int | None) -> bool:
    """True when *version* is current; raises :class:`SchemaTooNew` when above ours."""
    if version is not None and version > s.SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the index has schema version {version}, newer than this pacsvault "
            f"({__version__}, schema {s.SCHEMA_VERSION}) supports: run the release that "
            "upgraded it, or restore the index from a backup made before that upgrade"
        )
    return version == s.SCHEMA_VERSION


def _set_version(conn: Connection, version: int) -> None:
    kv = s.settings_kv
    done = conn.execute(
        update(kv).where(kv.c.key == SCHEMA_KEY).values(value=str(version))
    ).rowcount
    if not done:
        conn.execute(insert(kv).values(key=SCHEMA_KEY, value=str(version)))


def step(conn: Connection) -> bool:
    """Bring the index one step towards :data:`SCHEMA_VERSION` in *conn*'s transaction.

    An empty database gets every table at the latest version at once; an older
    schema gets the next migration (logged at INFO). Returns True when something was
    done and another step follows, False when the schema is now current. Raises
    :class:`SchemaTooNew` for an index written by newer code, :class:`SchemaError` for
    a version no migration starts from.
    """
    version = stored_version(conn, lock=True)
    if is_current(version):
        return False
    if version is None:
        s.metadata.create_all(conn)
        _set_version(conn, s.SCHEMA_VERSION)
        return False
    migration = next((m for m in MIGRATIONS if m.version == version + 1), None)
    if migration is None:
        raise SchemaError(f"the index has schema version {version}, which no release made")
    log.info(
        "upgrading the index schema from version %d to %d: %s",
        version,
        migration.version,
        migration.summary,
    )
    migration.apply(conn)
    _set_version(conn, migration.version)
    return migration.version < s.SCHEMA_VERSION
