"""DIMSE status codes pacsvault answers with (PS3.4 annexes B and C, PS3.7 annex C)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from pacsvault.storage.archive import StoreResult, StoreStatus

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCEL = 0xFE00
REFUSED_NOT_AUTHORIZED = 0x0124
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
ELEMENTS_DISCARDED = 0xB006
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES_MATCHES = 0xA701

STORE_STATUS = {
    StoreStatus.STORED: SUCCESS,
    StoreStatus.IDENTICAL_DUPLICATE: SUCCESS,
    StoreStatus.REPLACED: SUCCESS,
    StoreStatus.DUPLICATE_KEPT_FIRST: ELEMENTS_DISCARDED,
    StoreStatus.DUPLICATE_REJECTED: DUPLICATE_SOP_INSTANCE,
    StoreStatus.INVALID: CANNOT_UNDERSTAND,
    StoreStatus.MISMATCH: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    StoreStatus.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}


def status(code: int, comment: str | None = None) -> Dataset:
    """A status dataset; the comment (no PHI, at most 64 characters) explains a refusal."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def store_status(result: StoreResult) -> Dataset:
    """The C-STORE response status for an Archive store result."""
    code = STORE_STATUS[result.status]
    return status(code, result.reason if code != SUCCESS else None)
