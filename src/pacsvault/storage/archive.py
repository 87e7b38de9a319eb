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

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from pacsvault.config import DuplicatePolicy
from pacsvault.dicom.attributes import IndexAttribute, Level, character_set, index_values
from pacsvault.dicom.matching import Condition
from pacsvault.dicom.part10 import NotDicom, file_header, parse_dataset
from pacsvault.dicom.uids import InvalidUID, require_uid
from pacsvault.security.audit import Action, AuditTrail, Outcome
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.audit_log import CheckpointLog
from pacsvault.security.identity import Actor
from pacsvault.security.secrets import Pseudonymizer
from pacsvault.storage.blobstore import BlobStore
from pacsvault.storage.index import Index, InstanceRecord, StoredInstance
from pacsvault.storage.writer import IndexWriter

log = logging.getLogger(__name__)


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
        *,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST,
        pseudonyms: Pseudonymizer,
        audit_signer: AuditSigner | None = None,
        checkpoint_every: int = 100,
        checkpoint_log: CheckpointLog | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.pseudonyms = pseudonyms
        self.writer = IndexWriter(index.engine)
        self.audit = AuditTrail(
            index,
            self.writer.submit,
            signer=audit_signer,
            checkpoint_every=checkpoint_every,
            checkpoint_log=checkpoint_log,
        )
        self._locks = [threading.Lock() for _ in range(self._LOCK_STRIPES)]

    def close(self) -> None:
        """Sign the audit head (a clean stop), then finish pending index writes."""
        self.audit.close()
        self.writer.stop()

    def _lock(self, sop_instance_uid: str) -> threading.Lock:
        return self._locks[hash(sop_instance_uid) % self._LOCK_STRIPES]

    # -- ingest ---------------------------------------------------------------------------

    def store(
        self,
        actor: Actor,
        dataset: bytes,
        transfer_syntax: str,
        *,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        action: Action = Action.STORE,
    ) -> StoreResult:
        """Store one dataset (bytes as received, without file meta) in *transfer_syntax*.

        Returns only once the object and its index row are durable, or with a refusal
        that stored nothing. Never raises for bad input.
        """
        result = self._store(
            actor, dataset, transfer_syntax, expected_sop_class, expected_sop_instance, action
        )
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
            )
        return result

    def _store(
        self,
        actor: Actor,
        data: bytes,
        transfer_syntax: str,
        expected_class: str | None,
        expected_instance: str | None,
        action: Action,
    ) -> StoreResult:
        try:
            transfer_syntax = require_uid(transfer_syntax.strip(), "Transfer Syntax UID")
            ds = parse_dataset(data, transfer_syntax)
            sop_class = require_uid(str(ds.get("SOPClassUID", "")).strip(), "SOP Class UID")
            sop_instance = require_uid(
                str(ds.get("SOPInstanceUID", "")).strip(), "SOP Instance UID"
            )
            study_uid = require_uid(
                str(ds.get("StudyInstanceUID", "")).strip(), "Study Instance UID"
            )
            series_uid = require_uid(
                str(ds.get("SeriesInstanceUID", "")).strip(), "Series Instance UID"
            )
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

        charset = character_set(ds)
        digest = hashlib.sha256(data).hexdigest()
        header = file_header(sop_class, sop_instance, transfer_syntax, actor.ae_title)
        record = InstanceRecord(
            patient=index_values(ds, Level.PATIENT),
            study=index_values(ds, Level.STUDY),
            series=index_values(ds, Level.SERIES),
            instance=index_values(ds, Level.IMAGE),
            charset=charset,
            transfer_syntax_uid=transfer_syntax,
            blob_key=blob_key(sop_instance),
            size=len(header) + len(data),
            sha256=digest,
            source_aet=actor.ae_title,
        )
        record.instance["sop_instance_uid"] = sop_instance
        record.instance["sop_class_uid"] = sop_class
        record.study["study_instance_uid"] = study_uid
        record.series["series_instance_uid"] = series_uid

        def ok(status: StoreStatus, reason: str = "") -> StoreResult:
            return StoreResult(status, reason, sop_instance, study_uid)

        with self._lock(sop_instance):
            with self.index.engine.connect() as conn:
                existing = self.index.find_instance(conn, sop_instance)
            replacing = False
            if existing is not None:
                if existing.sha256 == digest:
                    return ok(StoreStatus.IDENTICAL_DUPLICATE)
                if self.duplicate_policy is DuplicatePolicy.KEEP_FIRST:
                    return ok(StoreStatus.DUPLICATE_KEPT_FIRST, "the first copy was kept")
                if self.duplicate_policy is DuplicatePolicy.REJECT:
                    return ok(StoreStatus.DUPLICATE_REJECTED, "SOP Instance UID already stored")
                replacing = True
                record.blob_key = blob_key(sop_instance, digest[:16])
            try:
                self.blobs.put(record.blob_key, (header, data))
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
                # Another node stored the same SOP instance meanwhile: keep theirs.
                return ok(StoreStatus.DUPLICATE_KEPT_FIRST, "the first copy was kept")
            except Exception as exc:
                log.error("index write failed: %s", type(exc).__name__)
                if not replacing:
                    self.blobs.delete(record.blob_key)
                return ok(StoreStatus.OUT_OF_RESOURCES, "index unavailable")
            if replacing and existing is not None:
                self.blobs.delete(existing.blob_key)
        return ok(StoreStatus.REPLACED if replacing else StoreStatus.STORED)

    # -- query ----------------------------------------------------------------------------

    def find(
        self,
        actor: Actor,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        *,
        keys: Iterable[str] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[Mapping[str, Any]]:
        """Stream index rows of *level* matching *conditions*, after auditing the query.

        The audit record names the level and the keys used for matching, never their
        values (a name typed into a query is itself PHI).
        """
        used = ",".join(sorted({a.keyword for a, _ in conditions}))
        requested = ",".join(sorted(set(keys)))
        self.audit.record(
            Action.QUERY,
            Outcome.SUCCESS,
            actor,
            detail=f"level={level.value} matching={used or '-'} return={requested or '-'}",
        )
        return self.index.query(level, conditions, limit=limit, offset=offset)

    # -- retrieve -------------------------------------------------------------------------

    def locate(
        self,
        actor: Actor,
        level: Level,
        conditions: list[tuple[IndexAttribute, Condition]],
        *,
        destination: str | None = None,
    ) -> list[StoredInstance]:
        """The instances a retrieve at *level* selects; audits one record per study."""
        found = self.index.instances_for(level, conditions)
        per_study: dict[tuple[str, str], int] = {}
        for inst in found:
            key = (inst.study_instance_uid, inst.patient_id)
            per_study[key] = per_study.get(key, 0) + 1
        to = f" to {destination}" if destination else ""
        for (study_uid, patient_id), count in per_study.items():
            self.audit.record(
                Action.RETRIEVE,
                Outcome.SUCCESS,
                actor,
                study_uid=study_uid,
                patient_ref=self.pseudonyms.ref(patient_id),
                detail=f"{count} instances{to}",
            )
        return found

    def open(self, inst: StoredInstance) -> BinaryIO:
        """Open a stored instance's Part-10 file."""
        return self.blobs.open(inst.blob_key)

    def statistics(self) -> dict[str, int]:
        return self.index.statistics()
