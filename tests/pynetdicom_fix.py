"""A fix for a race in pynetdicom 3.0's requestor, loaded by conftest for every test.

Before sending a request, pynetdicom pauses its association reactor: it clears
``_reactor_checkpoint`` and waits until ``_is_paused`` is true. But the reactor sets
``_is_paused`` just *before* calling ``wait()``; if the checkpoint is cleared right
after that call returned, the sender sees "paused" while the reactor goes on to take
the response off the queue ("Received unexpected C-ECHO service message", then a
DIMSE timeout). A server that answers within microseconds, as pacsvault does, hits
it about once in a few hundred requests. Here "paused" means what it should: the
reactor is blocked inside ``wait()`` on a cleared checkpoint.
"""

from __future__ import annotations

import threading

from pynetdicom.association import Association


class _Checkpoint(threading.Event):
    """An Event that knows whether a thread is blocked in wait() on it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:  # type: ignore[attr-defined]
            if self._flag:  # type: ignore[attr-defined]
                return True
            self.blocked = True
            try:
                return self._cond.wait_for(lambda: self._flag, timeout)  # type: ignore[attr-defined]
            finally:
                self.blocked = False


def _is_paused(self: Association) -> bool:
    checkpoint = self.__dict__.get("_reactor_checkpoint")
    return isinstance(checkpoint, _Checkpoint) and checkpoint.blocked


def install() -> None:
    if getattr(Association, "_pacsvault_race_fix", False):
        return
    original_init = Association.__init__

    def __init__(self: Association, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original_init(self, *args, **kwargs)
        checkpoint = _Checkpoint()
        checkpoint.set()
        self._reactor_checkpoint = checkpoint

    Association.__init__ = __init__  # type: ignore[method-assign]
    Association._is_paused = property(_is_paused, lambda self, value: None)  # type: ignore[attr-defined,assignment]
    Association._pacsvault_race_fix = True  # type: ignore[attr-defined]
