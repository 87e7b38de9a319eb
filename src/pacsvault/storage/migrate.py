"""Moving an archive to another index and blob store (embedded -> PostgreSQL + S3), verifiably.

``pacsvault migrate --to-index URL --to-blobs URL`` (see ``cli/migrate.py``) runs
:func:`migrate_index` and then :func:`copy_blobs`:

*Index.* The target's schema is made current, then every table's rows are copied with
their keys in one transaction (so a failure leaves the target as it was), together with
a marker (``meta`` key ``migrated_from``) naming the source; PostgreSQL's key sequences
are moved past the copied keys. Every table is then compared, source with target: row
count and a SHA-256 over its rows in key order (values as JSON), so a row missing,
added or changed on either side fails the migration. The audit trail is copied like any
table: its chain, head, checkpoints and genesis are the same rows, so ``audit verify``
of the target passes against the same checkpoint log. A target that already holds data
is refused, unless it holds this source's marker (a previous run), in which case only
the comparison is made again: a source changed since (a server ran on it) fails it.

*Objects.* Every object the (target) index names is copied under the same key, hashed
while read from the source and read back from the target and hashed again; the two
hashes and the size the index records must agree. An object already in the target with
that size is read back and compared the same way, and copied again if it differs, so a
run that was interrupted (or a target object damaged) resumes where it was.

Objects the index does not name (``fsck`` orphans) are not copied. Nothing here writes
to the source but one audit record, before its index is copied (so the copy carries it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Table, delete, func, insert, select, text

from pacsvault.storage import schema as s
from pacsvault.storage.blobstore import BlobStore
from pacsvault.storage.index import Index

log = logging.getLogger(__name__)

MARKER_KEY = "migrated_from"
CHUNK = 1000
READ_SIZE = 1024 * 1024


class MigrationError(Exception):
    """The migration cannot go on; the message says why (never a password)."""


@dataclass
class TableCheck:
    name: str
    rows: int
    digest: str


@dataclass
class IndexReport:
    copied: bool  # False: a previous run had copied it; only compared now
    tables: list[TableCheck] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


@dataclass
class BlobReport:
    objects: int = 0
    copied: int = 0
    already: int = 0  # found in the target, verified
    recopied: int = 0  # found in the target, different: copied again
    bytes: int = 0


def _tables() -> list[Table]:
    return list(s.metadata.sorted_tables)


def _rows(conn: Connection, table: Table) -> Iterator[dict[str, Any]]:
    """*table*'s rows in primary key order (``meta`` without the migration marker)."""
    stmt = select(table).order_by(*table.primary_key.columns)
    if table is s.settings_kv:
        stmt = stmt.where(table.c.key != MARKER_KEY)
    result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(stmt)
    for row in result.mappings():
        yield dict(row)


def table_check(conn: Connection, table: Table) -> TableCheck:
    """Row count and SHA-256 of *table* (rows in key order, values as JSON)."""
    digest = hashlib.sha256()
    n = 0
    for row in _rows(conn, table):
        digest.update(json.dumps([row[c.name] for c in table.c], default=str).encode())
        digest.update(b"\n")
        n += 1
    return TableCheck(table.name, n, digest.hexdigest())


def _copy_table(src: Connection, dst: Connection, table: Table) -> None:
    batch: list[dict[str, Any]] = []
    if table is s.settings_kv:  # the target's own schema version row is the same value
        dst.execute(delete(table).where(table.c.key != MARKER_KEY))
    for row in _rows(src, table):
        batch.append(row)
        if len(batch) >= CHUNK:
            dst.execute(insert(table), batch)
            batch = []
    if batch:
        dst.execute(insert(table), batch)
    if dst.dialect.name == "postgresql":
        for col in table.primary_key.columns:
            if isinstance(col.type, Integer) and col.autoincrement in (True, "auto"):
                dst.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                    f"(SELECT coalesce(max({col.name}), 0) + 1 FROM {table.name}), false)"
                ))  # fmt: skip


def _holds_data(conn: Connection) -> bool:
    for table in _tables():
        stmt = select(func.count()).select_from(table)
        if table is s.settings_kv:
            stmt = stmt.where(table.c.key != "schema")
        if conn.scalar(stmt):
            return True
    return False


def source_id(conn: Connection) -> str:
    """What names a source in the marker: its audit trail's genesis (a random id)."""
    genesis = conn.scalar(
        select(s.audit_checkpoints.c.hash).where(
            s.audit_checkpoints.c.chain == "", s.audit_checkpoints.c.seq == 0
        )
    )
    return f"trail {genesis or 'without genesis'}"


def migrate_index(
    source: Engine, target: Index, before_copy: Callable[[], None] = lambda: None
) -> IndexReport:
    """Copy every table of *source* into *target* (see the module docstring) and compare.

    *before_copy* runs once, only when the copy is made (not on a resumed run), right
    before the source is read: the caller's last write to the source (its audit record).
    """
    target.create()
    kv = s.settings_kv
    with source.connect() as src:
        wanted = source_id(src)
    with target.engine.connect() as dst:
        marker = dst.scalar(select(kv.c.value).where(kv.c.key == MARKER_KEY))
        if marker is None and _holds_data(dst):
            raise MigrationError("the target index already holds data: migrate into an "
                                 "empty database")  # fmt: skip
    if marker is not None and marker != wanted:
        raise MigrationError("the target index was migrated from another archive")
    copied = marker is None
    if copied:
        before_copy()
        with source.connect() as src, target.engine.begin() as dst:
            src_tx = src.begin()  # one consistent read of the source
            for table in _tables():
                _copy_table(src, dst, table)
                log.info("copied table %s", table.name)
            dst.execute(insert(kv).values(key=MARKER_KEY, value=wanted))
            src_tx.rollback()
    report = IndexReport(copied)
    with source.connect() as src, target.engine.connect() as dst:
        for table in _tables():
            mine, theirs = table_check(src, table), table_check(dst, table)
            if mine != theirs:
                raise MigrationError(
                    f"table {table.name} differs between source and target ({mine.rows} and "
                    f"{theirs.rows} rows): "
                    + ("the copy is wrong" if copied else "the source changed since it was "
                       "copied (did a server run on it?); migrate again into an empty database")
                )  # fmt: skip
            report.tables.append(mine)
    return report


def _hash_stream(stream: Any, sink: Callable[[bytes], None] | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        while chunk := stream.read(READ_SIZE):
            digest.update(chunk)
            size += len(chunk)
            if sink is not None:
                sink(chunk)
    finally:
        stream.close()
    return digest.hexdigest(), size


def _copy_object(source: BlobStore, target: BlobStore, key: str) -> tuple[str, int]:
    """Put *key*'s bytes from *source* into *target*; (sha256, size) of what was read."""
    digest, size = hashlib.sha256(), 0

    def parts() -> Iterator[bytes]:
        nonlocal size
        stream = source.open(key)
        try:
            while chunk := stream.read(READ_SIZE):
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        finally:
            stream.close()

    target.put(key, parts())
    return digest.hexdigest(), size


def copy_blobs(
    index: Index,
    source: BlobStore,
    target: BlobStore,
    progress: Callable[[BlobReport], None] = lambda _r: None,
) -> BlobReport:
    """Copy every object *index* names from *source* to *target*, each verified (see the
    module docstring). Raises :class:`MigrationError` when an object cannot be made equal."""
    report = BlobReport()
    stmt = select(s.instances.c.blob_key).order_by(s.instances.c.pk)
    with index.engine.connect() as conn:
        keys = list(conn.scalars(stmt))
    for key in keys:
        report.objects += 1
        try:
            want, size = _hash_stream(source.open(key))
        except FileNotFoundError:
            raise MigrationError(f"object {key} is missing from the source (run fsck)") from None
        if target.exists(key):
            got, got_size = _hash_stream(target.open(key))
            if (got, got_size) == (want, size):
                report.already += 1
                report.bytes += size
                progress(report)
                continue
            report.recopied += 1
        else:
            report.copied += 1
        sent, sent_size = _copy_object(source, target, key)
        got, got_size = _hash_stream(target.open(key))
        if not (sent == got == want and sent_size == got_size == size):
            raise MigrationError(f"object {key} differs after copying it (source changed, or "
                                 "the target stores it wrong)")  # fmt: skip
        report.bytes += size
        progress(report)
    return report
