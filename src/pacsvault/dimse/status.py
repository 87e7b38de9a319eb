"""DIMSE status codes pacsvault answers with (PS3.4 annexes B and C, PS3.7 annex C)."""

from __future__ import annotations

from pacsvault.storage.archive import StoreResult, StoreStatus

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCEL = 0xFE00
REFUSED_NOT_AUTHORIZED = 0x0124
DUPLICATE_SOP_INSTANCE = 0x0111
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
SUB_OPERATIONS_FAILED = 0xA702  # C-GET/C-MOVE: unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
SUB_OPERATIONS_WARNING = 0xB000  # sub-operations complete, one or more failures
ELEMENTS_DISCARDED = 0xB006
CANNOT_UNDERSTAND = 0xC000

STORE_STATUS = {
    StoreStatus.STORED: SUCCESS,
    StoreStatus.IDENTICAL_DUPLICATE: SUCCESS,
    StoreStatus.REPLACED: SUCCESS,
    StoreStatus.DUPLICATE_KEPT_FIRST: ELEMENTS_DISCARDED,
    StoreStatus.DUPLICATE_REJECTED: DUPLICATE_SOP_INSTANCE,
    StoreStatus.INVALID: CANNOT_UNDERSTAND,
    StoreStatus.MISMATCH: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    StoreStatus.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
    StoreStatus.TOO_LARGE: OUT_OF_RESOURCES,
}


def is_warning(code: int) -> bool:
    """Warning statuses: 0x0001, 0x0107, 0x0116 and 0xBxxx (PS3.7 C.3)."""
    return code in (0x0001, 0x0107, 0x0116) or (code & 0xF000) == 0xB000


def store_status(result: StoreResult) -> tuple[int, str | None]:
    """The C-STORE response status and error comment (no PHI) for an Archive result."""
    code = STORE_STATUS[result.status]
    return code, (result.reason or None) if code != SUCCESS else None
