"""Live forwarding of audit records to a syslog collector over TLS (RFC 5424 over RFC 5425).

The audit table is the queue: the forwarder remembers the last sequence number the
collector accepted (in ``meta``) and sends every later record in order. When the
collector is unreachable it retries with backoff, so an outage delays messages but
loses none; after a restart it resumes where it stopped.

The checkpoint log (``audit_log``) is forwarded the same way: every complete line,
in order, as an RFC 5424 message with MSGID ``AUDIT-CHECKPOINT`` whose body is the
line itself (JSON: kind, seq, hash, time, signature, final...). The byte offset sent
so far is kept next to the log, not in the index, so write access to the index alone
cannot make the forwarder skip lines. So the signed checkpoints, the genesis and the
clean-shutdown marks leave the machine; what a collector received is a copy of the log
that ``audit verify --checkpoints FILE`` reads as it is. After a crash between sending
and saving the offset some lines are sent twice; verification ignores repeated lines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pacsvault.config import AuditSettings
from pacsvault.security.audit_log import SYSLOG_MSGID, CheckpointLog
from pacsvault.security.audit_message import audit_message

log = logging.getLogger("pacsvault.audit")

STATE_KEY = "audit_forwarded"
FACILITY_AUTHPRIV = 10
SEVERITY = {"success": 5, "warning": 4, "refused": 4, "failure": 3}  # notice, warning, error


def _alive(sock: ssl.SSLSocket) -> bool:
    """False when the collector has closed *sock*. A collector never sends data, so a
    readable socket is the end of the connection (or TLS records such as session tickets,
    which a non-blocking read consumes)."""
    readable, _w, _x = select.select([sock], [], [], 0)
    if not readable:
        return True
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return sock.recv(1) != b""
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return True  # only TLS records, consumed
    except (OSError, ssl.SSLError):
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def syslog_frame(row: Mapping[str, Any], source_id: str, hostname: str) -> bytes:
    """One record as an RFC 5424 message, octet-counted for RFC 5425 transport."""
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY.get(row["outcome"], 3)
    stamp = dt.datetime.fromtimestamp(row["time"], dt.UTC).isoformat(timespec="microseconds")
    header = f"<{pri}>1 {stamp.replace('+00:00', 'Z')} {hostname} pacsvault - DICOM+RFC3881 -"
    body = f"{header} {audit_message(row, source_id)}".encode()
    return f"{len(body)} ".encode() + body


def checkpoint_frame(line: str, hostname: str) -> bytes:
    """One checkpoint log line as an RFC 5424 message (notice), octet-counted.

    The body is the line verbatim, so a collector's copy is a checkpoint log.
    """
    pri = FACILITY_AUTHPRIV * 8 + 5
    try:
        when = float(json.loads(line).get("time") or time.time())
    except (ValueError, AttributeError, TypeError):
        when = time.time()
    stamp = dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="microseconds")
    header = f"<{pri}>1 {stamp.replace('+00:00', 'Z')} {hostname} pacsvault - {SYSLOG_MSGID} -"
    body = f"{header} {line}".encode()
    return f"{len(body)} ".encode() + body


class RecordSource(Protocol):
    """Where the forwarder reads records and keeps how far it got (storage.audit)."""

    def records_after(self, seq: int, limit: int = 200) -> list[Mapping[str, Any]]: ...

    def get_state(self, key: str) -> str | None: ...

    def set_state(self, key: str, value: str) -> None: ...


class AuditForwarder:
    """A background thread sending new audit records to the configured collector."""

    def __init__(
        self,
        records: RecordSource,
        settings: AuditSettings,
        source_id: str,
        checkpoint_log: CheckpointLog | None = None,
    ) -> None:
        self.records = records
        self.checkpoint_log = checkpoint_log
        self.settings = settings
        self.source_id = source_id
        self.hostname = socket.gethostname() or "-"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-forwarder", daemon=True)
        self._sock: ssl.SSLSocket | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is pending if the collector is there (up to *timeout*), then stop."""
        self._stop.set()
        self._thread.join(timeout)
        self._close()

    def _context(self) -> ssl.SSLContext:
        cfg = self.settings
        ctx = ssl.create_default_context(cafile=cfg.syslog_ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.syslog_client_cert:
            ctx.load_cert_chain(cfg.syslog_client_cert, cfg.syslog_client_key or None)
        return ctx

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is not None and not _alive(self._sock):
            # The collector closed (or restarted) since the last batch: a write into that
            # connection would still "succeed" into the kernel's buffer and be lost.
            self._close()
        if self._sock is None:
            cfg = self.settings
            raw = socket.create_connection((cfg.syslog_host, cfg.syslog_port), timeout=10)
            self._sock = self._context().wrap_socket(raw, server_hostname=cfg.syslog_host)
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _forwarded(self) -> int:
        value = self.records.get_state(STATE_KEY)
        return int(value) if value else 0

    def _save(self, seq: int) -> None:
        self.records.set_state(STATE_KEY, str(seq))

    def send_pending(self) -> int:
        """Send every record, then every checkpoint log line, not yet forwarded.

        Returns how many messages were sent. Raises OSError.
        """
        return self._send_records() + self._send_checkpoints()

    def _send_checkpoints(self) -> int:
        """Send the checkpoint log's complete lines after the saved offset; how many sent.

        A log shorter than the offset (replaced) is sent again from its start.
        """
        cp_log = self.checkpoint_log
        if cp_log is None:
            return 0
        offset = cp_log.forwarded()
        try:
            with open(cp_log.path, "rb") as f:
                if f.seek(0, 2) < offset:
                    offset = 0
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        data = data[: data.rfind(b"\n") + 1]
        if not data:
            return 0
        sock = self._connect()
        sent = 0
        for raw in data.splitlines():
            line = raw.decode("utf-8", errors="replace")
            if line.startswith("{"):
                sock.sendall(checkpoint_frame(line, self.hostname))
                sent += 1
        cp_log.save_forwarded(offset + len(data))
        return sent

    def _send_records(self) -> int:
        """Send every audit record not yet forwarded; returns how many were sent."""
        sent = 0
        last = self._forwarded()
        while True:
            rows = self.records.records_after(last, 200)
            if not rows:
                return sent
            sock = self._connect()
            for row in rows:
                sock.sendall(syslog_frame(row, self.source_id, self.hostname))
                last = row["seq"]
                sent += 1
            self._save(last)

    def _run(self) -> None:
        backoff = 0.5
        while True:
            stopping = self._stop.is_set()
            try:
                self.send_pending()
                backoff = 0.5
            except (OSError, ssl.SSLError) as exc:
                log.warning("audit forwarding to %s failed (%s); will retry",
                            self.settings.syslog_host, type(exc).__name__)  # fmt: skip
                self._close()
                backoff = min(backoff * 2, 30.0)
                if stopping:
                    return
                self._stop.wait(backoff)
                continue
            if stopping:
                return
            self._stop.wait(0.5)
