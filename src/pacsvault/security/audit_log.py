"""The checkpoint log: signed checkpoints kept outside the index, append-only, one JSON line each.

``<data>/audit/checkpoints.log`` (directory 0700, file 0600) holds entries of these
kinds:

- ``genesis``: the signed start of the trail (seq 0, a random 64-hex trail id as its
  hash), written by ``init`` or, for an index made by an older release, on first open
  (``"legacy": true`` then, with ``"records"``, the head at that moment);
- ``checkpoint``: every signed checkpoint (seq, hash, time, signature), ``"final": true``
  when a process signs the head as it shuts down cleanly, with the ``run`` that wrote it;
- ``start``: a process begins writing to the trail (``run``, ``pid``, and ``alone``: no
  other writer was alive, so every earlier run without a final checkpoint had ended);
- ``repair``: a previous append was cut short (crash mid-write); the torn bytes before
  this line are not an entry.

Entries of a node's own audit chain (``index.node``, a scale-out site) carry its name as
``"chain"``; those of the site's first chain carry none.

Checkpoint lines are appended only after the index transaction holding the checkpoint
has committed (see ``storage.index.after_commit``), so every complete line names a
checkpoint the index had. A crash can therefore leave a checkpoint in the index that
the log lacks (harmless: an attacker cannot create signed checkpoints), or a torn last
line (tolerated while it is the last line, then marked by a ``repair`` line), never a
line for a checkpoint that did not commit. Appends take an exclusive ``flock`` on the
file, so lines from several processes never interleave, and are fsynced.

Each writing process holds a shared ``flock`` on ``writers.lock`` for as long as it
runs; ``writers_alive`` tells whether any does, which is how ``audit verify`` tells a
running server from a crashed one. ``forwarded`` holds how much of the log the syslog
forwarder has sent. This module holds no SQL; ``audit.py`` and
``audit_verify.py`` bring the index side.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_DIR = "audit"
LOG_FILE = "checkpoints.log"
WRITERS_LOCK = "writers.lock"
FORWARDED_FILE = "forwarded"  # bytes of the log a syslog collector has accepted
#: The RFC 5424 MSGID of a checkpoint log line forwarded to syslog.
SYSLOG_MSGID = "AUDIT-CHECKPOINT"
_SYSLOG_MARK = f" {SYSLOG_MSGID} - "

Entry = dict[str, Any]


def entry_chain(entry: Entry) -> str:
    """The audit chain an entry belongs to (entries of the first chain carry none)."""
    chain = entry.get("chain", "")
    return chain if isinstance(chain, str) else ""


def entry_line(entry: Entry) -> str:
    """One entry as its log line (compact JSON, no newline)."""
    return json.dumps(entry, separators=(",", ":"), sort_keys=False)


@dataclass
class LogContents:
    """What a checkpoint log (or a copy of one) holds, as parsed.

    ``entries`` are (line number, entry) in file order; ``bad_lines`` are lines that
    are not entries and were not explained by a later ``repair`` line; ``repaired`` are
    torn lines a ``repair`` line accounts for; ``torn_tail`` is the number of a last
    line without its newline (a write cut short; never counted as an entry), or None.
    """

    source: str
    exists: bool
    size: int = 0
    entries: list[tuple[int, Entry]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    repaired: list[int] = field(default_factory=list)
    torn_tail: int | None = None

    def of_kind(self, *kinds: str) -> list[tuple[int, Entry]]:
        """Entries of the given kinds, in file order."""
        return [(n, e) for n, e in self.entries if e.get("kind") in kinds]


def _as_entry(text: str) -> Entry | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("kind"), str) else None


def parse_log(text: str, source: str, *, strict: bool = True) -> LogContents:
    """Parse checkpoint log *text*.

    Strict (the local log): every line must be an entry, except a torn last line or a
    torn line followed by a ``repair`` entry. Lenient (a copy, e.g. what a syslog
    collector received): lines carrying an ``AUDIT-CHECKPOINT`` syslog message are
    unwrapped, lines that are not entries (other syslog traffic) are skipped.
    """
    contents = LogContents(source, True, len(text.encode()))
    complete = text.endswith("\n")
    body = text[:-1] if complete else text
    lines = body.split("\n") if body else []
    pending_bad: list[int] = []
    for n, raw in enumerate(lines, start=1):
        if n == len(lines) and not complete:
            contents.torn_tail = n  # a line exists once its newline is written
            break
        line = raw
        if not strict:
            line = line.partition(_SYSLOG_MARK)[2] if _SYSLOG_MARK in line else line
            if not line.startswith("{"):
                continue
        entry = _as_entry(line)
        if entry is None:
            pending_bad.append(n)
            continue
        if entry["kind"] == "repair" and pending_bad:
            contents.repaired.append(pending_bad.pop())
        contents.bad_lines.extend(pending_bad)
        pending_bad = []
        contents.entries.append((n, entry))
    contents.bad_lines.extend(pending_bad)
    if not strict:
        contents.bad_lines = []
    return contents


def read_copy(path: Path) -> LogContents:
    """A copy of the log from elsewhere (export, syslog capture); raises OSError."""
    return parse_log(path.read_text(encoding="utf-8", errors="replace"), str(path), strict=False)


class Run:
    """This process's turn as a trail writer: holds the shared lock on ``writers.lock``."""

    def __init__(self, run_id: str, fd: int) -> None:
        self.id = run_id
        self._fd: int | None = fd

    def end(self) -> None:
        """Release the writers lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class CheckpointLog:
    """The append-only checkpoint log of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / LOG_DIR
        self.path = self.dir / LOG_FILE
        self._lock = threading.Lock()

    def ensure_file(self) -> None:
        """Create the directory (0700) and an empty log (0600) if absent; durable."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if self.path.exists():
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The log opened for appending, under this process's and every process's lock."""
        self.ensure_file()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)

    @staticmethod
    def _repair_tail(fd: int) -> bytes:
        """Bytes that end a torn last line (newline plus a ``repair`` entry), or b""."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return b""
        tail = os.pread(fd, min(size, 65536), max(0, size - 65536))
        torn = len(tail) - (tail.rfind(b"\n") + 1)
        repair = {"kind": "repair", "time": time.time(), "torn_bytes": torn}
        return b"\n" + entry_line(repair).encode() + b"\n"

    def append(self, entries: list[Entry]) -> None:
        """Append *entries* (one line each) and fsync before returning. Raises OSError."""
        if not entries:
            return
        with self._locked() as fd:
            self._write(fd, entries)

    def _write(self, fd: int, entries: list[Entry]) -> None:
        data = self._repair_tail(fd) + "".join(entry_line(e) + "\n" for e in entries).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)

    def begin_run(self, run_id: str, label: str, chain: str = "") -> Run:
        """Start a writer run: take the shared writers lock and log a ``start`` entry.

        Done under the log lock, so no other process starts (or probes ``alone``)
        between the exclusivity test and the shared lock.
        """
        with self._locked() as fd:
            lock_fd = os.open(self.dir / WRITERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    alone = True
                except BlockingIOError:
                    alone = False
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
                start = {"kind": "start", "run": run_id, "time": time.time(),
                         "pid": os.getpid(), "alone": alone, "program": label}  # fmt: skip
                if chain:
                    start["chain"] = chain
                self._write(fd, [start])
            except BaseException:
                os.close(lock_fd)
                raise
        return Run(run_id, lock_fd)

    def writers_alive(self) -> bool:
        """True while some process holds the writers lock (a run that has not ended)."""
        try:
            fd = os.open(self.dir / WRITERS_LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def read(self) -> LogContents:
        """The local log, parsed strictly (``exists`` False when there is no file)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return LogContents(str(self.path), False)
        contents = parse_log(data.decode("utf-8", errors="replace"), str(self.path), strict=True)
        contents.size = len(data)  # the bytes on disk, to compare with a later size()
        return contents

    def size(self) -> int:
        """The log's size in bytes now (0 when absent)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def has_genesis(self, chain: str = "") -> bool:
        """True when the log holds a genesis entry of *chain*."""
        return any(entry_chain(e) == chain for _n, e in self.read().of_kind("genesis"))

    def forwarded(self) -> int:
        """How many bytes of the log the syslog forwarder has sent (kept outside the index,
        so someone who can write only the index cannot make it skip lines)."""
        try:
            return int((self.dir / FORWARDED_FILE).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def save_forwarded(self, offset: int) -> None:
        """Record that the first *offset* bytes were sent (atomic replace, 0600)."""
        tmp = self.dir / f"{FORWARDED_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{offset}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / FORWARDED_FILE)

    def complete_text(self) -> str:
        """The log's complete lines (a torn last line left out), for export."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text[: text.rfind("\n") + 1]
