"""The DICOM upper layer on the wire (PS3.8 section 9): PDUs read and written on a socket.

A :class:`Wire` reads PDUs from a blocking socket (plain or TLS) through one
fixed buffer, so memory per connection does not depend on what the peer sends:
a PDU header declaring more than the current cap ends the connection before its
body is read, and P-DATA values are handed out in bounded slices that the caller
streams on (to the blob store, for a C-STORE). Nothing here knows about peers,
services or DIMSE; it frames bytes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT source and reasons (PS3.8 9.3.8)
ABORT_SOURCE_PROVIDER = 0x02
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06

_BUFFER = 256 * 1024
_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")


class WireError(Exception):
    """The peer broke the protocol or the connection; the association must end.

    ``abort_reason`` is the A-ABORT provider reason to send, or None when the
    connection is already gone (nothing can be sent).
    """

    def __init__(self, message: str, abort_reason: int | None = ABORT_NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


class ConnectionClosed(WireError):
    """The peer closed the connection (or it timed out)."""

    def __init__(self, message: str = "connection closed by peer") -> None:
        super().__init__(message, None)


@dataclass(frozen=True)
class PDV:
    """The header of one presentation data value item; its value follows on the wire."""

    context_id: int
    is_command: bool
    is_last: bool
    length: int  # bytes of the value (the item length minus the two header bytes)


class Wire:
    """Buffered PDU reader and writer over one connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are _buf[_start:_end]
        self._end = 0

    # -- reading ---------------------------------------------------------------------------

    def _fill(self) -> None:
        """Read at least one more byte into the buffer (compacting it first if needed)."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            n = self._end - self._start
            self._buf[:n] = self._buf[self._start : self._end]
            self._start, self._end = 0, n
        try:
            got = self.sock.recv_into(self._view[self._end :])
        except TimeoutError:
            raise ConnectionClosed("connection timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionClosed(f"connection failed ({type(exc).__name__})") from None
        if got == 0:
            raise ConnectionClosed()
        self._end += got

    def read(self, n: int) -> bytes:
        """Exactly *n* bytes (n must not exceed the buffer)."""
        while self._end - self._start < n:
            self._fill()
        out = bytes(self._view[self._start : self._start + n])
        self._start += n
        return out

    def chunks(self, n: int) -> Iterator[memoryview]:
        """The next *n* bytes as a sequence of buffer slices, each valid until the next call.

        Never holds more than the buffer in memory, whatever *n* is.
        """
        remaining = n
        while remaining:
            if self._start == self._end:
                self._fill()
            take = min(remaining, self._end - self._start)
            chunk = self._view[self._start : self._start + take]
            self._start += take
            remaining -= take
            yield chunk

    def skip(self, n: int) -> None:
        """Read and drop *n* bytes."""
        for _ in self.chunks(n):
            pass

    def read_pdu_header(self, max_length: int) -> tuple[int, int]:
        """(PDU type, length) of the next PDU.

        Raises :class:`WireError` for an unknown PDU type or a length above
        *max_length* (0: no limit), before any of the body is read.
        """
        pdu_type, length = _HEADER.unpack(self.read(6))
        if pdu_type not in PDU_TYPES:
            raise WireError(f"unknown PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
        if max_length and length > max_length:
            raise WireError(
                f"PDU of {length} bytes exceeds the limit of {max_length}",
                ABORT_INVALID_PARAMETER,
            )
        return pdu_type, length

    def read_body(self, length: int) -> bytes:
        """A whole (small, already size-checked) PDU body."""
        return b"".join(bytes(c) for c in self.chunks(length))

    def read_pdv_header(self) -> PDV:
        """The next PDV item header inside a P-DATA-TF body (6 bytes consumed)."""
        item_length, context_id, control = _PDV_HEADER.unpack(self.read(6))
        if item_length < 2:
            raise WireError("PDV item shorter than its header", ABORT_INVALID_PARAMETER)
        return PDV(context_id, bool(control & 0x01), bool(control & 0x02), item_length - 2)

    def has_pending(self) -> bool:
        """True when bytes from the peer are waiting (used to notice a C-CANCEL)."""
        if self._end > self._start:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True  # let the next read report the failure
        return bool(ready)

    # -- writing ---------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ConnectionClosed("connection timed out while sending") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionClosed(f"send failed ({type(exc).__name__})") from None

    def send_pdu(self, pdu_type: int, body: bytes) -> None:
        self.send(_HEADER.pack(pdu_type, len(body)) + body)

    def send_abort(self, source: int = ABORT_SOURCE_PROVIDER, reason: int = 0) -> None:
        """Send an A-ABORT, ignoring a connection that is already gone."""
        with contextlib.suppress(ConnectionClosed):
            self.send_pdu(A_ABORT, bytes((0, 0, source, reason)))

    def send_reject(self, result: int, source: int, reason: int) -> None:
        self.send_pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))

    def close(self) -> None:
        """Close the socket (a TLS socket without waiting for the peer's close_notify)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def pdata_header(pdu_body_length: int) -> bytes:
    """The 6-byte P-DATA-TF header for a body of *pdu_body_length* bytes."""
    return _HEADER.pack(P_DATA_TF, pdu_body_length)


def pdv_header(value_length: int, context_id: int, is_command: bool, is_last: bool) -> bytes:
    """The 6-byte PDV item header for a value of *value_length* bytes."""
    control = (0x01 if is_command else 0x00) | (0x02 if is_last else 0x00)
    return _PDV_HEADER.pack(value_length + 2, context_id, control)
