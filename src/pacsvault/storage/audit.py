"""The audit trail in the index: records appended to the hash chain, checkpoints signed.

The rules (actions, event codes, the chain hash, the checkpoint statement) are in
``security.audit``; this module writes and reads them. Records go into the index in
the same transaction as the change they describe when there is one.

Signed checkpoints (the site's Ed25519 key) pin the chain at points an attacker
without the key cannot move. A genesis checkpoint at seq 0 (a random trail id signed
at ``init``) marks the start, so a wiped trail is not an empty one; every checkpoint is
also appended to the checkpoint log outside the index (see ``security.audit_log``), and
a process that wrote to the trail signs the head as its final checkpoint when it stops
cleanly. ``security.audit_verify`` holds the rules that make all this evidence.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from pacsvault.security.audit import (
    EVENT_CODES,
    GENESIS_HASH,
    GENESIS_SEQ,
    HEAD_KEY,
    ROOT_CHAIN,
    Action,
    AuditUnavailable,
    Outcome,
    chain_announcement,
    checkpoint_statement,
    head_key,
    record_hash,
)
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.audit_log import CheckpointLog, Entry, LogContents, Run
from pacsvault.security.audit_verify import Evidence, Trail, Verdict, check
from pacsvault.security.identity import Actor
from pacsvault.security.secrets import Pseudonymizer
from pacsvault.storage import schema as s
from pacsvault.storage.index import Index, after_commit, write_transaction

log = logging.getLogger("pacsvault.audit")


def read_head(conn: Connection, chain: str = ROOT_CHAIN, *, lock: bool = False) -> tuple[int, str]:
    """(sequence number, hash) of *chain*'s last record; (0, genesis) for an empty chain.

    With *lock* (PostgreSQL), the head row is created if missing and locked for the rest
    of the transaction, so concurrent writers of the chain (other processes) extend it
    one after the other; SQLite's write transaction already excludes them.
    """
    kv, key = s.settings_kv, head_key(chain)
    query = select(kv.c.value).where(kv.c.key == key)
    if lock and conn.dialect.name == "postgresql":
        value = conn.scalar(query.with_for_update())
        if value is None:
            conn.execute(
                pg_insert(kv).values(key=key, value=f"0:{GENESIS_HASH}").on_conflict_do_nothing()
            )
            value = conn.scalar(query.with_for_update())
    else:
        value = conn.scalar(query)
    if not value:
        return 0, GENESIS_HASH
    return _parse_head(value)


def _parse_head(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    return int(seq), digest


_AUDIT_COLUMNS = [c.name for c in s.audit_events.c if not c.primary_key]
_INSERT_SQL = (
    f"INSERT INTO {s.audit_events.name} ({', '.join(_AUDIT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _AUDIT_COLUMNS)})"
)
_HEAD_SQL = f"SELECT value FROM {s.settings_kv.name} WHERE key = ?"
_SET_HEAD_SQL = f"UPDATE {s.settings_kv.name} SET value = ? WHERE key = ?"
_NEW_HEAD_SQL = f"INSERT INTO {s.settings_kv.name} (key, value) VALUES (?, ?)"


def _write_head(conn: Connection, chain: str, seq: int, digest: str) -> None:
    value, key = f"{seq}:{digest}", head_key(chain)
    updated = conn.execute(
        update(s.settings_kv).where(s.settings_kv.c.key == key).values(value=value)
    ).rowcount
    if not updated:
        conn.execute(insert(s.settings_kv).values(key=key, value=value))


def append(conn: Connection, chain: str, row: dict[str, Any]) -> dict[str, Any]:
    """Append *row* to *chain* in *conn*'s write transaction; returns it as stored."""
    seq, prev = read_head(conn, chain, lock=True)
    row = {**row, "chain": chain, "seq": seq + 1, "prev_hash": prev}
    row["hash"] = record_hash(prev, row)
    conn.execute(insert(s.audit_events).values(**row))
    _write_head(conn, chain, row["seq"], row["hash"])
    return row


Submit = Callable[[Callable[[Connection], Any]], Any]
Post = Callable[[Callable[[Connection], Any]], Future[Any]]


class AuditTrail:
    """Writes audit rows, through the group-commit writer when one is running.

    With a signer and a checkpoint log, the first record this process writes begins a
    *run* (a ``start`` line in the log) and :meth:`close` ends it with a final signed
    checkpoint of the head.

    Records go to *chain*: the node's own hash chain (``index.node``; "" is the site's
    first chain). Nodes sharing a PostgreSQL index thus never wait for each other's
    records; processes of one node extend its chain one after the other.
    """

    def __init__(
        self,
        index: Index,
        submit: Submit | None = None,
        *,
        post: Post | None = None,
        signer: AuditSigner | None = None,
        checkpoint_every: int = 100,
        checkpoint_log: CheckpointLog | None = None,
        chain: str = ROOT_CHAIN,
    ) -> None:
        self.index = index
        self.chain = chain
        self._head_key = head_key(chain)
        self._submit = submit
        self._post = post
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.log = checkpoint_log if signer is not None else None
        self._run: Run | None = None
        self._run_lock = threading.Lock()

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
        self.begin_run()
        if conn.dialect.name == "sqlite":
            self._insert_sqlite(conn, row)
            return
        row = append(conn, self.chain, row)
        if self.signer is not None and row["seq"] % self.checkpoint_every == 0:
            run = self._run
            self._checkpoint(conn, row["seq"], row["hash"], run_id=run.id if run else None)

    def _insert_sqlite(self, conn: Connection, row: dict[str, Any]) -> None:
        """:meth:`insert` on SQLite, on the DBAPI connection (the hot path of every store).

        The same reads and writes as the SQLAlchemy statements, in the caller's
        transaction; checkpoints (one record in ``checkpoint_every``) take the common path.
        """
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            key = self._head_key
            found = cur.execute(_HEAD_SQL, (key,)).fetchone()
            seq, prev = (0, GENESIS_HASH) if not found or not found[0] else _parse_head(found[0])
            row = {**row, "chain": self.chain, "seq": seq + 1, "prev_hash": prev}
            row["hash"] = record_hash(prev, row)
            cur.execute(_INSERT_SQL, [row.get(c) for c in _AUDIT_COLUMNS])
            head = f"{row['seq']}:{row['hash']}"
            if not cur.execute(_SET_HEAD_SQL, (head, key)).rowcount:
                cur.execute(_NEW_HEAD_SQL, (key, head))
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                _INSERT_SQL, None, exc, sqlite3.Error, hide_parameters=True, dialect=None
            ) from exc
        if self.signer is not None and row["seq"] % self.checkpoint_every == 0:
            run = self._run
            self._checkpoint(conn, row["seq"], row["hash"], run_id=run.id if run else None)

    # -- runs, checkpoints and the genesis -----------------------------------------------

    def begin_run(self, label: str = "command") -> None:
        """Log that this process starts writing to the trail (once; no-op without a log).

        Must happen before the process's first record commits, so that a record is
        never in the index without the ``start`` line of the run that wrote it. If the
        log cannot be written the error is logged and records are still written (the
        archive keeps working; ``audit verify`` will show the gap); the next record
        tries again.
        """
        if self.log is None or self._run is not None:
            return
        with self._run_lock:
            if self._run is None:
                try:
                    self._run = self.log.begin_run(secrets.token_hex(8), label, self.chain)
                except OSError as exc:
                    log.error("cannot write the audit checkpoint log: %s", exc.strerror)

    def _log_entry(self, conn: Connection, entry: Entry) -> None:
        """Append *entry* to the checkpoint log once *conn*'s transaction has committed."""
        if self.log is None:
            return
        log_ = self.log
        if not after_commit(conn, lambda: log_.append([entry])):
            log.warning("audit checkpoint %s not logged: not in a write transaction", entry["seq"])

    def _checkpoint(
        self,
        conn: Connection,
        seq: int,
        digest: str,
        *,
        final: bool = False,
        run_id: str | None = None,
    ) -> None:
        """Sign (seq, digest) into the index and, after commit, into the checkpoint log.

        An existing checkpoint row for *seq* is kept; a final checkpoint is logged
        even then, since the log line is what records the clean stop of *run_id*.
        """
        assert self.signer is not None
        cps, chain = s.audit_checkpoints, self.chain
        signature = self.signer.sign(checkpoint_statement(seq, digest, chain))
        now = time.time()
        exists_already = conn.scalar(
            select(cps.c.seq).where(cps.c.chain == chain, cps.c.seq == seq)
        )
        if exists_already is None:
            conn.execute(
                insert(cps).values(
                    chain=chain, seq=seq, hash=digest, time=now, signature=signature
                )
            )
        elif not final:
            return
        entry: Entry = {"kind": "checkpoint", "seq": seq, "hash": digest, "time": now,
                        "signature": signature, "final": final}  # fmt: skip
        if run_id is not None:
            entry["run"] = run_id
        self._log_entry(conn, self._tagged(entry))

    def _tagged(self, entry: Entry) -> Entry:
        """*entry* with this trail's chain named (entries of the first chain name none)."""
        return {**entry, "chain": self.chain} if self.chain != ROOT_CHAIN else entry

    def _genesis_hash(self, conn: Connection) -> str | None:
        cps = s.audit_checkpoints
        return conn.scalar(
            select(cps.c.hash).where(cps.c.chain == self.chain, cps.c.seq == GENESIS_SEQ)
        )

    def _write(self, op: Callable[[Connection], Any]) -> Any:
        """Run *op* in a committed write transaction (through the writer if there is one)."""
        if self._submit is not None:
            return self._submit(op)
        with write_transaction(self.index.engine) as conn:
            return op(conn)

    def checkpoint(self, *, final: bool = False, run_id: str | None = None) -> None:
        """Sign the current head now, so a truncated tail is detectable.

        A final checkpoint of an empty trail names the genesis (seq 0) instead.
        """
        if self.signer is None:
            return

        def op(conn: Connection) -> None:
            seq, digest = read_head(conn, self.chain, lock=True)
            if not seq:
                digest = self._genesis_hash(conn)  # type: ignore[assignment]
                if not final or digest is None:
                    return
            self._checkpoint(conn, seq, digest, final=final, run_id=run_id)

        self._write(op)

    def close(self) -> None:
        """End this process's run: sign the head as its final checkpoint (idempotent).

        Call it on a clean shutdown, before stopping the writer. A process that wrote
        nothing has no run and signs nothing. Failures are logged, never raised.
        """
        with self._run_lock:
            run, self._run = self._run, None
        if run is None:
            return
        try:
            self.checkpoint(final=True, run_id=run.id)
        except Exception as exc:
            log.error("could not sign the audit head at shutdown: %s", type(exc).__name__)
        finally:
            run.end()

    def ensure_genesis(self, *, new_site: bool) -> None:
        """Write the signed genesis if the index has none and the log shows none either.

        At ``init`` (*new_site*) that is the normal start. Otherwise it means an index
        from an older release, which had neither: the genesis is marked ``legacy``, the
        head is signed and the old signed checkpoints are copied into the new log. If the
        log already holds a genesis the index lacks, nothing is written: the trail was
        wiped and ``audit verify`` must say so.
        """
        if self.log is None or self.signer is None:
            return
        with self.index.engine.connect() as conn:
            if self._genesis_hash(conn) is not None:
                return
        if self.log.has_genesis(self.chain):
            return
        self.log.ensure_file()
        with write_transaction(self.index.engine) as conn:
            if conn.dialect.name == "postgresql":
                read_head(conn, self.chain, lock=True)  # one genesis, however many start
            if self._genesis_hash(conn) is not None:
                return  # another process was quicker
            # Only the first chain can predate the genesis (an older release's trail).
            self._genesis(conn, legacy=not new_site and self.chain == ROOT_CHAIN)

    def _genesis(self, conn: Connection, *, legacy: bool) -> None:
        """Insert the genesis (and, for a legacy trail, sign its head); log after commit.

        The genesis of a node's own chain is announced by a record in the first chain,
        so that ``audit verify`` misses no chain that was deleted whole.
        """
        assert self.signer is not None
        cps, chain = s.audit_checkpoints, self.chain
        trail_id = secrets.token_hex(32)
        now = time.time()
        signature = self.signer.sign(checkpoint_statement(GENESIS_SEQ, trail_id, chain))
        conn.execute(
            insert(cps).values(
                chain=chain, seq=GENESIS_SEQ, hash=trail_id, time=now, signature=signature
            )
        )
        genesis: Entry = {"kind": "genesis", "seq": GENESIS_SEQ, "hash": trail_id, "time": now,
                          "signature": signature, "legacy": legacy}  # fmt: skip
        head_seq, head_hash = read_head(conn, chain)
        if legacy:
            genesis["records"] = head_seq
        self._log_entry(conn, self._tagged(genesis))
        if chain != ROOT_CHAIN:
            row = self.row(Action.AUDIT_CHAIN, Outcome.SUCCESS, None,
                           detail=chain_announcement(chain, trail_id))  # fmt: skip
            append(conn, ROOT_CHAIN, row)
        if not legacy:
            return
        old = conn.execute(
            select(cps).where(cps.c.chain == chain, cps.c.seq > GENESIS_SEQ)
            .order_by(cps.c.seq)
        ).mappings().all()  # fmt: skip
        for cp in old:
            if self.signer.verify(checkpoint_statement(cp["seq"], cp["hash"]), cp["signature"]):
                self._log_entry(conn, {"kind": "checkpoint", "seq": cp["seq"],
                                       "hash": cp["hash"], "time": cp["time"],
                                       "signature": cp["signature"], "final": False,
                                       "run": "legacy"})  # fmt: skip
        if head_seq:
            # Signed now, as if the older release had shut down cleanly here.
            self._checkpoint(conn, head_seq, head_hash, final=True, run_id="adopt")

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
        wait: bool = True,
    ) -> None:
        """Record one event durably.

        Raises :class:`AuditUnavailable` when the record cannot be written, so that no
        access happens unrecorded: the caller refuses what it was about to do. With
        *best_effort* (for refusals, which give nothing away) a failure is only logged.
        With *wait* false (only for a record of something that has already happened,
        such as a retrieve's end, whose start was recorded durably) the record is
        queued for the writer's next group commit and this returns at once; a failure
        is logged.
        """
        row = self.row(
            action, outcome, actor, study_uid=study_uid, patient_ref=patient_ref, detail=detail
        )
        if not wait and self._post is not None:

            def logged(fut: Future[Any]) -> None:
                if (exc := fut.exception()) is not None:
                    _unwritten(action, exc)

            self._post(lambda conn: self.insert(conn, row)).add_done_callback(logged)
            return
        try:
            self._write(lambda conn: self.insert(conn, row))
        except Exception as exc:
            _unwritten(action, exc)
            if not best_effort:
                raise AuditUnavailable(f"audit trail unavailable ({type(exc).__name__})") from None

    # -- reading --------------------------------------------------------------------------

    def read_trail(self) -> Trail:
        """This trail's chain (see :meth:`read_trails`); an empty one if it has none yet."""
        return self.read_trails().get(self.chain) or Trail([], (0, GENESIS_HASH), {}, self.chain)

    def read_trails(self) -> dict[str, Trail]:
        """Every chain's records, head and checkpoints, read in one transaction (a
        consistent view: a snapshot on PostgreSQL, where other nodes keep writing)."""
        a, cps, kv = s.audit_events, s.audit_checkpoints, s.settings_kv
        with self.index.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                rows = conn.execute(select(a).order_by(a.c.chain, a.c.id)).mappings().all()
                points = conn.execute(select(cps).order_by(cps.c.chain, cps.c.seq)).mappings()
                heads = conn.execute(
                    select(kv.c.key, kv.c.value).where(
                        or_(kv.c.key == HEAD_KEY, kv.c.key.like(f"{HEAD_KEY}:%"))
                    )
                ).all()
                trails: dict[str, Trail] = {}

                def trail(chain: str) -> Trail:
                    return trails.setdefault(chain, Trail([], (0, GENESIS_HASH), {}, chain))

                for row in rows:
                    trail(row["chain"]).rows.append(row)
                for cp in points:
                    trail(cp["chain"]).checkpoints[cp["seq"]] = cp
                for key, value in heads:
                    chain = "" if key == HEAD_KEY else key.partition(":")[2]
                    if value:
                        trail(chain).head = _parse_head(value)
        return trails

    def verify(self, copies: Sequence[LogContents] = ()) -> Verdict:
        """Check the trail against the local checkpoint log and *copies* (see
        ``security.audit_verify``): ``pacsvault audit verify`` and ``GET /api/audit/verify``.

        The log is read before the index and the liveness of writers checked after, so a
        process writing meanwhile cannot make an honest trail look tampered with.
        """
        log, signer = self.log, self.signer
        if log is None or signer is None:
            raise AuditUnavailable("no signing key: the trail cannot be verified")
        local = log.read()
        trails = self.read_trails()
        evidence = Evidence(local, list(copies), log.writers_alive(), log.size() != local.size)
        return check(trails, signer, evidence, chain=self.chain)

    def search(self, q: AuditQuery) -> list[dict[str, Any]]:
        """Records matching every filter of *q*, in the order they were written (several
        nodes' chains interleaved by time)."""
        a = s.audit_events
        stmt = select(a).order_by(a.c.time, a.c.id)
        if q.user:
            stmt = stmt.where(a.c.actor == f"user:{q.user}")
        if q.peer:
            stmt = stmt.where(a.c.actor == f"peer:{q.peer}")
        if q.patient_ref:
            stmt = stmt.where(a.c.patient_ref == q.patient_ref)
        if q.study:
            stmt = stmt.where(a.c.study_uid == q.study)
        if q.action:
            stmt = stmt.where(a.c.action == q.action)
        if q.outcome:
            stmt = stmt.where(a.c.outcome == q.outcome)
        if q.since is not None:
            stmt = stmt.where(a.c.time >= q.since)
        if q.until is not None:
            stmt = stmt.where(a.c.time <= q.until)
        if q.limit:
            stmt = stmt.limit(q.limit)
        with self.index.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def records_after(self, seq: int, limit: int = 200) -> list[Mapping[str, Any]]:
        """Up to *limit* records of this trail's chain with a sequence number above *seq*."""
        a = s.audit_events
        stmt = (
            select(a).where(a.c.chain == self.chain, a.c.seq > seq).order_by(a.c.seq).limit(limit)
        )
        with self.index.engine.connect() as conn:
            return list(conn.execute(stmt).mappings().all())

    def _state_key(self, key: str) -> str:
        return key if self.chain == ROOT_CHAIN else f"{key}:{self.chain}"

    def get_state(self, key: str) -> str | None:
        """A small value kept beside this trail's chain (e.g. how far forwarding got)."""
        key = self._state_key(key)
        with self.index.engine.connect() as conn:
            return conn.scalar(select(s.settings_kv.c.value).where(s.settings_kv.c.key == key))

    def set_state(self, key: str, value: str) -> None:
        kv = s.settings_kv
        key = self._state_key(key)
        with self.index.engine.begin() as conn:
            if not conn.execute(update(kv).where(kv.c.key == key).values(value=value)).rowcount:
                conn.execute(insert(kv).values(key=key, value=value))


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit search (all optional; *patient_ref* is the pseudonym)."""

    user: str | None = None
    peer: str | None = None
    patient_ref: str | None = None
    study: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 date or time (a date is its midnight; a
    time without a zone is local time); ValueError if it is none or out of range."""
    try:
        value = dt.datetime.fromisoformat(text)
        if value.tzinfo is None:
            value = value.astimezone()
        return value.timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError("use ISO 8601, e.g. 2026-11-23 or 2026-11-23T10:00") from None


@dataclass(frozen=True)
class AuditFilters:
    """An audit search as a person asks for it (``pacsvault audit search``, the admin API).

    The patient is given by its ID, which is matched through the site's pseudonym of it
    and never written down: the record of the search names the filters used, not their
    values. Empty values filter nothing.
    """

    user: str | None = None
    peer: str | None = None
    patient: str | None = None
    study: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None

    def query(self, pseudonyms: Pseudonymizer, limit: int | None = None) -> AuditQuery:
        """The storage query: the patient ID becomes its pseudonym."""
        return AuditQuery(
            user=self.user or None,
            peer=self.peer or None,
            patient_ref=pseudonyms.ref(self.patient) if self.patient else None,
            study=self.study or None,
            action=self.action or None,
            outcome=self.outcome or None,
            since=self.since,
            until=self.until,
            limit=limit,
        )

    def used(self) -> list[str]:
        """The names of the filters given."""
        return [f.name for f in fields(self) if getattr(self, f.name) not in (None, "")]

    def describe(self, verb: str, count: int) -> str:
        """The detail of the audit record of this search (never a filter's value)."""
        return f"{verb} by {','.join(self.used()) or 'nothing'}: {count} records"


def _unwritten(action: Action, exc: BaseException) -> None:
    """Log that a record of *action* could not be written (the error's type, no detail)."""
    log.error("could not write audit record (%s): %s", action.value, type(exc).__name__)
