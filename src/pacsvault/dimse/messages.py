"""DIMSE messages (PS3.7 section 9 and annex E): command sets encoded and decoded by hand.

A command set is a short list of group 0000 elements in implicit VR little
endian. Encoding it directly (no pydicom Dataset) keeps the per-message cost of
a C-STORE response or a C-FIND answer small; identifiers and other datasets
still go through pydicom (:func:`encode_dataset`, :func:`decode_dataset`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pacsvault.dicom.transcode import decode_dataset, encode_dataset

__all__ = ["decode_dataset", "encode_dataset"]

C_STORE_RQ = 0x0001
C_GET_RQ = 0x0010
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0000

AFFECTED_SOP_CLASS = 0x00000002
REQUESTED_SOP_CLASS = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
DATASET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
REMAINING = 0x00001020
COMPLETED = 0x00001021
FAILED = 0x00001022
WARNING = 0x00001023
MOVE_ORIGINATOR_AET = 0x00001030
MOVE_ORIGINATOR_ID = 0x00001031

#: VR of every command element we read or write; others are kept as raw bytes.
_VR = {
    AFFECTED_SOP_CLASS: "UI",
    REQUESTED_SOP_CLASS: "UI",
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    RESPONDED_TO: "US",
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    DATASET_TYPE: "US",
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    0x00000903: "US",  # Error ID
    AFFECTED_SOP_INSTANCE: "UI",
    0x00001001: "UI",  # Requested SOP Instance UID
    REMAINING: "US",
    COMPLETED: "US",
    FAILED: "US",
    WARNING: "US",
    MOVE_ORIGINATOR_AET: "AE",
    MOVE_ORIGINATOR_ID: "US",
}

MAX_COMMAND_SIZE = 64 * 1024
_ELEMENT = struct.Struct("<HHL")


class CommandError(ValueError):
    """A command set that cannot be decoded."""


@dataclass
class Command:
    """A decoded command set: element values by tag (ints for US/UL, text for strings)."""

    fields: dict[int, int | str | bytes] = field(default_factory=dict)

    def get_int(self, tag: int, default: int = 0) -> int:
        value = self.fields.get(tag, default)
        return value if isinstance(value, int) else default

    def get_text(self, tag: int) -> str:
        value = self.fields.get(tag, "")
        return value if isinstance(value, str) else ""

    @property
    def command_field(self) -> int:
        return self.get_int(COMMAND_FIELD, -1)

    @property
    def message_id(self) -> int:
        return self.get_int(MESSAGE_ID)

    @property
    def has_dataset(self) -> bool:
        return self.get_int(DATASET_TYPE, NO_DATASET) != NO_DATASET

    @property
    def status(self) -> int:
        return self.get_int(STATUS, -1)


def _encode_value(vr: str, value: int | str | bytes) -> bytes:
    if vr == "US":
        return struct.pack("<H", int(value) & 0xFFFF)  # type: ignore[arg-type]
    if vr == "UL":
        return struct.pack("<L", int(value))  # type: ignore[arg-type]
    if vr == "AT":
        tag = int(value)  # type: ignore[arg-type]
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    raw = value if isinstance(value, bytes) else str(value).encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_command(fields: dict[int, int | str | bytes]) -> bytes:
    """A command set in implicit VR little endian, with its group length first."""
    body = bytearray()
    for tag in sorted(fields):
        value = fields[tag]
        raw = _encode_value(_VR.get(tag, "OB"), value)
        body += _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + bytes(body)


def decode_command(data: bytes) -> Command:
    """Decode a command set; raises :class:`CommandError` when it is malformed."""
    if len(data) > MAX_COMMAND_SIZE:
        raise CommandError("command set too large")
    out: dict[int, int | str | bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise CommandError("command set ends inside an element header")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise CommandError("malformed command set")
        raw = data[pos : pos + length]
        pos += length
        tag = elem
        vr = _VR.get(tag)
        if vr == "US":
            if length != 2:
                raise CommandError("bad US value in command set")
            out[tag] = struct.unpack("<H", raw)[0]
        elif vr == "AT":
            out[tag] = raw
        elif vr in ("UI", "AE", "LO"):
            out[tag] = raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")
        elif tag == 0:
            continue
        else:
            out[tag] = bytes(raw)
    return Command(out)


def response(
    request: Command, command_field: int, status: int, **extra: int | str | bytes
) -> dict[int, int | str | bytes]:
    """The fields of a response to *request* (no dataset unless the caller changes it)."""
    fields: dict[int, int | str | bytes] = {
        COMMAND_FIELD: command_field,
        RESPONDED_TO: request.message_id,
        DATASET_TYPE: NO_DATASET,
        STATUS: status,
    }
    sop_class = request.get_text(AFFECTED_SOP_CLASS)
    if sop_class:
        fields[AFFECTED_SOP_CLASS] = sop_class
    for key, value in extra.items():
        fields[_EXTRA[key]] = value
    return fields


_EXTRA = {
    "error_comment": ERROR_COMMENT,
    "affected_instance": AFFECTED_SOP_INSTANCE,
    "remaining": REMAINING,
    "completed": COMPLETED,
    "failed": FAILED,
    "warning": WARNING,
    "offending_element": OFFENDING_ELEMENT,
}
