"""Group commit: a failing operation does not take the rest of its batch down with it."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import insert, select

from pacsvault.storage import schema as s
from pacsvault.storage.index import Index
from pacsvault.storage.writer import IndexWriter


def test_batch_with_a_failing_operation(index_url: str) -> None:
    index = Index(index_url)
    index.create()
    writer = IndexWriter(index.engine)
    writer.start()
    gate = threading.Event()
    results: dict[int, object] = {}

    def op(n: int):
        def run(conn):
            if n == 0:
                gate.wait(5)  # hold the writer so the others queue up into one batch
            if n == 7:
                raise ValueError("bad operation")
            conn.execute(insert(s.settings_kv).values(key=f"k{n}", value=str(n)))
            return n

        return run

    def submit(n: int) -> None:
        try:
            results[n] = writer.submit(op(n))
        except ValueError as exc:
            results[n] = exc

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(12)]
    threads[0].start()
    for t in threads[1:]:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    writer.stop()
    assert isinstance(results.pop(7), ValueError)
    assert results == {n: n for n in range(12) if n != 7}
    with index.engine.connect() as conn:
        keys = set(conn.scalars(select(s.settings_kv.c.key).where(s.settings_kv.c.key.like("k%"))))
    assert keys == {f"k{n}" for n in range(12) if n != 7}
    with pytest.raises(ValueError):
        IndexWriter(index.engine).submit(op(7))
    index.close()
