"""Checking the audit trail: every edit, deletion, insertion, reordering or truncation shows.

The chain is walked in storage order. Each record's hash must match its content
and the previous record's hash; sequence numbers must climb by one; the head in
``meta`` and every signed checkpoint must point at a record that is still there
with the same hash.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, select

from pacsvault.security.audit import GENESIS_HASH, checkpoint_statement, read_head, record_hash
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.storage import schema as s


@dataclass(frozen=True)
class Problem:
    """One place where the trail is not what was written."""

    seq: int
    time: float | None
    what: str

    def describe(self) -> str:
        when = dt.datetime.fromtimestamp(self.time, dt.UTC).isoformat() if self.time else "-"
        return f"seq {self.seq} ({when}): {self.what}"


@dataclass(frozen=True)
class Verdict:
    records: int
    checkpoints: int
    problems: list[Problem]

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(conn: Connection, signer: AuditSigner) -> Verdict:
    """Walk the whole chain and the checkpoints; report every inconsistency found."""
    rows = conn.execute(select(s.audit_events).order_by(s.audit_events.c.id)).mappings().all()
    problems: list[Problem] = []
    hashes: dict[int, str] = {}
    prev_seq, prev_hash = 0, GENESIS_HASH
    for row in rows:
        seq, t = row["seq"], row["time"]
        hashes[seq] = row["hash"]
        if record_hash(row["prev_hash"], dict(row)) != row["hash"]:
            problems.append(Problem(seq, t, "record modified: its content does not match its hash"))
        if seq <= prev_seq:
            problems.append(Problem(seq, t, f"out of order: comes after seq {prev_seq}"))
        elif seq > prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}-{seq - 1}"
            problems.append(Problem(seq, t, f"record(s) {missing} deleted before this one"))
        elif row["prev_hash"] != prev_hash:
            problems.append(
                Problem(seq, t, "chain broken: a record before this one was inserted or replaced")
            )
        prev_seq, prev_hash = max(prev_seq, seq), row["hash"]

    head_seq, head_hash = read_head(conn)
    last = rows[-1]["seq"] if rows else 0
    if head_seq > last:
        problems.append(
            Problem(head_seq, None, f"tail truncated: records {last + 1}-{head_seq} are missing")
        )
    elif head_seq and hashes.get(head_seq) != head_hash:
        problems.append(Problem(head_seq, None, "the chain head does not match the last record"))

    checkpoints = conn.execute(select(s.audit_checkpoints).order_by(s.audit_checkpoints.c.seq))
    n_checkpoints = 0
    for cp in checkpoints.mappings():
        n_checkpoints += 1
        seq = cp["seq"]
        if not signer.verify(checkpoint_statement(seq, cp["hash"]), cp["signature"]):
            problems.append(Problem(seq, cp["time"], "checkpoint signature invalid"))
        elif seq > last:
            problems.append(
                Problem(
                    seq,
                    cp["time"],
                    f"tail truncated: signed checkpoint at seq {seq}, trail ends at {last}",
                )
            )
        elif hashes.get(seq) != cp["hash"]:
            problems.append(Problem(seq, cp["time"], "record differs from its signed checkpoint"))
    return Verdict(len(rows), n_checkpoints, problems)
