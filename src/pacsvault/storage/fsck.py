"""Does the blob store hold exactly what the index says, byte for byte?

Ingest fsyncs the blob, then commits its index row: a crash in between leaves an
*orphan* (a blob no row references). Disks, operators and restores can cause the
other problems: a row whose blob is *missing*, a blob whose size or dataset
SHA-256 differs from the row. :func:`check` finds them all (the quick mode looks
at existence and sizes only, no hashing); :func:`repair` moves orphans to a
quarantine and touches nothing else. Both take an :class:`Index` and a
:class:`FileBlobStore` and print nothing: the command line and ``serve`` report.

Problems name blob keys only (fan-out directories and a SOP Instance UID), never
patient data.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select

from pacsvault.dicom.part10 import NotDicom, split_part10
from pacsvault.storage import schema as s
from pacsvault.storage.blobstore import FileBlobStore
from pacsvault.storage.index import Index

#: Bytes read at a time while hashing.
READ_CHUNK = 1 << 20
#: The file meta information must end within this many bytes (ours takes a few hundred).
HEAD_LIMIT = 1 << 16
#: Index rows read per query (each query is its own short read transaction).
ROW_BATCH = 1000
#: Keys per ``IN (...)`` lookup when re-checking orphans against the index.
KEY_BATCH = 500
#: An orphan written less than this many seconds ago is not quarantined: its index
#: row may be about to commit (an ingest in progress).
REPAIR_MIN_AGE = 60.0


class Kind(StrEnum):
    """What is wrong with one blob key."""

    ORPHAN = "orphan"  # a blob no index row references
    MISSING = "missing"  # an index row whose blob is absent
    SIZE = "size mismatch"  # the blob's size differs from the row's
    SHA256 = "sha256 mismatch"  # the dataset bytes differ from the row's digest (full mode)
    UNREADABLE = "unreadable"  # the blob cannot be read, or its file meta information


@dataclass(frozen=True)
class Problem:
    """One problem; ``detail`` holds sizes or error names only, never file contents."""

    kind: Kind
    key: str
    detail: str = ""


@dataclass
class Report:
    """The outcome of one :func:`check`: what was looked at and every problem found."""

    quick: bool
    rows: int = 0  # index rows checked
    blobs: int = 0  # objects found in the store
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the store and the index agree."""
        return not self.problems

    def count(self, kind: Kind) -> int:
        """How many problems of *kind* were found."""
        return sum(1 for p in self.problems if p.kind is kind)

    def keys(self, kind: Kind) -> list[str]:
        """The blob keys with a problem of *kind*, in the order found."""
        return [p.key for p in self.problems if p.kind is kind]

    def counts(self) -> str:
        """Every kind with its count, e.g. ``orphans=1 missing=0 ...`` (for logs and audit)."""
        names = {Kind.ORPHAN: "orphans", Kind.MISSING: "missing", Kind.SIZE: "size",
                 Kind.SHA256: "sha256", Kind.UNREADABLE: "unreadable"}  # fmt: skip
        return " ".join(f"{names[k]}={self.count(k)}" for k in Kind)

    def summary(self) -> str:
        """One line: the mode, what was checked and the counts."""
        mode = "quick" if self.quick else "full"
        return f"{mode} check of {self.rows} index rows and {self.blobs} blobs: {self.counts()}"


def check(index: Index, blobs: FileBlobStore, *, quick: bool = False) -> Report:
    """Compare every index row with its blob, then list blobs no row references.

    Full mode hashes each referenced blob's dataset (streamed, never a whole file in
    memory); *quick* checks existence and size only. Each key gets at most one
    problem, the first of missing, unreadable, size, sha256. Memory grows with the
    number of index rows (the set of referenced keys). Safe while a server ingests:
    rows are read in short transactions, and a blob whose row commits during the
    run is looked up again before it is called an orphan.
    """
    report = Report(quick)
    referenced: set[str] = set()
    for key, size, sha256 in _indexed(index):
        report.rows += 1
        referenced.add(key)
        problem = check_blob(blobs, key, size, None if quick else sha256)
        if problem is not None:
            report.problems.append(problem)
    candidates = []
    for key in blobs.keys():  # noqa: SIM118 (a store, not a dict)
        report.blobs += 1
        if key not in referenced:
            candidates.append(key)
    late = _referenced(index, candidates)
    report.problems += [Problem(Kind.ORPHAN, k) for k in candidates if k not in late]
    return report


def check_blob(blobs: FileBlobStore, key: str, size: int, sha256: str | None) -> Problem | None:
    """The problem of the blob an index row describes, or None; no hashing when *sha256* is None."""
    try:
        actual = blobs.size(key)
    except FileNotFoundError:
        return Problem(Kind.MISSING, key)
    except ValueError:
        return Problem(Kind.UNREADABLE, key, "invalid blob key")
    except OSError as exc:
        return Problem(Kind.UNREADABLE, key, _why(exc))
    if actual != size:
        return Problem(Kind.SIZE, key, f"index {size} bytes, blob {actual} bytes")
    if sha256 is None:
        return None
    try:
        digest = dataset_sha256(blobs, key)
    except FileNotFoundError:
        return Problem(Kind.MISSING, key)
    except NotDicom as exc:
        return Problem(Kind.UNREADABLE, key, str(exc))
    except OSError as exc:
        return Problem(Kind.UNREADABLE, key, _why(exc))
    if digest != sha256:
        return Problem(Kind.SHA256, key)
    return None


def dataset_sha256(blobs: FileBlobStore, key: str) -> str:
    """SHA-256 of a stored object's dataset: the bytes after its file meta information.

    The digest the Archive recorded at ingest. Reads in chunks of READ_CHUNK bytes.
    Raises NotDicom when the file meta information cannot be read, OSError when the
    blob cannot.
    """
    with blobs.open(key) as f:
        head = f.read(HEAD_LIMIT)
        _ts, offset = split_part10(head)
        if len(head) == HEAD_LIMIT and offset >= len(head):
            raise NotDicom("file meta information too long")
        digest = hashlib.sha256(head[offset:])
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Repair:
    """The outcome of one :func:`repair`."""

    batch: str  # the quarantine batch (a UTC timestamp)
    moved: list[tuple[str, str]] = field(default_factory=list)  # (key, where it went)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (key, why it stayed)


def repair(
    index: Index,
    blobs: FileBlobStore,
    report: Report,
    *,
    min_age: float = REPAIR_MIN_AGE,
    now: float | None = None,
) -> Repair:
    """Move the orphans of *report* to a new quarantine batch; change nothing else.

    Never moves a blob an index row references: right before moving, the orphans
    are looked up in the index again, and one written less than *min_age* seconds
    ago stays (its row may be about to commit). Missing and mismatched blobs are
    left as they are: only a backup or the sender can restore them.
    """
    now = time.time() if now is None else now
    result = Repair(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)))
    old_enough = []
    for key in report.keys(Kind.ORPHAN):
        try:
            age = now - blobs.modified(key)
        except OSError as exc:
            result.kept.append((key, _why(exc)))
            continue
        if age < min_age:
            result.kept.append((key, f"written {age:.0f} s ago, an ingest may be in progress"))
        else:
            old_enough.append(key)
    now_referenced = _referenced(index, old_enough)
    for key in old_enough:
        if key in now_referenced:
            result.kept.append((key, "an index row references it now"))
            continue
        try:
            result.moved.append((key, blobs.quarantine(key, result.batch)))
        except OSError as exc:
            result.kept.append((key, _why(exc)))
    return result


def _indexed(index: Index) -> Iterator[tuple[str, int, str]]:
    """(blob key, size, sha256) of every index row, read ROW_BATCH rows per transaction."""
    t = s.instances
    last = 0
    while True:
        stmt = (
            select(t.c.pk, t.c.blob_key, t.c.size, t.c.sha256)
            .where(t.c.pk > last)
            .order_by(t.c.pk)
            .limit(ROW_BATCH)
        )
        with index.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return
        for _pk, key, size, sha256 in rows:
            yield key, size, sha256
        last = rows[-1][0]


def _referenced(index: Index, keys: Iterable[str]) -> set[str]:
    """Those of *keys* that an index row references now."""
    wanted = list(keys)
    found: set[str] = set()
    with index.engine.connect() as conn:
        for i in range(0, len(wanted), KEY_BATCH):
            stmt = select(s.instances.c.blob_key).where(
                s.instances.c.blob_key.in_(wanted[i : i + KEY_BATCH])
            )
            found.update(conn.scalars(stmt))
    return found


def _why(exc: OSError) -> str:
    """An OS error as its name (e.g. ``PermissionError``): no paths, no contents."""
    return type(exc).__name__
