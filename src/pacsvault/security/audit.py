"""The audit trail: one row per access or refusal, never with patient data in clear.

Records go into the index, in the same transaction as the change they describe
when there is one (a store), so a stored instance never lacks its audit record.
Issue 4 adds the hash chain, signed checkpoints and syslog forwarding on top of
this table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert

from pacsvault.security.identity import Actor
from pacsvault.storage import schema as s
from pacsvault.storage.index import Index

log = logging.getLogger("pacsvault.audit")


class Action(StrEnum):
    """What was done (mapped to DICOM audit event codes by the exporter)."""

    APPLICATION_START = "application-start"
    APPLICATION_STOP = "application-stop"
    ASSOCIATION = "association"
    ECHO = "echo"
    STORE = "store"
    IMPORT = "import"
    QUERY = "query"
    RETRIEVE = "retrieve"
    PEER_CHANGE = "peer-change"


class Outcome(StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    REFUSED = "refused"
    FAILURE = "failure"


Submit = Callable[[Callable[[Connection], Any]], Any]


class AuditTrail:
    """Writes audit rows, through the group-commit writer when one is running."""

    def __init__(self, index: Index, submit: Submit | None = None) -> None:
        self.index = index
        self._submit = submit

    def row(
        self,
        action: Action,
        outcome: Outcome,
        actor: Actor | None,
        *,
        study_uid: str | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """The row for one event (to insert in a caller's own transaction)."""
        return {
            "time": time.time(),
            "action": action.value,
            "outcome": outcome.value,
            "actor": f"{actor.kind}:{actor.name}" if actor else None,
            "address": actor.address if actor else None,
            "study_uid": study_uid,
            "detail": detail,
        }

    def insert(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(insert(s.audit_events).values(**row))

    def record(
        self,
        action: Action,
        outcome: Outcome,
        actor: Actor | None,
        *,
        study_uid: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record one event durably. Failures are logged, never raised to the caller."""
        row = self.row(action, outcome, actor, study_uid=study_uid, detail=detail)
        try:
            if self._submit is not None:
                self._submit(lambda conn: self.insert(conn, row))
            else:
                with self.index.engine.begin() as conn:
                    self.insert(conn, row)
        except Exception as exc:
            log.error("could not write audit record (%s): %s", action.value, type(exc).__name__)
