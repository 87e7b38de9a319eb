"""The Archive: ingest, query and retrieve over one index and one blob store.

Every call takes the acting identity and writes its own audit record, so no
front door (DIMSE, HTTP, the import command) can forget to. Ingest is durable
before it returns success: the file and its directory are fsynced, then the
index row and the audit row commit together (group commit across associations).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, BinaryIO

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pacsvault.config import DuplicatePolicy
from pacsvault.dicom import status as st
from pacsvault.dicom.attributes import IndexAttribute, Level, character_set, index_values
from pacsvault.dicom.matching import Condition
from pacsvault.dicom.part10 import (
    NotDicom,
    TooLarge,
    check_complete,
    file_header,
    inflated_size,
    inflating,
    read_index_dataset,
)
from pacsvault.dicom.uids import InvalidUID, is_safe_uid, is_valid_uid, require_uid
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Actor, Permission, Principal
from pacsvault.security.policy import AccessPolicy, NotPermitted
from pacsvault.security.secrets import Pseudonymizer
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.blobstore import BlobStore, StagedBlob
from pacsvault.storage.index import Index, InstanceRecord, StoredInstance
from pacsvault.storage.writer import IndexWriter

log = logging.getLogger(__name__)

DEFAULT_MAX_OBJECT_SIZE = 4 * 1024**3


class StoreStatus(Enum):
    """The outcome of one ingest, before any protocol maps it to a status code."""

    STORED = "stored"
    IDENTICAL_DUPLICATE = "identical duplicate"  # same bytes already stored: success
    DUPLICATE_KEPT_FIRST = "duplicate kept first"  # warning
    REPLACED = "replaced"
    DUPLICATE_REJECTED = "duplicate rejected"
    INVALID = "invalid"  # unreadable dataset or bad UIDs
    MISMATCH = "mismatch"  # SOP class/instance differ from the request
    OUT_OF_RESOURCES = "out of resources"  # disk full, index unavailable
    TOO_LARGE = "too large"  # above storage.max_object_size
    NOT_PERMITTED = "not permitted"  # the caller may not store

    @property
    def ok(self) -> bool:
        """True when the object is (now) stored."""
        return self in (StoreStatus.STORED, StoreStatus.IDENTICAL_DUPLICATE, StoreStatus.REPLACED)


@dataclass(frozen=True)
class StoreResult:
    """What happened to one object. ``reason`` is safe to show a peer: it has no PHI."""

    status: StoreStatus
    reason: str = ""
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None

    def dicom_status(self) -> tuple[int, str | None]:
        """The DICOM status (C-STORE response, STOW-RS reason) and its comment (no PHI)."""
        code = STORE_STATUS[self.status]
        return code, (self.reason or None) if code != st.SUCCESS else None


#: The DICOM status for each outcome of a store.
STORE_STATUS = {
    StoreStatus.STORED: st.SUCCESS,
    StoreStatus.IDENTICAL_DUPLICATE: st.SUCCESS,
    StoreStatus.REPLACED: st.SUCCESS,
    StoreStatus.DUPLICATE_KEPT_FIRST: st.ELEMENTS_DISCARDED,
    StoreStatus.DUPLICATE_REJECTED: st.DUPLICATE_SOP_INSTANCE,
    StoreStatus.INVALID: st.CANNOT_UNDERSTAND,
    StoreStatus.MISMATCH: st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    StoreStatus.OUT_OF_RESOURCES: st.OUT_OF_RESOURCES,
    StoreStatus.TOO_LARGE: st.OUT_OF_RESOURCES,
    StoreStatus.NOT_PERMITTED: st.REFUSED_NOT_AUTHORIZED,
}


class Incoming:
    """A dataset arriving in pieces, written straight into the blob store's staging area.

    Counts its size and SHA-256 (of the dataset bytes, after any file meta header) as it
    goes. Past *limit* bytes it stops writing and only remembers that it was too large,
    so an endless sender costs no memory and no disk.
    """

    def __init__(self, staged: StagedBlob, header: bytes, limit: int) -> None:
        self.staged = staged
        self.header = header
        self.header_length = len(header)
        self.limit = limit
        self.dataset_size = 0
        self.too_large = False
        self._sha = hashlib.sha256()
        self._open = True
        if header:
            staged.write(header)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.too_large:
            return
        if self.limit and self.dataset_size + len(data) > self.limit:
            self.too_large = True
            self.discard()
            return
        self.staged.write(data)
        self._sha.update(data)
        self.dataset_size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def discard(self) -> None:
        """Drop what was staged (after a successful commit this is a no-op)."""
        if self._open:
            self._open = False
            self.staged.discard()


#: Per (study UID, patient ID): completed, failed and warning sub-operations.
RetrieveOutcome = dict[tuple[str, str], tuple[int, int, int]]


def _uid_text(ds: Dataset, keyword: str) -> str:
    """A UID element's value as received, without its padding ('' when absent).

    Read from the raw bytes where possible: pydicom strips all whitespace from UIDs,
    and a newline in a UID is not padding but a reason to refuse the object.
    UI values are padded with NUL; spaces are tolerated.
    """
    tag = tag_for_keyword(keyword)
    elem = ds.get_item(tag) if tag is not None and tag in ds else None
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    else:
        text = str(value if value is not None else "")
    return text.strip(" \x00")


def blob_key(sop_instance_uid: str, variant: str | None = None) -> str:
    """The blob key of an instance: two hashed fan-out levels, then the validated UID."""
    h = hashlib.sha256(sop_instance_uid.encode()).hexdigest()
    name = f"{sop_instance_uid}.{variant}.dcm" if variant else f"{sop_instance_uid}.dcm"
    return f"{h[:2]}/{h[2:4]}/{name}"


class Archive:
    """Ingest, query and retrieve, each audited, over an :class:`Index` and a blob store."""

    _LOCK_STRIPES = 64

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        audit: AuditTrail,
        writer: IndexWriter,
        policy: AccessPolicy,
        *,
        pseudonyms: Pseudonymizer,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.audit = audit
        self.writer = writer
        self.policy = policy
        self.pseudonyms = pseudonyms
        self.duplicate_policy = duplicate_policy
        self.max_object_size = max_object_size
        self._locks = [threading.Lock() for _ in range(self._LOCK_STRIPES)]

    def _lock(self, sop_instance_uid: str) -> threading.Lock:
        return self._locks[hash(sop_instance_uid) % self._LOCK_STRIPES]

    # -- ingest ---------------------------------------------------------------------------

    def receive(
        self,
        principal: Principal,
        transfer_syntax: str,
        *,
        sop_class: str | None = None,
        sop_instance: str | None = None,
    ) -> Incoming:
        """Start receiving one dataset in *transfer_syntax* into the blob store's staging area.

        When the request names safe SOP Class and Instance UIDs (a C-STORE does), the
        file meta header is written first, so the received bytes become the stored file
        without a second copy. Feed the dataset with :meth:`Incoming.write`, then call
        :meth:`store_incoming` (or :meth:`Incoming.discard`).
        """
        header = b""
        if is_safe_uid(sop_class) and is_safe_uid(sop_instance) and is_safe_uid(transfer_syntax):
            aet = principal.actor.ae_title
            header = file_header(sop_class, sop_instance, transfer_syntax, aet)  # type: ignore[arg-type]
        return Incoming(self.blobs.stage(), header, self.max_object_size)

    def store(
        self,
        principal: Principal,
        dataset: bytes,
        transfer_syntax: str,
        *,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        action: Action = Action.STORE,
    ) -> StoreResult:
        """Store one dataset held in memory (bytes without file meta) in *transfer_syntax*."""
        incoming = self.receive(principal, transfer_syntax)
        incoming.write(dataset)
        return self.store_incoming(
            principal,
            incoming,
            transfer_syntax,
            expected_sop_class=expected_sop_class,
            expected_sop_instance=expected_sop_instance,
            action=action,
        )

    def store_incoming(
        self,
        principal: Principal,
        incoming: Incoming,
        transfer_syntax: str,
        *,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        expected_study: str | None = None,
        action: Action = Action.STORE,
    ) -> StoreResult:
        """Validate, index and publish a received dataset.

        The *expected_* UIDs are what the request named (a C-STORE's affected SOP class
        and instance, a STOW-RS URL's study): a dataset that says otherwise is refused.

        Returns only once the object and its index row are durable, or with a refusal
        that kept nothing. Never raises for bad input; the staged data is always
        published or dropped.
        """
        actor = principal.actor
        try:
            if not self.policy.authorize(principal, Permission.STORE):
                result = StoreResult(StoreStatus.NOT_PERMITTED, "store not permitted")
            else:
                result = self._store(
                    actor, incoming, transfer_syntax, expected_sop_class, expected_sop_instance,
                    expected_study, action,
                )  # fmt: skip
        finally:
            incoming.discard()
        if result.status not in (StoreStatus.STORED, StoreStatus.REPLACED):
            # Stored ones were audited in the same transaction as their index row.
            outcome = (
                Outcome.WARNING
                if result.status
                in (StoreStatus.IDENTICAL_DUPLICATE, StoreStatus.DUPLICATE_KEPT_FIRST)
                else Outcome.REFUSED
            )
            self.audit.record(
                action,
                outcome,
                actor,
                study_uid=result.study_instance_uid,
                detail=f"{result.status.value}: {result.reason}".rstrip(": "),
                best_effort=True,
            )
        return result

    def _inspect(self, incoming: Incoming, ts: str) -> tuple[Dataset, int]:
        """Parse a received dataset for indexing: (index elements, bytes of group 0002 to drop).

        Raises NotDicom or TooLarge. A deflated dataset is inflated as a stream, under
        the size limit, and never written out inflated.
        """
        with incoming.staged.reader() as fp:
            fp.seek(incoming.header_length)
            if not UID(ts).is_deflated:
                end = incoming.header_length + incoming.dataset_size
                meta = check_complete(fp, end, ts)
                fp.seek(incoming.header_length)
                return read_index_dataset(fp, ts), meta
            # Three streaming passes, none holding more than a chunk: size, completeness,
            # then the index elements. A deflate bomb is stopped at the size limit.
            start = incoming.header_length
            size = inflated_size(fp, self.max_object_size)
            fp.seek(start)
            if check_complete(inflating(fp, self.max_object_size), size, ts):
                raise NotDicom("file meta elements inside a deflated dataset")
            fp.seek(start)
            return read_index_dataset(inflating(fp, self.max_object_size), ts), 0

    def _reframe(self, actor: Actor, incoming: Incoming, header: bytes, skip: int) -> Incoming:
        """A new staged object: *header*, then the received dataset without its first *skip*
        bytes (group 0002 elements a sender put in the dataset)."""
        out = Incoming(self.blobs.stage(), header, self.max_object_size)
        with incoming.staged.reader() as fp:
            fp.seek(incoming.header_length + skip)
            while chunk := fp.read(1 << 20):
                out.write(chunk)
        return out

    def _store(
        self,
        actor: Actor,
        incoming: Incoming,
        transfer_syntax: str,
        expected_class: str | None,
        expected_instance: str | None,
        expected_study: str | None,
        action: Action,
    ) -> StoreResult:
        if incoming.too_large:
            why = f"object larger than storage.max_object_size ({self.max_object_size} bytes)"
            return StoreResult(StoreStatus.TOO_LARGE, why)
        try:
            transfer_syntax = require_uid(transfer_syntax.strip(" \x00"), "Transfer Syntax UID")
            ds, group2 = self._inspect(incoming, transfer_syntax)
            sop_class = require_uid(_uid_text(ds, "SOPClassUID"), "SOP Class UID")
            sop_instance = require_uid(_uid_text(ds, "SOPInstanceUID"), "SOP Instance UID")
            study_uid = require_uid(_uid_text(ds, "StudyInstanceUID"), "Study Instance UID")
            series_uid = require_uid(_uid_text(ds, "SeriesInstanceUID"), "Series Instance UID")
        except TooLarge:
            why = f"inflated object larger than storage.max_object_size ({self.max_object_size})"
            return StoreResult(StoreStatus.TOO_LARGE, why)
        except (NotDicom, InvalidUID) as exc:
            return StoreResult(StoreStatus.INVALID, str(exc))
        if expected_class is not None and expected_class.strip() != sop_class:
            return StoreResult(
                StoreStatus.MISMATCH, "SOP Class UID differs from the request", None, study_uid
            )
        if expected_instance is not None and expected_instance.strip() != sop_instance:
            return StoreResult(
                StoreStatus.MISMATCH, "SOP Instance UID differs from the request", None, study_uid
            )
        if expected_study is not None and expected_study != study_uid:
            return StoreResult(
                StoreStatus.MISMATCH, "Study Instance UID differs from the request", None, study_uid
            )
        for what, uid in (("SOP Instance", sop_instance), ("Study", study_uid),
                          ("Series", series_uid), ("SOP Class", sop_class)):  # fmt: skip
            if not is_valid_uid(uid):
                log.info("accepted a non-conformant %s UID (leading zeros)", what)
        header = file_header(sop_class, sop_instance, transfer_syntax, actor.ae_title)
        if group2:
            log.info("dropped %d bytes of file meta elements sent inside a dataset", group2)
        if group2 or incoming.header != header:
            incoming = self._reframe(actor, incoming, header, group2)
        try:
            return self._commit(actor, incoming, ds, transfer_syntax, action, (
                sop_class, sop_instance, study_uid, series_uid))  # fmt: skip
        finally:
            incoming.discard()

    def _commit(
        self,
        actor: Actor,
        incoming: Incoming,
        ds: Dataset,
        transfer_syntax: str,
        action: Action,
        uids: tuple[str, str, str, str],
    ) -> StoreResult:
        sop_class, sop_instance, study_uid, series_uid = uids
        digest = incoming.sha256
        record = InstanceRecord(
            patient=index_values(ds, Level.PATIENT),
            study=index_values(ds, Level.STUDY),
            series=index_values(ds, Level.SERIES),
            instance=index_values(ds, Level.IMAGE),
            charset=character_set(ds),
            transfer_syntax_uid=transfer_syntax,
            blob_key=blob_key(sop_instance),
            size=incoming.staged.size,
            sha256=digest,
            source_aet=actor.ae_title,
        )
        record.instance["sop_instance_uid"] = sop_instance
        record.instance["sop_class_uid"] = sop_class
        record.study["study_instance_uid"] = study_uid
        record.series["series_instance_uid"] = series_uid

        def ok(status: StoreStatus, reason: str = "") -> StoreResult:
            return StoreResult(status, reason, sop_instance, study_uid, series_uid)

        with self._lock(sop_instance):
            existing = self.index.stored_copy(sop_instance)
            replacing = False
            if existing is not None:
                existing_sha, existing_key = existing
                if existing_sha == digest:
                    return ok(StoreStatus.IDENTICAL_DUPLICATE)
                if self.duplicate_policy is DuplicatePolicy.KEEP_FIRST:
                    return ok(StoreStatus.DUPLICATE_KEPT_FIRST, "the first copy was kept")
                if self.duplicate_policy is DuplicatePolicy.REJECT:
                    return ok(StoreStatus.DUPLICATE_REJECTED, "SOP Instance UID already stored")
                replacing = True
                record.blob_key = blob_key(sop_instance, digest[:16])
            try:
                self.blobs.commit(incoming.staged, record.blob_key)
            except OSError as exc:
                log.error("blob store write failed: %s", exc.strerror or type(exc).__name__)
                return ok(StoreStatus.OUT_OF_RESOURCES, "storage unavailable")
            audit_row = self.audit.row(
                action,
                Outcome.SUCCESS,
                actor,
                study_uid=study_uid,
                patient_ref=self.pseudonyms.ref(record.patient.get("patient_id") or ""),
                detail="replaced" if replacing else None,
            )

            def commit(conn: Connection) -> None:
                if replacing:
                    self.index.replace_instance(conn, record)
                else:
                    self.index.record_instance(conn, record)
                self.audit.insert(conn, audit_row)

            try:
                self.writer.submit(commit)
            except IntegrityError:
                if not replacing and self._stored_meanwhile(sop_instance):
                    # Another node stored the same SOP instance meanwhile: keep theirs.
                    return ok(StoreStatus.DUPLICATE_KEPT_FIRST, "the first copy was kept")
                log.error("index write failed: a constraint refused it")
                if not replacing:
                    self.blobs.delete(record.blob_key)
                return ok(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
            except Exception as exc:
                log.error("index write failed: %s", type(exc).__name__)
                if not replacing:
                    self.blobs.delete(record.blob_key)
                return ok(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
            if replacing and existing is not None:
                self.blobs.delete(existing_key)
        return ok(StoreStatus.REPLACED if replacing else StoreStatus.STORED)

    def _stored_meanwhile(self, sop_instance: str) -> bool:
        """True when another writer's row for *sop_instance* now exists (a lost race)."""
        try:
            return self.index.stored_copy(sop_instance) is not None
        except Exception:
            return False

    # -- query ----------------------------------------------------------------------------

    def find(
        self,
        principal: Principal,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        *,
        keys: Iterable[str] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[Mapping[str, Any]]:
        """Stream the rows of *level* matching *conditions* within the principal's scope,
        after auditing the query.

        Raises :class:`NotPermitted` (audited) without the query permission, and
        AuditUnavailable when the record cannot be written. The audit record names the
        level and the keys used for matching, never their values (a name typed into a
        query is itself PHI).
        """
        self._require(principal, Permission.QUERY, Action.QUERY)
        scope = self.policy.scope(principal)
        used = ",".join(sorted({a.keyword for a, _ in conditions}))
        requested = ",".join(sorted(set(keys)))
        self.audit.record(
            Action.QUERY,
            Outcome.SUCCESS,
            principal.actor,
            detail=f"level={level.value} matching={used or '-'} return={requested or '-'}",
        )
        return self.index.query(level, conditions, scope=scope, limit=limit, offset=offset)

    def _require(self, principal: Principal, permission: Permission, action: Action) -> None:
        if not self.policy.require(principal, permission, action):
            raise NotPermitted(f"{permission.value} not permitted")

    # -- retrieve -------------------------------------------------------------------------

    def retrieve(
        self,
        principal: Principal,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        *,
        destination: str | None = None,
    ) -> list[StoredInstance]:
        """The instances within the principal's scope that a retrieve at *level* selects;
        audits its start, one record per study.

        *destination* names the peer a C-MOVE sends to (it needs the move permission).
        Raises :class:`NotPermitted` (audited), and AuditUnavailable when the record
        cannot be written: no retrieve starts unrecorded.
        """
        permission = Permission.MOVE if destination else Permission.RETRIEVE
        to = f" to {destination}" if destination else ""
        return self._started(principal, permission, Action.RETRIEVE, level, conditions, to)

    def retrieved(
        self, principal: Principal, outcome: RetrieveOutcome, *, destination: str | None = None
    ) -> None:
        """Record what a retrieve actually sent, per study, when it ends."""
        to = f" to {destination}" if destination else ""
        self._ended(principal, Action.RETRIEVE, outcome, to)

    def export(
        self,
        principal: Principal,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        *,
        what: str,
    ) -> list[StoredInstance]:
        """Like :meth:`retrieve`, for a download or an export (*what*: its form, e.g.
        ``zip``): it needs the export permission and is audited as an export."""
        return self._started(principal, Permission.EXPORT, Action.EXPORT, level, conditions,
                             f" as {what}")  # fmt: skip

    def exported(self, principal: Principal, outcome: RetrieveOutcome, *, what: str) -> None:
        """Record what an export actually sent, per study, when it ends."""
        self._ended(principal, Action.EXPORT, outcome, f" as {what}")

    def _started(
        self,
        principal: Principal,
        permission: Permission,
        action: Action,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        suffix: str,
    ) -> list[StoredInstance]:
        self._require(principal, permission, action)
        found = self.index.instances_for(level, conditions, scope=self.policy.scope(principal))
        per_study: dict[tuple[str, str], int] = {}
        for inst in found:
            key = (inst.study_instance_uid, inst.patient_id)
            per_study[key] = per_study.get(key, 0) + 1
        for (study_uid, patient_id), count in per_study.items():
            self.audit.record(
                action,
                Outcome.SUCCESS,
                principal.actor,
                study_uid=study_uid,
                patient_ref=self.pseudonyms.ref(patient_id),
                detail=f"started: {count} instances{suffix}",
            )
        return found

    def _ended(
        self, principal: Principal, action: Action, outcome: RetrieveOutcome, suffix: str
    ) -> None:
        for (study_uid, patient_id), (completed, failed, warning) in outcome.items():
            self.audit.record(
                action,
                Outcome.SUCCESS if not failed else Outcome.WARNING,
                principal.actor,
                study_uid=study_uid,
                patient_ref=self.pseudonyms.ref(patient_id),
                detail=f"ended: completed {completed}, failed {failed}, warning {warning}{suffix}",
                best_effort=True,  # what it describes has happened; the start was recorded
                wait=False,  # so the answer's last byte does not wait for this commit
            )

    def open(self, principal: Principal, inst: StoredInstance) -> BinaryIO:
        """Open the Part-10 object of an instance :meth:`retrieve` gave *principal*.

        The retrieve audited the access and applied the scope; this only reads.
        """
        return self.blobs.open(inst.blob_key)

    def statistics(self) -> dict[str, int]:
        return self.index.statistics()
