"""Group commit: one thread applies index writes from every association in shared transactions.

Each caller submits an operation and blocks until the transaction holding it has
committed (or failed). Under concurrent ingest many operations share one commit,
so the per-commit fsync is paid once per batch instead of once per instance,
while no caller is answered before its write is durable.

On a SQLite file the writers of several processes (``serve``'s DICOM workers) also
queue for the database's write lock on an ``flock`` of ``<index>-writer.lock``:
SQLite's own busy handler polls with sleeps of 1 to 100 ms, while a process blocked
on the flock is woken the moment the holder's commit returns. SQLite's lock still
decides; the flock only makes the writers wait in turn instead of polling.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from pacsvault.storage.index import write_transaction

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[Connection], Any]

MAX_BATCH = 256
TRANSIENT_RETRIES = 5
#: PostgreSQL's SQLSTATEs for a transaction that failed only because of another one.
_TRANSIENT_STATES = ("40001", "40P01")  # serialization_failure, deadlock_detected


def is_transient(exc: BaseException) -> bool:
    """True when *exc* failed a transaction that can simply run again."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in _TRANSIENT_STATES


class IndexWriter:
    """A single writer thread with group commit over *engine*."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[tuple[Operation, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._started = False
        self._lock = threading.Lock()
        # On SQLite the writer thread keeps one connection: taking one from the pool and
        # giving it back for every batch cost more CPU than the batch's own statements.
        self._keep = engine.dialect.name == "sqlite"
        self._conn: Connection | None = None
        database = engine.url.database if self._keep else None
        self._lock_path = f"{database}-writer.lock" if database and database != ":memory:" else None
        self._lock_fd: int | None = None

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True

    def stop(self) -> None:
        """Finish queued operations, then stop the thread."""
        with self._lock:
            if not self._started:
                return
            self._queue.put(None)
            self._thread.join()
            self._started = False

    def submit(self, op: Callable[[Connection], T]) -> T:
        """Run *op* in a write transaction; return its result once committed.

        An exception raised by *op* is re-raised here; it rolls back *op*'s changes
        only (the rest of its batch is retried and commits without it).
        """
        return self.post(op).result()

    def post(self, op: Callable[[Connection], T]) -> Future[T]:
        """Queue *op* for the next group commit without waiting for it; the Future
        holds its result (or exception) once committed."""
        if not self._started:
            self.start()
        fut: Future[T] = Future()
        self._queue.put((op, fut))
        return fut

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
        self._release()
        self._close_lock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction, on the writer's kept connection where there is one."""
        if not self._keep:
            with write_transaction(self.engine) as conn:
                yield conn
            return
        if self._conn is None:
            self._conn = self.engine.connect()
        with self._turn():
            try:
                with write_transaction(self.engine, self._conn) as conn:
                    yield conn
            except BaseException:
                self._release()  # a failed connection is not reused
                raise

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn among the writers of the SQLite file (see the module doc)."""
        if self._lock_fd is None and self._lock_path is not None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                self._lock_path = None  # e.g. a read-only directory: SQLite's lock alone
        fd = self._lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _close_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _commit(self, batch: list[tuple[Operation, Future[Any]]], attempt: int = 1) -> None:
        """Run *batch* in one transaction. If anything fails, each op is retried alone,
        so one bad operation never takes the others down with it. An op that another
        process's transaction made fail (PostgreSQL: deadlock, serialization failure) is
        run again, up to :data:`TRANSIENT_RETRIES` times."""
        try:
            with self._transaction() as conn:
                results = [op(conn) for op, _fut in batch]
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
                return
            if is_transient(exc) and attempt <= TRANSIENT_RETRIES:
                log.warning("index write collided with another writer; retrying")
                time.sleep(0.01 * attempt)
                self._commit(batch, attempt + 1)
                return
            if not isinstance(exc, IntegrityError):
                log.error("index write failed: %s", type(exc).__name__)
            batch[0][1].set_exception(exc)
            return
        for (_op, fut), value in zip(batch, results, strict=True):
            fut.set_result(value)
