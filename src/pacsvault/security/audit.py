"""The audit trail's rules: what is recorded, and how records chain and are signed.

Pure definitions (no storage): actions and their DICOM event codes, outcomes, the
chain hash and the checkpoint statement; ``storage.audit`` writes the records. Each
record carries a sequence number, the previous record's hash and its own hash over
its content, and the chain head is kept beside them, so an edited, deleted,
inserted, reordered or truncated record is detectable. Signed checkpoints, the
genesis and the checkpoint log outside the index (``audit_log``) make a wiped or
rewritten trail detectable too; ``audit_verify`` holds those rules.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any


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
    AUDIT_CHAIN = "audit-chain"  # a node's audit chain began (recorded in the first chain)


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
    Action.AUDIT_CHAIN: "110113",
}

GENESIS_HASH = "0" * 64  # the prev_hash of record 1
GENESIS_SEQ = 0  # the genesis checkpoint's seq; its hash is a random trail id
HEAD_KEY = "audit_head"
ROOT_CHAIN = ""  # the site's first chain (the only one of a single-node site)


def head_key(chain: str) -> str:
    """The ``meta`` key holding *chain*'s head (``audit_head`` for the first chain)."""
    return HEAD_KEY if chain == ROOT_CHAIN else f"{HEAD_KEY}:{chain}"


def chain_announcement(chain: str, trail_id: str) -> str:
    """The detail of the record, in the first chain, that announces *chain*'s genesis."""
    return f"audit chain {chain} started, genesis {trail_id}"


def parse_announcement(detail: str | None) -> tuple[str, str] | None:
    """(chain, genesis trail id) of an announcement's detail, or None."""
    words = (detail or "").split()
    if len(words) == 6 and words[:2] + words[3:5] == ["audit", "chain", "started,", "genesis"]:
        return words[2], words[5]
    return None

#: The fields covered by a record's hash, in a fixed order.
HASHED_FIELDS = (
    "seq", "time", "event_code", "action", "outcome", "actor", "address",
    "study_uid", "patient_ref", "detail",
)  # fmt: skip


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The chain hash of a record: SHA-256 over the previous hash and the record's fields."""
    body = json.dumps([row.get(f) for f in HASHED_FIELDS], separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def checkpoint_statement(seq: int, digest: str, chain: str = ROOT_CHAIN) -> bytes:
    """What a checkpoint signature covers (a chain's name too, but for the first chain's)."""
    if chain == ROOT_CHAIN:
        return f"pacsvault-audit-checkpoint:{seq}:{digest}".encode()
    return f"pacsvault-audit-checkpoint:{chain}:{seq}:{digest}".encode()


class AuditUnavailable(Exception):
    """An audit record could not be written; the access it describes must not happen."""


class Outcome(StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    REFUSED = "refused"
    FAILURE = "failure"
