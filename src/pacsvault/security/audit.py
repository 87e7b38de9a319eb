"""The audit trail: one row per access or refusal, never with patient data in clear.

Records go into the index, in the same transaction as the change they describe
when there is one (a store), so a stored instance never lacks its audit record.
The trail is a hash chain: each record carries a sequence number, the previous
record's hash and its own hash over its content, and the chain head is kept in
the ``meta`` table, so an edited, deleted, inserted, reordered or truncated
record is detectable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert, select, update

from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.identity import Actor
from pacsvault.storage import schema as s
from pacsvault.storage.index import Index, write_transaction

log = logging.getLogger("pacsvault.audit")


class Action(StrEnum):
    """What was done; each maps to a DICOM audit event ID (DCM 110100-110114)."""

    APPLICATION_START = "application-start"
    APPLICATION_STOP = "application-stop"
    ASSOCIATION = "association"
    LOGIN = "login"
    ECHO = "echo"
    STORE = "store"
    IMPORT = "import"
    QUERY = "query"
    RETRIEVE = "retrieve"
    VIEW = "view"
    EXPORT = "export"
    DELETE = "delete"
    PEER_CHANGE = "peer-change"
    USER_CHANGE = "user-change"
    SETTINGS_CHANGE = "settings-change"
    LOCKOUT = "lockout"
    AUDIT_USE = "audit-use"
    FSCK = "fsck"


#: DICOM audit event IDs (PS3.16 CID 400 "Audit Event ID").
EVENT_CODES: dict[Action, str] = {
    Action.APPLICATION_START: "110100",  # Application Activity
    Action.APPLICATION_STOP: "110100",
    Action.ASSOCIATION: "110114",  # User Authentication
    Action.LOGIN: "110114",
    Action.ECHO: "110114",
    Action.STORE: "110104",  # DICOM Instances Transferred
    Action.IMPORT: "110107",  # Import
    Action.QUERY: "110112",  # Query
    Action.RETRIEVE: "110104",
    Action.VIEW: "110103",  # DICOM Instances Accessed
    Action.EXPORT: "110106",  # Export
    Action.DELETE: "110105",  # DICOM Study Deleted
    Action.PEER_CHANGE: "110113",  # Security Alert
    Action.USER_CHANGE: "110113",
    Action.SETTINGS_CHANGE: "110113",
    Action.LOCKOUT: "110113",
    Action.AUDIT_USE: "110101",  # Audit Log Used
    Action.FSCK: "110113",  # Security Alert (integrity of the stored objects)
}

GENESIS_HASH = "0" * 64
HEAD_KEY = "audit_head"

#: The fields covered by a record's hash, in a fixed order.
HASHED_FIELDS = (
    "seq", "time", "event_code", "action", "outcome", "actor", "address",
    "study_uid", "patient_ref", "detail",
)  # fmt: skip


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The chain hash of a record: SHA-256 over the previous hash and the record's fields."""
    body = json.dumps([row.get(f) for f in HASHED_FIELDS], separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def checkpoint_statement(seq: int, digest: str) -> bytes:
    """What a checkpoint signature covers."""
    return f"pacsvault-audit-checkpoint:{seq}:{digest}".encode()


def read_head(conn: Connection) -> tuple[int, str]:
    """(sequence number, hash) of the last record; (0, genesis) for an empty trail."""
    value = conn.scalar(select(s.settings_kv.c.value).where(s.settings_kv.c.key == HEAD_KEY))
    if not value:
        return 0, GENESIS_HASH
    seq, _, digest = value.partition(":")
    return int(seq), digest


def _write_head(conn: Connection, seq: int, digest: str) -> None:
    value = f"{seq}:{digest}"
    updated = conn.execute(
        update(s.settings_kv).where(s.settings_kv.c.key == HEAD_KEY).values(value=value)
    ).rowcount
    if not updated:
        conn.execute(insert(s.settings_kv).values(key=HEAD_KEY, value=value))


class AuditUnavailable(Exception):
    """An audit record could not be written; the access it describes must not happen."""


class Outcome(StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    REFUSED = "refused"
    FAILURE = "failure"


Submit = Callable[[Callable[[Connection], Any]], Any]


class AuditTrail:
    """Writes audit rows, through the group-commit writer when one is running."""

    def __init__(
        self,
        index: Index,
        submit: Submit | None = None,
        *,
        signer: AuditSigner | None = None,
        checkpoint_every: int = 100,
    ) -> None:
        self.index = index
        self._submit = submit
        self.signer = signer
        self.checkpoint_every = checkpoint_every

    def row(
        self,
        action: Action,
        outcome: Outcome,
        actor: Actor | None,
        *,
        study_uid: str | None = None,
        patient_ref: str | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """The row for one event (to insert in a caller's own transaction)."""
        return {
            "time": time.time(),
            "event_code": EVENT_CODES[action],
            "action": action.value,
            "outcome": outcome.value,
            "actor": f"{actor.kind}:{actor.name}" if actor else None,
            "address": actor.address if actor else None,
            "study_uid": study_uid,
            "patient_ref": patient_ref,
            "detail": detail,
        }

    def insert(self, conn: Connection, row: dict[str, Any]) -> None:
        """Append *row* to the chain inside the caller's write transaction.

        The transaction must hold the write lock (see ``write_transaction``) so two
        writers never extend the chain from the same head.
        """
        if conn.dialect.name == "postgresql":
            conn.execute(
                select(s.settings_kv.c.value)
                .where(s.settings_kv.c.key == HEAD_KEY)
                .with_for_update()
            )
        seq, prev = read_head(conn)
        row = {**row, "seq": seq + 1, "prev_hash": prev}
        row["hash"] = record_hash(prev, row)
        conn.execute(insert(s.audit_events).values(**row))
        _write_head(conn, row["seq"], row["hash"])
        if self.signer is not None and row["seq"] % self.checkpoint_every == 0:
            self._checkpoint(conn, row["seq"], row["hash"])

    def _checkpoint(self, conn: Connection, seq: int, digest: str) -> None:
        assert self.signer is not None
        exists_already = conn.scalar(
            select(s.audit_checkpoints.c.seq).where(s.audit_checkpoints.c.seq == seq)
        )
        if exists_already is None:
            conn.execute(
                insert(s.audit_checkpoints).values(
                    seq=seq,
                    hash=digest,
                    time=time.time(),
                    signature=self.signer.sign(checkpoint_statement(seq, digest)),
                )
            )

    def checkpoint(self) -> None:
        """Sign the current head now (at shutdown), so a truncated tail is detectable."""
        if self.signer is None:
            return

        def op(conn: Connection) -> None:
            seq, digest = read_head(conn)
            if seq:
                self._checkpoint(conn, seq, digest)

        if self._submit is not None:
            self._submit(op)
        else:
            with write_transaction(self.index.engine) as conn:
                op(conn)

    def record(
        self,
        action: Action,
        outcome: Outcome,
        actor: Actor | None,
        *,
        study_uid: str | None = None,
        patient_ref: str | None = None,
        detail: str | None = None,
        best_effort: bool = False,
    ) -> None:
        """Record one event durably.

        Raises :class:`AuditUnavailable` when the record cannot be written, so that no
        access happens unrecorded: the caller refuses what it was about to do. With
        *best_effort* (for refusals, which give nothing away) a failure is only logged.
        """
        row = self.row(
            action, outcome, actor, study_uid=study_uid, patient_ref=patient_ref, detail=detail
        )
        try:
            if self._submit is not None:
                self._submit(lambda conn: self.insert(conn, row))
            else:
                with write_transaction(self.index.engine) as conn:
                    self.insert(conn, row)
        except Exception as exc:
            log.error("could not write audit record (%s): %s", action.value, type(exc).__name__)
            if not best_effort:
                raise AuditUnavailable(f"audit trail unavailable ({type(exc).__name__})") from None
