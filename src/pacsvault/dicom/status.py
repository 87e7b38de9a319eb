"""The DICOM statuses pacsvault answers with, in one table (PS3.4 annexes B and C, PS3.7 C).

Each code has its category and meaning here once. DIMSE handlers answer with them,
STOW-RS reports them as failure and warning reasons, and :func:`category` classifies
any code a peer sends back (C-GET/C-MOVE sub-operations).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    SUCCESS = "success"
    PENDING = "pending"
    CANCEL = "cancel"
    WARNING = "warning"
    FAILURE = "failure"


@dataclass(frozen=True)
class Status:
    code: int
    category: Category
    meaning: str


_TABLE = (
    Status(0x0000, Category.SUCCESS, "Success"),
    Status(0xFF00, Category.PENDING, "Pending: matches are continuing"),
    Status(0xFF01, Category.PENDING, "Pending: matches continue, optional keys not supported"),
    Status(0xFE00, Category.CANCEL, "Cancel: sub-operations terminated by a C-CANCEL"),
    Status(0x0111, Category.FAILURE, "Duplicate SOP Instance"),
    Status(0x0124, Category.FAILURE, "Refused: not authorized"),
    Status(0x0211, Category.FAILURE, "Unrecognized operation"),
    Status(0xA700, Category.FAILURE, "Refused: out of resources"),
    Status(0xA702, Category.FAILURE, "Refused: out of resources, unable to do sub-operations"),
    Status(0xA801, Category.FAILURE, "Refused: move destination unknown"),
    Status(0xA900, Category.FAILURE, "Error: dataset/identifier does not match the SOP class"),
    Status(0xB000, Category.WARNING, "Sub-operations complete, one or more failures"),
    Status(0xB006, Category.WARNING, "Elements discarded (here: the first copy was kept)"),
    Status(0xC000, Category.FAILURE, "Error: cannot understand"),
)
STATUSES: dict[int, Status] = {s.code: s for s in _TABLE}

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCEL = 0xFE00
DUPLICATE_SOP_INSTANCE = 0x0111
REFUSED_NOT_AUTHORIZED = 0x0124
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
SUB_OPERATIONS_FAILED = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
SUB_OPERATIONS_WARNING = 0xB000
ELEMENTS_DISCARDED = 0xB006
CANNOT_UNDERSTAND = 0xC000


def category(code: int) -> Category:
    """The category of any status code (PS3.7 C: 0xBxxx and 0x0001/0x0107/0x0116 warn)."""
    if code in STATUSES:
        return STATUSES[code].category
    if code in (0x0001, 0x0107, 0x0116) or (code & 0xF000) == 0xB000:
        return Category.WARNING
    if code in (0xFF00, 0xFF01):
        return Category.PENDING
    return Category.FAILURE


def is_warning(code: int) -> bool:
    return category(code) is Category.WARNING
