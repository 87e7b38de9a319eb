"""DIMSE messages over an established association: P-DATA fragmentation both ways.

A :class:`Channel` turns the PDUs of one association into whole messages (a
command set plus, when announced, a dataset) and back. Datasets are never
assembled in memory by the channel: as each fragment arrives it is written to a
sink the caller chose when the command arrived (the blob store's staging area for
a C-STORE, a bounded buffer for a query identifier). Outgoing datasets are sent
in fragments that fit the peer's maximum PDU length, straight from a stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from pacsvault.dimse.messages import (
    DATASET_PRESENT,
    DATASET_TYPE,
    MAX_COMMAND_SIZE,
    Command,
    CommandError,
    decode_command,
    encode_command,
)
from pacsvault.dimse.negotiation import Context
from pacsvault.dimse.wire import (
    A_ABORT,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    P_DATA_TF,
    Wire,
    WireError,
    pdata_header,
    pdv_header,
)

#: Fragment size for outgoing data when the peer sets no maximum PDU length.
DEFAULT_SEND_FRAGMENT = 1024 * 1024


class Sink(Protocol):
    """Where the fragments of an incoming dataset go."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...


class Discard:
    """A sink that drops everything (a dataset nobody will read)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


class BoundedBuffer:
    """A sink that keeps at most *limit* bytes in memory and remembers an overflow."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.parts = []
            return
        self.parts.append(bytes(data))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class Message:
    """A complete incoming message: its context, command and the sink holding its dataset."""

    context: Context
    command: Command
    dataset: Sink | None


class Released(Exception):
    """The peer asked to release the association (A-RELEASE-RQ)."""


class Aborted(Exception):
    """The peer aborted the association (A-ABORT)."""


SinkFactory = Callable[[Context, Command], Sink]


class Channel:
    """Messages in and out over one association's :class:`Wire`."""

    def __init__(
        self,
        wire: Wire,
        contexts: dict[int, Context],
        *,
        max_send: int,
        max_receive: int,
    ) -> None:
        self.wire = wire
        self.contexts = contexts
        self.fragment = max_send - 6 if max_send > 6 else DEFAULT_SEND_FRAGMENT
        self.max_receive = max_receive
        self._pdu_left = 0  # unread bytes of the current P-DATA-TF PDU
        self._command = bytearray()
        self._command_cx: int | None = None
        self._pending: tuple[Context, Command, Sink] | None = None  # dataset being received

    # -- receiving -------------------------------------------------------------------------

    def next_message(self, sink_for: SinkFactory) -> Message:
        """Read until one whole message has arrived.

        Raises :class:`Released` on A-RELEASE-RQ, :class:`Aborted` on A-ABORT and
        :class:`WireError` for anything that breaks the protocol.
        """
        while True:
            if self._pdu_left == 0:
                self._next_pdu()
                continue
            message = self._next_pdv(sink_for)
            if message is not None:
                return message

    def _next_pdu(self) -> None:
        limit = self.max_receive + 6 if self.max_receive else 0
        pdu_type, length = self.wire.read_pdu_header(limit)
        if pdu_type == P_DATA_TF:
            if length == 0:
                raise WireError("empty P-DATA-TF PDU", ABORT_INVALID_PARAMETER)
            self._pdu_left = length
            return
        if length > 1024:
            raise WireError("oversized control PDU", ABORT_INVALID_PARAMETER)
        self.wire.skip(length)
        if pdu_type == A_RELEASE_RQ:
            raise Released
        if pdu_type == A_ABORT:
            raise Aborted
        raise WireError(f"unexpected PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)

    def _next_pdv(self, sink_for: SinkFactory) -> Message | None:
        if self._pdu_left < 6:
            raise WireError("P-DATA-TF PDU ends inside a PDV header", ABORT_INVALID_PARAMETER)
        pdv = self.wire.read_pdv_header()
        self._pdu_left -= 6
        if pdv.length > self._pdu_left:
            raise WireError("PDV item longer than its PDU", ABORT_INVALID_PARAMETER)
        self._pdu_left -= pdv.length
        context = self.contexts.get(pdv.context_id)
        if context is None:
            raise WireError("PDV on a presentation context that was not accepted",
                            ABORT_INVALID_PARAMETER)  # fmt: skip
        if pdv.is_command:
            if self._pending is not None:
                raise WireError("command fragment inside a dataset", ABORT_UNEXPECTED_PDU)
            if self._command_cx not in (None, pdv.context_id):
                raise WireError("command fragments on two contexts", ABORT_INVALID_PARAMETER)
            if len(self._command) + pdv.length > MAX_COMMAND_SIZE:
                raise WireError("command set too large", ABORT_INVALID_PARAMETER)
            self._command_cx = pdv.context_id
            for chunk in self.wire.chunks(pdv.length):
                self._command += chunk
            if not pdv.is_last:
                return None
            raw = bytes(self._command)
            self._command.clear()
            self._command_cx = None
            try:
                command = decode_command(raw)
            except CommandError as exc:
                raise WireError(str(exc), ABORT_INVALID_PARAMETER) from None
            if not command.has_dataset:
                return Message(context, command, None)
            self._pending = (context, command, sink_for(context, command))
            return None
        if self._pending is None or self._pending[0].id != pdv.context_id:
            raise WireError("dataset fragment without its command", ABORT_UNEXPECTED_PDU)
        sink = self._pending[2]
        for chunk in self.wire.chunks(pdv.length):
            sink.write(chunk)
        if not pdv.is_last:
            return None
        context, command, sink = self._pending
        self._pending = None
        return Message(context, command, sink)

    # -- sending ---------------------------------------------------------------------------

    def send(self, context_id: int, fields: dict, dataset: bytes | None = None) -> None:
        """Send one message; a small dataset goes with it in the same write."""
        if dataset is not None:
            fields = {**fields, DATASET_TYPE: DATASET_PRESENT}
        out = bytearray()
        self._fragments(out, context_id, encode_command(fields), True)
        if dataset is not None:
            self._fragments(out, context_id, dataset, False)
        self.wire.send(out)

    def _fragments(self, out: bytearray, cid: int, data: bytes, is_command: bool) -> None:
        size = self.fragment
        if not data:
            out += pdata_header(6) + pdv_header(0, cid, is_command, True)
            return
        for start in range(0, len(data), size):
            chunk = data[start : start + size]
            last = start + size >= len(data)
            out += pdata_header(len(chunk) + 6) + pdv_header(len(chunk), cid, is_command, last)
            out += chunk

    def send_stream(self, context_id: int, fields: dict, stream: BinaryIO, length: int) -> None:
        """Send one message whose dataset is the next *length* bytes of *stream*."""
        fields = {**fields, DATASET_TYPE: DATASET_PRESENT}
        head = bytearray()
        self._fragments(head, context_id, encode_command(fields), True)
        self.wire.send(head)
        left = length
        if left == 0:
            self.wire.send(pdata_header(6) + pdv_header(0, context_id, False, True))
            return
        while left > 0:
            n = min(self.fragment, left)
            chunk = stream.read(n)
            if len(chunk) != n:
                raise OSError("stored object is shorter than its index entry")
            left -= n
            self.wire.send(
                pdata_header(n + 6) + pdv_header(n, context_id, False, left == 0) + chunk
            )

    def send_release_reply(self) -> None:
        self.wire.send_pdu(A_RELEASE_RP, b"\x00\x00\x00\x00")

    def send_release_request(self) -> None:
        self.wire.send_pdu(A_RELEASE_RQ, b"\x00\x00\x00\x00")
