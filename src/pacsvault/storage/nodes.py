"""One serving node per node name on a shared index.

Nodes on one PostgreSQL index each extend their own audit chain, named by ``index.node``
(see the README, several nodes). A copied data directory whose ``index.node`` was not
changed would make two nodes extend one chain: correct, since the chain's head row
serializes them, but every store of both nodes would queue behind that row. So
``serve`` holds a session-level advisory lock on its node name for as long as it runs,
and a second node that finds the name taken says so at start. It warns and still
serves: a misnamed node costs speed, not correctness, while refusing would keep a
replacement node out for as long as PostgreSQL takes to notice that a crashed
machine's session is gone (the lease's session asks for TCP keepalives of ~30 s).

An embedded (SQLite) index is one machine's: nothing to hold there.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import Connection, Engine, text

from pacsvault.storage.index import advisory_lock_id

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:id)")
_UNLOCK = text("SELECT pg_advisory_unlock(:id)")
#: The server notices a dead node's session within ~30 s (idle 15 s, then 3 probes 5 s apart).
_KEEPALIVES = ("SET tcp_keepalives_idle = 15", "SET tcp_keepalives_interval = 5",
               "SET tcp_keepalives_count = 3")  # fmt: skip


class NodeLease:
    """The advisory lock on a node name, held on a connection of its own until
    :meth:`release` (or the process's end, which ends the session and the lock)."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node
        self._id = advisory_lock_id("node", node)
        self._conn: Connection | None = None

    def acquire(self) -> str | None:
        """Take the lock; None when held (or nothing to hold), else why not: another
        running node uses this name."""
        if self.engine.dialect.name != "postgresql" or self._conn is not None:
            return None
        conn = self.engine.connect()
        try:
            for statement in _KEEPALIVES:
                conn.exec_driver_sql(statement)
            held = bool(conn.scalar(_TRY_LOCK, {"id": self._id}))
            conn.commit()  # the lock is the session's: no transaction stays open
        except BaseException:
            conn.close()
            raise
        if not held:
            conn.close()
            name = f"'{self.node}'" if self.node else "'' (the default)"
            return (f"another running node uses the node name {name} on this index: both "
                    "extend one audit chain and queue behind its head; give each node its own "
                    "index.node (pacsvault.toml)")  # fmt: skip
        self._conn = conn
        return None

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.execute(_UNLOCK, {"id": self._id})
            conn.commit()
        with contextlib.suppress(Exception):
            conn.close()
