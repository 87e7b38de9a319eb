"""Group commit: one thread applies index writes from every association in shared transactions.

Each caller submits an operation and blocks until the transaction holding it has
committed (or failed). Under concurrent ingest many operations share one commit,
so the per-commit fsync is paid once per batch instead of once per instance,
while no caller is answered before its write is durable.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
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
        if not self._started:
            self.start()
        fut: Future[T] = Future()
        self._queue.put((op, fut))
        return fut.result()

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

    def _commit(self, batch: list[tuple[Operation, Future[Any]]], attempt: int = 1) -> None:
        """Run *batch* in one transaction. If anything fails, each op is retried alone,
        so one bad operation never takes the others down with it. An op that another
        process's transaction made fail (PostgreSQL: deadlock, serialization failure) is
        run again, up to :data:`TRANSIENT_RETRIES` times."""
        try:
            with write_transaction(self.engine) as conn:
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
