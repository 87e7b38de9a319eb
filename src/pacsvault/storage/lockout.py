"""Lockout: repeated failures from one source or for one account refuse it for a while.

Failures and lockouts live in the index, so they survive a restart and every node
of a scale-out site sees the same counters. A locked-out source gets the same
refusal as any other failure, so a guesser learns nothing from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, func, insert, select, text

from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Actor
from pacsvault.storage import schema as s
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.index import Index, advisory_lock_id, write_transaction

log = logging.getLogger("pacsvault.lockout")


_KEY_LOCK = text("SELECT pg_advisory_xact_lock(:id)")
# Built once: every authenticated request asks it, and building is most of its cost.
_LOCKED = (
    select(s.lockouts.c.key)
    .where(s.lockouts.c.key == bindparam("key"), s.lockouts.c.until > bindparam("now"))
    .limit(1)
)


def _lock_id(key: str) -> int:
    """The advisory lock id of a lockout key."""
    return advisory_lock_id("lockout", key)


@dataclass(frozen=True)
class LockoutEntry:
    key: str
    until: float
    reason: str


class Lockout:
    """Counts failures per key and locks keys that pass the threshold within the window."""

    def __init__(
        self,
        index: Index,
        audit: AuditTrail,
        *,
        threshold: int = 5,
        window: float = 900.0,
        duration: float = 900.0,
    ) -> None:
        self.index = index
        self.audit = audit
        self.threshold = threshold
        self.window = window
        self.duration = duration

    def locked(self, *keys: str) -> bool:
        """True when any of *keys* is locked out now."""
        now = time.time()
        with self.index.engine.connect() as conn:
            return any(conn.scalar(_LOCKED, {"key": key, "now": now}) for key in keys)

    def failure(self, *keys: str, reason: str) -> list[str]:
        """Count one failure for each key; returns the keys this failure locked out."""
        now = time.time()
        locked: list[str] = []
        with write_transaction(self.index.engine) as conn:
            if conn.dialect.name == "postgresql":
                # SQLite's write transaction excludes every other writer; on PostgreSQL
                # nodes count the same key concurrently, so each key's count, test and
                # lock happen under a transaction-level lock of that key (in a fixed
                # order, so two failures naming the same keys never deadlock).
                for key in sorted(set(keys)):
                    conn.execute(_KEY_LOCK, {"id": _lock_id(key)})
            conn.execute(
                delete(s.lockout_failures).where(s.lockout_failures.c.time < now - self.window)
            )
            for key in keys:
                conn.execute(insert(s.lockout_failures).values(key=key, time=now))
                count = conn.scalar(
                    select(func.count())
                    .select_from(s.lockout_failures)
                    .where(s.lockout_failures.c.key == key)
                )
                active = conn.scalar(
                    select(func.count())
                    .select_from(s.lockouts)
                    .where(s.lockouts.c.key == key, s.lockouts.c.until > now)
                )
                if (count or 0) >= self.threshold and not active:
                    conn.execute(delete(s.lockouts).where(s.lockouts.c.key == key))
                    conn.execute(
                        insert(s.lockouts).values(key=key, until=now + self.duration, reason=reason)
                    )
                    conn.execute(delete(s.lockout_failures).where(s.lockout_failures.c.key == key))
                    locked.append(key)
        for key in locked:
            log.warning(
                "locked out %s for %.0f s after %d failures", key, self.duration, self.threshold
            )
            kind, _, name = key.partition(":")
            self.audit.record(
                Action.LOCKOUT,
                Outcome.SUCCESS,
                Actor(kind, name, name if kind == "address" else None),
                detail=f"{key} locked for {self.duration:.0f} s after "
                f"{self.threshold} failures ({reason})",
                best_effort=True,
            )
        return locked

    def entries(self) -> list[LockoutEntry]:
        """Lockouts in force now."""
        now = time.time()
        with self.index.engine.connect() as conn:
            rows = conn.execute(select(s.lockouts).where(s.lockouts.c.until > now)).mappings().all()
        return [LockoutEntry(r["key"], r["until"], r["reason"]) for r in rows]

    @staticmethod
    def clear(conn: Connection, key: str | None = None) -> int:
        """Lift the lockout of *key* (all lockouts when None) and forget its failures,
        inside the caller's transaction (see storage.admin); how many were lifted."""
        q = delete(s.lockouts)
        f = delete(s.lockout_failures)
        if key is not None:
            q = q.where(s.lockouts.c.key == key)
            f = f.where(s.lockout_failures.c.key == key)
        conn.execute(f)
        return int(conn.execute(q).rowcount)
