"""Several DIMSE worker processes behind one parent that accepts every connection.

One Python process is bound by its interpreter lock to about one CPU, so ``serve``
runs ``dicom.workers`` processes that each serve associations with their own
:class:`~pacsvault.site.Site` (index writer, audit trail, policy, archive) over the
shared index, while the parent process keeps the listeners, the web server and the
accounting.

**Why the parent accepts and hands each socket to a worker** (``socket.send_fds``
over a ``SOCK_SEQPACKET`` control socket per worker), rather than workers accepting
on one ``SO_REUSEPORT`` or inherited listening socket with a shared-memory counter:

- *The limits stay exactly what they were.* The admission rules (at most N
  connections in their handshake per source address and in all, the *oldest* of
  them dropped when a new one arrives past a limit; at most M associations in all
  and per peer) need one view of every connection, including which one is oldest,
  and a way to end it. A shared counter can count but cannot say which connection
  to drop or drop it in another process; the parent has that view for free, in
  one thread, with the same :class:`~pacsvault.dimse.server.Admission` code the
  single-process server uses. A worker asks the parent for an association slot
  after the AccessPolicy accepted the peer (one round trip per association, none
  per message) and tells it when the connection ends.
- *Balance.* The kernel spreads ``SO_REUSEPORT`` connections by a hash of their
  addresses, so four associations over two workers often land 3-1 or 4-0. The
  parent gives each connection to the worker serving the fewest.
- *A dying worker takes nothing with it.* The parent keeps no copy of a socket it
  handed over, so a worker's connections close with it; the parent forgets their
  slots, removes the staging files the worker left, and starts a new worker.
- TLS is negotiated in the worker, so the parent never holds session keys.

Lockouts, the audit trail and its hash chain live in the index, which every
process reads and writes under SQLite's write lock (WAL, busy timeout), so they
already hold across workers; each worker begins its own run in the audit
checkpoint log and signs its final checkpoint when it stops cleanly. A store is
still answered only after its file and its index commit are on disk, in the
worker that received it.

Workers are forked before the parent opens the data directory or starts a
thread (cheap, and nothing is shared but the imported code); a worker restarted
later is a fresh interpreter (``python -m pacsvault.cli.dicom_worker``), since the
parent has threads and open databases by then. Workers die with the parent
(``PR_SET_PDEATHSIG``), so a kill -9 of ``serve`` leaves no orphan serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsvault.config import Settings
from pacsvault.dimse.proxy_header import is_trusted
from pacsvault.dimse.server import (
    Admission,
    address_of,
    bind_listener,
    handshake_key,
    listener_addresses,
)
from pacsvault.security.peers import Peer

log = logging.getLogger("pacsvault.dimse")

#: Largest control message (JSON); the settings of a restarted worker are the biggest.
MAX_MESSAGE = 1024 * 1024
#: A worker process's body: (data directory, control socket, number) -> exit status.
WorkerEntry = Callable[[Path, socket.socket, int], int]

#: How long a worker waits for the parent's answer to an admission request.
ADMIT_TIMEOUT = 10.0
#: How long ``stop`` waits for the workers to end before killing them.
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


def worker_count(setting: int) -> int:
    """The number of worker processes for ``dicom.workers`` (0: one per usable CPU)."""
    if setting:
        return setting
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux); best effort."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)


# -- the control socket ----------------------------------------------------------------


class Link:
    """One end of a control socket: JSON messages, optionally carrying one descriptor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._send_lock:
            if fd is None:
                self.sock.sendall(data)
            else:
                socket.send_fds(self.sock, [data], [fd])

    def receive(self) -> tuple[dict[str, Any] | None, int | None]:
        """The next message and the descriptor it carried; (None, None) at end of stream."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
        if not data:
            for fd in fds:
                os.close(fd)
            return None, None
        return json.loads(data), (fds[0] if fds else None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the worker side --------------------------------------------------------------------


class RemoteAdmission(Admission):
    """A worker's admission: the parent counts; this keeps the sockets to drop on request."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._lock = threading.Lock()
        self._socks: dict[int, socket.socket] = {}
        self._answers: dict[int, tuple[threading.Event, list[bool]]] = {}

    def arrive(self, conn_id: int, address: str, sock: socket.socket) -> None:
        with self._lock:
            self._socks[conn_id] = sock

    def identify(self, conn_id: int, address: str) -> None:
        with contextlib.suppress(OSError):
            self.link.send({"op": "identify", "id": conn_id, "address": address})

    def establish(self, conn_id: int, peer: Peer) -> bool:
        done, answer = threading.Event(), [False]
        with self._lock:
            self._answers[conn_id] = (done, answer)
        try:
            self.link.send({"op": "establish", "id": conn_id, "peer": peer.name})
            if not done.wait(ADMIT_TIMEOUT):
                log.warning("no answer from the parent process to an admission request")
                return False
            return answer[0]
        except OSError:
            return False
        finally:
            with self._lock:
                self._answers.pop(conn_id, None)

    def answer(self, conn_id: int, ok: bool) -> None:
        with self._lock:
            waiting = self._answers.get(conn_id)
        if waiting is not None:
            waiting[1][0] = ok
            waiting[0].set()

    def leave(self, conn_id: int) -> None:
        with self._lock:
            self._socks.pop(conn_id, None)
        with contextlib.suppress(OSError):
            self.link.send({"op": "leave", "id": conn_id})

    def drop(self, conn_id: int) -> None:
        with self._lock:
            sock = self._socks.get(conn_id)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close_all(self) -> None:
        with self._lock:
            socks = list(self._socks.values())
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Worker:
    """A worker process as the parent sees it."""

    number: int
    link: Link
    pid: int
    proc: subprocess.Popen | None = None  # a restarted worker; None when forked
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    conns: set[int] = field(default_factory=set)

    def wait(self) -> int | None:
        """Reap the process (it has closed its control socket, so it is ending)."""
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
            time.sleep(0.01)


class _Handed:
    """A connection handed to a worker, as the parent's Admission holds it."""

    def __init__(self, worker: Worker, conn_id: int) -> None:
        self.worker = worker
        self.conn_id = conn_id

    def shutdown(self, _how: int) -> None:
        """Ask the worker to end the connection (the parent has no copy of it)."""
        self.worker.link.send({"op": "drop", "id": self.conn_id})


class WorkerPool:
    """The parent's side: listeners, admission, dispatch and supervision of the workers.

    Call :meth:`fork` before opening the data directory or starting any thread, then
    :meth:`start` (binds the listeners, starts the workers, waits until they serve),
    :meth:`run` in the main thread until a stop is asked, and :meth:`stop`.
    """

    def __init__(self, data_dir: Path, settings: Settings, count: int, *,
                 entry: WorkerEntry, module: str, verbose: bool = False) -> None:  # fmt: skip
        """*entry* runs a forked worker (data directory, control socket, number: exit
        status); *module* is what ``python -m`` runs for a restarted one, with
        ``--data --control-fd --parent --number [--verbose]``."""
        self.data_dir = data_dir
        self.entry = entry
        self.module = module
        self.settings = settings
        self.count = count
        self.verbose = verbose
        self.admission = Admission(settings.dicom)
        self.workers: list[Worker] = []
        self._listeners: list[tuple[str, socket.socket, bool]] = []
        self._selector = selectors.DefaultSelector()
        self._ids = 0
        self._next = 0
        self._restarts: list[tuple[float, int]] = []  # (when, worker number)
        self._listening = False
        self._backoff: dict[int, float] = {}
        self._stopping = False
        self._started = False
        self._start_failed = False
        self.on_worker_exit: Callable[[], None] | None = None  # e.g. clean the staging area

    # -- starting --------------------------------------------------------------------------

    def fork(self) -> None:
        """Fork the workers; they wait for :meth:`start`. Before any thread or database."""
        parent = os.getpid()
        ours: list[socket.socket] = []
        for number in range(self.count):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    mine.close()
                    for sock in ours:
                        sock.close()
                    die_with_parent(parent)
                    code = self.entry(self.data_dir, theirs, number)
                finally:
                    with contextlib.suppress(Exception):
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
            theirs.close()
            ours.append(mine)
            self.workers.append(Worker(number, Link(mine), pid))

    def _spawn(self, number: int) -> Worker:
        """A new worker in a fresh interpreter (the parent has threads by now)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [sys.executable, "-m", self.module, "--data", str(self.data_dir),
                "--control-fd", str(theirs.fileno()), "--parent", str(os.getpid()),
                "--number", str(number)]  # fmt: skip
        if self.verbose:
            args.append("--verbose")
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # this tree's pacsvault first
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], env=env)
        finally:
            theirs.close()
        worker = Worker(number, Link(mine), proc.pid, proc)
        self._begin(worker)
        return worker

    def _begin(self, worker: Worker) -> None:
        worker.link.send({"op": "start", "settings": self.settings.model_dump(mode="json")})
        worker.link.sock.setblocking(False)
        self._selector.register(worker.link.sock, selectors.EVENT_READ, worker)

    def start(self, tls: bool, timeout: float = 60.0) -> None:
        """Bind the listeners, start the workers and wait until each is ready.

        Raises OSError when a listener cannot be bound, RuntimeError when a worker
        cannot start.
        """
        d = self.settings.dicom
        plan = []
        if d.cleartext:
            plan.append(("dicom", d.port, False))
        if tls:
            plan.append(("dicom-tls", self.settings.tls.port, True))
        for kind, port, is_tls in plan:
            sock = bind_listener(d.bind, port)
            sock.setblocking(False)
            self._listeners.append((kind, sock, is_tls))
        for worker in self.workers:
            self._begin(worker)
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("the DICOM workers did not start in time")
            self._poll(0.2, accept=False)
            if self._start_failed:
                raise RuntimeError("a DICOM worker failed to start (see the log)")
        self._started = True
        self._update_listening()
        for _kind, sock, is_tls in self._listeners:
            host, port = sock.getsockname()[:2]
            label = "DICOM-TLS" if is_tls else "cleartext DICOM"
            log.info("%s listener %s on %s:%d (%d worker processes)", label, d.ae_title, host,
                     port, self.count)  # fmt: skip

    @property
    def listeners(self) -> list[tuple[str, str, int]]:
        """(kind, address, port) of each listener."""
        return listener_addresses(self._listeners)

    # -- running ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Accept, dispatch and supervise until *stop* is set."""
        while not stop.is_set():
            self._poll(0.25, accept=True)
            now = time.monotonic()
            due = [n for when, n in self._restarts if when <= now]
            if due:
                self._restarts = [(w, n) for w, n in self._restarts if w > now]
                for number in due:
                    self._restart(number)

    def _poll(self, timeout: float, *, accept: bool) -> None:
        for key, _events in self._selector.select(timeout):
            if isinstance(key.data, Worker):
                self._from_worker(key.data)
            elif accept:
                self._accept(key.fileobj, bool(key.data))  # type: ignore[arg-type]

    def _accept(self, listener: socket.socket, tls: bool) -> None:
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror)  # e.g. out of descriptors
                time.sleep(0.05)
                return
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand_over(sock, address_of(addr[0]), tls)

    def _update_listening(self) -> None:
        """Accept while a worker is ready; else leave new connections in the backlog."""
        ready = self._started and not self._stopping and any(w.ready for w in self.workers)
        if ready == self._listening:
            return
        for _kind, sock, is_tls in self._listeners:
            if ready:
                self._selector.register(sock, selectors.EVENT_READ, is_tls)
            else:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
        self._listening = ready
        if not ready and self._started and not self._stopping:
            log.warning("no DICOM worker is ready: new connections wait in the backlog")

    def _hand_over(self, sock: socket.socket, address: str, tls: bool) -> None:
        ready = [w for w in self.workers if w.ready]
        if not ready:
            log.warning("no DICOM worker is running: connection from %s closed", address)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return
        self._next = (self._next + 1) % len(ready)
        rotated = ready[self._next :] + ready[: self._next]
        worker = min(rotated, key=lambda w: len(w.conns))
        self._ids += 1
        conn_id = self._ids
        proxied = is_trusted(address, self.settings.dicom.trusted_proxies)
        key = handshake_key(address, conn_id, proxied)
        self.admission.arrive(conn_id, key, _Handed(worker, conn_id))  # type: ignore[arg-type]
        worker.conns.add(conn_id)
        try:
            worker.link.send({"op": "conn", "id": conn_id, "address": address, "tls": tls},
                             sock.fileno())  # fmt: skip
        except OSError:
            self._gone(worker)

    def _from_worker(self, worker: Worker) -> None:
        while True:
            try:
                msg, fd = worker.link.receive()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fd = None, None
            if fd is not None:
                os.close(fd)
            if msg is None:
                self._gone(worker)
                return
            op = msg.get("op")
            if op == "establish":
                conn_id = int(msg["id"])
                ok = conn_id in worker.conns and self.admission.establish(
                    conn_id,
                    _PeerName(str(msg["peer"])),  # type: ignore[arg-type]
                )
                with contextlib.suppress(OSError):
                    worker.link.send({"op": "admit", "id": conn_id, "ok": ok})
            elif op == "identify":
                conn_id = int(msg["id"])
                if conn_id in worker.conns:
                    self.admission.identify(conn_id, str(msg["address"]))
            elif op == "leave":
                conn_id = int(msg["id"])
                worker.conns.discard(conn_id)
                self.admission.leave(conn_id)
            elif op == "ready":
                worker.ready = True
                self._update_listening()

    def _gone(self, worker: Worker) -> None:
        """*worker* closed its control socket: reap it, free its slots, restart it."""
        if worker not in self.workers:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.link.sock)
        worker.link.close()
        self.workers.remove(worker)
        self._update_listening()
        for conn_id in worker.conns:
            self.admission.leave(conn_id)
        code = worker.wait()
        if self._stopping:
            return
        if not self._started:
            self._start_failed = True
            return
        lived = time.monotonic() - worker.started
        log.warning("DICOM worker %d (pid %d) ended (exit status %s); starting a new one",
                    worker.number, worker.pid, code)  # fmt: skip
        backoff = self._backoff.get(worker.number, 0.0)
        backoff = 0.0 if lived > 30 else min(max(0.5, backoff * 2), 30.0)
        self._backoff[worker.number] = backoff
        self._restarts.append((time.monotonic() + backoff, worker.number))
        if self.on_worker_exit is not None:
            try:
                self.on_worker_exit()
            except Exception as exc:
                log.error("cleaning up after a worker failed: %s", type(exc).__name__)

    def _restart(self, number: int) -> None:
        try:
            self.workers.append(self._spawn(number))
        except OSError as exc:
            log.error("cannot start a DICOM worker: %s", exc.strerror)
            self._restarts.append((time.monotonic() + 5.0, number))

    # -- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, ask every worker to stop (each signs its audit run), reap them."""
        if self._stopping:
            return
        self._stopping = True
        for _kind, sock, _tls in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
        self._listeners = []
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.link.send({"op": "stop"})
        for worker in self.workers:
            worker.wait()
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.link.sock)
            worker.link.close()
        self.workers = []
        self._selector.close()


@dataclass(frozen=True)
class _PeerName:
    """What :meth:`Admission.establish` reads of a peer: its name."""

    name: str
