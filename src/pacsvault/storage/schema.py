"""The index schema, written once in SQLAlchemy Core so SQLite and PostgreSQL share it.

The query/retrieve tables are generated from :mod:`pacsvault.dicom.attributes`:
every indexed attribute is a text column (counts are integers), person names get
a case-folded twin column for case-insensitive matching.

A patient is PatientID + IssuerOfPatientID (an empty PatientID identifies nobody:
every such study gets a patient row of its own). Each study also keeps its own copy
of the patient-level attributes it was sent with (:data:`PATIENT_COPY`), so answers
below the patient level never show another study's name or birth date.

:data:`SCHEMA_VERSION` is the version this code creates; older indexes are brought
up to it by :mod:`pacsvault.storage.migrations`, which must be extended whenever
these tables change.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)

from pacsvault.dicom.attributes import ATTRIBUTES, PATIENT_ATTRIBUTES, IndexAttribute, Kind, Level

SCHEMA_VERSION = 5

# The patient-level attributes every study keeps a copy of (all but the derived counts).
PATIENT_COPY: list[IndexAttribute] = [a for a in PATIENT_ATTRIBUTES if not a.derived]

metadata = MetaData()


def fold_column(attr: IndexAttribute) -> str:
    """Name of the case-folded twin column of a person-name attribute."""
    return f"{attr.column}_fold"


def _attribute_columns(level: Level) -> list[Column]:
    """The columns of *level*'s own attributes.

    The unique key of each level is NOT NULL and indexed; it is unique except at the
    patient level, where PatientID identifies a patient only together with
    IssuerOfPatientID (see ``uq_patients_identity``), and not at all when empty.
    """
    cols: list[Column] = []
    for attr in ATTRIBUTES[level]:
        if attr.kind is Kind.COUNT:
            cols.append(Column(attr.column, Integer, nullable=False, default=0))
            continue
        unique = attr.unique and level is not Level.PATIENT
        cols.append(
            Column(attr.column, Text, nullable=not attr.unique, unique=unique, index=attr.unique)
        )
        if attr.kind is Kind.NAME:
            cols.append(Column(fold_column(attr), Text))
    return cols


def _patient_copy_columns() -> list[Column]:
    """A study's copy of the patient attributes it was sent with (same column names)."""
    cols: list[Column] = []
    for attr in PATIENT_COPY:
        cols.append(Column(attr.column, Text))
        if attr.kind is Kind.NAME:
            cols.append(Column(fold_column(attr), Text))
    return cols


patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    *_attribute_columns(Level.PATIENT),
    Column("charset", Text),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", ForeignKey("patients.pk"), nullable=False, index=True),
    *_attribute_columns(Level.STUDY),
    Column("charset", Text),
    Column("created_at", Float, nullable=False),
    *_patient_copy_columns(),  # last: migration 2 appended them with ALTER TABLE
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    *_attribute_columns(Level.SERIES),
    Column("charset", Text),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False, index=True),
    *_attribute_columns(Level.IMAGE),
    Column("charset", Text),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("source_aet", String(16)),
    Column("stored_at", Float, nullable=False),
)

LEVEL_TABLES: dict[Level, Table] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}

peers = Table(
    "peers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", Text, nullable=False),
    Column("port", Integer),
    Column("services", Text, nullable=False),
    Column("tls", String(16), nullable=False, default="optional"),
    Column("client_cert", Text, nullable=False, default="ca"),
    Column("user_identity", String(16), nullable=False, default="optional"),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(32), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("totp_secret", Text),  # base32 (RFC 6238); None: no second factor
)

# A referrer's links: the ReferringPhysicianName values whose studies it may read.
user_physicians = Table(
    "user_physicians",
    metadata,
    Column("user_name", String(64), ForeignKey("users.name", ondelete="CASCADE"), primary_key=True),
    Column("physician_key", Text, primary_key=True),  # case-folded, see physician_key()
    Column("physician", Text, nullable=False),  # as entered
    Column("created_at", Float, nullable=False),
)

# Studies shared with a user, until they expire.
shares = Table(
    "shares",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_instance_uid", String(64), nullable=False),
    Column(
        "user_name",
        String(64),
        ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),  # None: until revoked
    Column("created_by", Text, nullable=False),
)

# Browser sessions: the cookie's secret and the CSRF token are stored hashed.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column(
        "user_name",
        String(64),
        ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("csrf_hash", String(64), nullable=False),
    Column("address", Text),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),  # the absolute limit
)

# Bearer tokens for programs and viewers: shown once, stored hashed, revocable.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),  # public: names the token in lists
    Column(
        "user_name",
        String(64),
        ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("secret_hash", String(64), nullable=False),
    Column("scope", String(16), nullable=False),  # read | write | admin
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
    Column("created_by", Text, nullable=False),
)

lockout_failures = Table(
    "lockout_failures",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(128), nullable=False, index=True),
    Column("time", Float, nullable=False),
)

lockouts = Table(
    "lockouts",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("until", Float, nullable=False),
    Column("reason", Text, nullable=False),
)

# The audit trail: one hash chain per writing node (see storage.audit); "" is the
# site's first chain, the only one of a single-node site.
audit_events = Table(
    "audit_events",
    metadata,
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
    Column("chain", String(32), nullable=False, default="", server_default=""),
    UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("time", Float, nullable=False),
    Column("signature", Text, nullable=False),
    Column("chain", String(32), nullable=False, default="", server_default=""),
    PrimaryKeyConstraint("chain", "seq", name="pk_audit_checkpoints"),
)

settings_kv = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

EMPTY = literal_column("''")  # a literal, not a bound parameter: index expressions must match

# One patient row per PatientID + issuer; rows with an empty PatientID are never merged.
IDENTIFIED_PATIENT = patients.c.patient_id != EMPTY
Index(
    "uq_patients_identity",
    patients.c.patient_id,
    func.coalesce(patients.c.issuer_of_patient_id, EMPTY),
    unique=True,
    sqlite_where=IDENTIFIED_PATIENT,
    postgresql_where=IDENTIFIED_PATIENT,
)
Index("ix_studies_date", studies.c.study_date)
# Prefix matches (a DICOM wildcard "SMITH*" is LIKE 'smith%'): SQLite's indexes serve
# them (case_sensitive_like); PostgreSQL's serve LIKE only with text_pattern_ops unless
# the database's collation is C, and those still serve equality. Names are matched
# case-folded through their stored *_fold twins, so no lower() expression is needed.
Index("ix_patients_name_fold", patients.c.patient_name_fold,
      postgresql_ops={"patient_name_fold": "text_pattern_ops"})  # fmt: skip
Index("ix_studies_accession", studies.c.accession_number,
      postgresql_ops={"accession_number": "text_pattern_ops"})  # fmt: skip
Index("ix_studies_patient_id", studies.c.patient_id,
      postgresql_ops={"patient_id": "text_pattern_ops"})  # fmt: skip
Index("ix_studies_patient_name_fold", studies.c.patient_name_fold,
      postgresql_ops={"patient_name_fold": "text_pattern_ops"})  # fmt: skip
# PostgreSQL only: what SQLite answers well enough by scanning a single-node archive.
Index("ix_patients_patient_id_pattern", patients.c.patient_id,
      postgresql_ops={"patient_id": "text_pattern_ops"}).ddl_if(dialect="postgresql")  # fmt: skip
# The scope of a referrer (storage.index._scope_clause) matches this expression.
REFERRER_KEY = func.rtrim(studies.c.referring_physician_name_fold, literal_column("'^= '"))
Index("ix_studies_referrer_key", REFERRER_KEY).ddl_if(dialect="postgresql")
Index("ix_audit_time", audit_events.c.time)
