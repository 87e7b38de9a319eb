"""Application Entity titles (PS3.5 table 6.2-1, VR AE): the one rule every part checks."""

from __future__ import annotations

AE_TITLE_RULE = "an AE title is 1-16 printable ASCII characters without backslash"


def is_ae_title(text: str) -> bool:
    """True for 1-16 printable ASCII characters without backslash, once trimmed of spaces."""
    text = text.strip()
    return 1 <= len(text) <= 16 and "\\" not in text and all(0x20 <= ord(c) <= 0x7E for c in text)


def validate_ae_title(text: str) -> str:
    """*text* without surrounding spaces; raises ValueError (saying the rule) otherwise."""
    if not is_ae_title(text):
        raise ValueError(AE_TITLE_RULE)
    return text.strip()
