"""The DICOM listeners: accept connections, admit them fairly, serve each in its own thread.

Admission protects registered peers from strangers: connections still in the
handshake are few per source address and few overall, and when a limit is hit
the *oldest* handshaking connection of that address (or overall) is dropped, so a
flood of silent sockets never keeps a real modality out. Established
associations are limited overall and per peer, so one peer cannot hold every slot.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from typing import Any

from pacsvault.config import DicomSettings
from pacsvault.dimse.association import Limits, accept
from pacsvault.dimse.handlers import DimseServices
from pacsvault.dimse.proxy_header import ProxyHeaderError, is_trusted, read_client_address
from pacsvault.security.peers import Peer
from pacsvault.security.policy import AccessPolicy
from pacsvault.storage.archive import Archive

log = logging.getLogger("pacsvault.dimse")

LISTEN_BACKLOG = 128


class Admission:
    """Counts of connections in the handshake (per address) and associations (per peer)."""

    def __init__(self, settings: DicomSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._handshaking: OrderedDict[int, tuple[str, socket.socket]] = OrderedDict()
        self._established: dict[int, tuple[str, socket.socket]] = {}

    def arrive(self, conn_id: int, address: str, sock: socket.socket) -> None:
        """Register a new connection; drop the oldest handshaking one when a limit is hit."""
        victims = []
        with self._lock:
            same = [k for k, (a, _s) in self._handshaking.items() if a == address]
            if len(same) >= self.settings.max_pending_per_address:
                victims.append(self._handshaking.pop(same[0])[1])
            if len(self._handshaking) >= self.settings.max_pending:
                victims.append(self._handshaking.popitem(last=False)[1][1])
            self._handshaking[conn_id] = (address, sock)
        for victim in victims:
            log.warning("dropping a connection from %s still in its handshake", address)
            _shutdown(victim)

    def identify(self, conn_id: int, address: str) -> None:
        """The client *address* of a connection that came through a trusted balancer:
        from now on it counts against that address's handshake limit."""
        victims = []
        with self._lock:
            entry = self._handshaking.get(conn_id)
            if entry is None:
                return  # dropped meanwhile
            same = [k for k, (a, _s) in self._handshaking.items() if a == address]
            if len(same) >= self.settings.max_pending_per_address:
                victims.append(self._handshaking.pop(same[0])[1])
            self._handshaking[conn_id] = (address, entry[1])
        for victim in victims:
            log.warning("dropping a connection from %s still in its handshake", address)
            _shutdown(victim)

    def establish(self, conn_id: int, peer: Peer) -> bool:
        """Move a connection to the established set if the limits allow; False if not."""
        with self._lock:
            entry = self._handshaking.pop(conn_id, None)
            if entry is None:
                return False  # dropped meanwhile
            same_peer = sum(1 for name, _s in self._established.values() if name == peer.name)
            if (
                len(self._established) >= self.settings.max_associations
                or same_peer >= self.settings.max_associations_per_peer
            ):
                return False
            self._established[conn_id] = (peer.name, entry[1])
            return True

    def leave(self, conn_id: int) -> None:
        with self._lock:
            self._handshaking.pop(conn_id, None)
            self._established.pop(conn_id, None)

    def close_all(self) -> None:
        with self._lock:
            socks = [s for _a, s in self._handshaking.values()]
            socks += [s for _n, s in self._established.values()]
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class DicomServer:
    """The DIMSE listeners: cleartext on ``dicom.port``, DICOM-TLS on ``tls_port``.

    Both share one Archive, one AccessPolicy and one admission count; either may be
    absent.
    """

    def __init__(
        self,
        settings: DicomSettings,
        archive: Archive,
        policy: AccessPolicy,
        *,
        tls: ssl.SSLContext | None = None,
        tls_port: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.tls_port = tls_port
        self.policy = policy
        self.services = DimseServices(
            archive,
            policy,
            settings.ae_title,
            settings.max_find_results,
            max_identifier=settings.max_query_size,
            dimse_timeout=settings.dimse_timeout,
        )
        self.limits = Limits(settings.max_pdu, settings.acse_timeout, settings.network_timeout)
        self.admission = admission if admission is not None else Admission(settings)
        self._listeners: list[tuple[str, socket.socket, ssl.SSLContext | None]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._ids = 0
        self._ids_lock = threading.Lock()

    def start(self) -> None:
        """Bind the listeners and serve in background threads."""
        plan = []
        if self.settings.cleartext:
            plan.append(("dicom", self.settings.port, None))
        if self.tls is not None and self.tls_port is not None:
            plan.append(("dicom-tls", self.tls_port, self.tls))
        for kind, port, tls in plan:
            sock = bind_listener(self.settings.bind, port)
            sock.settimeout(0.5)
            self._listeners.append((kind, sock, tls))
            thread = threading.Thread(
                target=self._accept_loop, args=(sock, tls), name=f"{kind}-{port}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            host, bound = sock.getsockname()[:2]
            label = "DICOM-TLS" if tls else "cleartext DICOM"
            log.info("%s listener %s on %s:%d", label, self.settings.ae_title, host, bound)

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: back off, keep serving
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._ids_lock:
                self._ids += 1
                conn_id = self._ids
            self.serve_connection(conn_id, sock, address_of(addr[0]), tls)

    def serve_connection(
        self, conn_id: int, sock: socket.socket, address: str, tls: ssl.SSLContext | None
    ) -> None:
        """Admit an accepted connection and serve it in a thread of its own.

        From a trusted balancer the client's address comes first (PROXY v2, read in that
        thread): until then the connection counts against the overall handshake limit
        only, then against its client's (see :meth:`Admission.identify`).
        """
        proxied = is_trusted(address, self.settings.trusted_proxies)
        self.admission.arrive(conn_id, handshake_key(address, conn_id, proxied), sock)
        threading.Thread(
            target=self._serve,
            args=(conn_id, sock, address, tls, proxied),
            name=f"dicom-conn-{conn_id}",
            daemon=True,
        ).start()

    def _client_behind(self, sock: socket.socket, balancer: str) -> str | None:
        """The client address a trusted balancer sent, or None (connection closed)."""
        try:
            client = read_client_address(sock, self.settings.acse_timeout)
        except (ProxyHeaderError, OSError) as exc:
            log.warning("connection from balancer %s refused: %s", balancer, exc)
            with contextlib.suppress(OSError):
                sock.close()
            return None
        return address_of(client) if client else balancer

    def _serve(
        self,
        conn_id: int,
        sock: socket.socket,
        address: str,
        tls: ssl.SSLContext | None,
        proxied: bool = False,
    ) -> None:
        if proxied:
            client = self._client_behind(sock, address)
            if client is None:
                self.admission.leave(conn_id)
                return
            address = client
            self.admission.identify(conn_id, address)
        try:
            assoc = accept(
                sock,
                address,
                policy=self.policy,
                services=self.services,
                limits=self.limits,
                tls=tls,
                admit=lambda peer: self.admission.establish(conn_id, peer),
            )
            if assoc is not None:
                try:
                    assoc.run()
                finally:
                    assoc.wire.close()
        except Exception as exc:  # one connection's bug must not take the listener down
            log.exception("connection from %s failed: %s", address, type(exc).__name__)
            with contextlib.suppress(OSError):
                sock.close()
        finally:
            self.admission.leave(conn_id)

    @property
    def listeners(self) -> list[tuple[str, str, int]]:
        """(kind, address, port) of each running listener."""
        return listener_addresses(self._listeners)

    def stop(self) -> None:
        """Stop accepting, end open connections and wait for the listeners to end."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for _kind, sock, _tls in self._listeners:
            sock.close()
        self.admission.close_all()


def listener_addresses(
    listeners: list[tuple[str, socket.socket, Any]],
) -> list[tuple[str, str, int]]:
    """(kind, address, port) of each (kind, listening socket, ...) entry."""
    out = []
    for kind, sock, *_rest in listeners:
        host, port = sock.getsockname()[:2]
        out.append((kind, str(host), int(port)))
    return out


def bind_listener(bind: str, port: int) -> socket.socket:
    """A TCP socket listening on (*bind*, *port*), blocking."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def handshake_key(address: str, conn_id: int, proxied: bool) -> str:
    """What a new connection counts against in the handshake: its address, or, through a
    balancer whose client is not known yet, a key of its own (the overall limit only)."""
    return f"{address}#{conn_id}" if proxied else address


def address_of(host: str) -> str:
    """An IPv4-mapped IPv6 address as plain IPv4; others unchanged."""
    return host[7:] if host.startswith("::ffff:") else host
