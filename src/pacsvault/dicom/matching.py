"""C-FIND / QIDO-RS matching rules (PS3.4 C.2.2.2), independent of any database.

A query key's raw value becomes a :data:`Condition`; storage translates each
condition into SQL. Values arrive already decoded to ``str`` using the query's
SpecificCharacterSet, so matching is on text, whatever character set either side
used.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsvault.dicom.attributes import IndexAttribute, Kind, normalize_number, normalize_time
from pacsvault.dicom.uids import is_safe_uid


class InvalidQuery(ValueError):
    """A query key whose value cannot be matched (malformed range, bad UID...)."""


#: Bounds on what one query key may hold: a list of UIDs (PS3.4 C.2.2.2.2) and the
#: text of any other value (the longest VR a key has, UC/LT, is far below this).
MAX_LIST_VALUES = 1000
MAX_VALUE_LENGTH = 1024


@dataclass(frozen=True)
class Exact:
    """Single value matching; ``fold`` means case-insensitive."""

    value: str
    fold: bool = False


@dataclass(frozen=True)
class Wildcard:
    """Wildcard matching: ``*`` any run of characters, ``?`` exactly one."""

    pattern: str
    fold: bool = False


@dataclass(frozen=True)
class AnyOf:
    """List of UID matching (also used for value lists of codes)."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    """Inclusive range over normalized text; an open end is None."""

    low: str | None
    high: str | None


Condition = Exact | Wildcard | AnyOf | Range


def _strip(raw: str, kind: Kind) -> str:
    # PN and text values may carry padding and empty trailing components.
    value = raw.strip()
    if kind is Kind.NAME:
        value = value.rstrip("^=")
    return value


def _date_bound(value: str, high: bool) -> str:
    value = value.strip().replace(".", "")
    if not value.isdigit() or len(value) != 8:
        raise InvalidQuery("date values must be YYYYMMDD")
    return value


def _time_bound(value: str, high: bool) -> str:
    value = value.strip().replace(":", "")
    main, _, fraction = value.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise InvalidQuery("time values must be HH[MM[SS[.F]]]")
    if high:
        main = main + "595959"[len(main) :]
        fraction = fraction.ljust(6, "9") if fraction else "999999"
        return f"{main}.{fraction}"
    return normalize_time(value)


def _range(raw: str, bound) -> Range:  # type: ignore[no-untyped-def]
    low, _, high = raw.partition("-")
    low_v = bound(low, False) if low.strip() else None
    high_v = bound(high, True) if high.strip() else None
    if low_v is None and high_v is None:
        raise InvalidQuery("a range needs at least one bound")
    return Range(low_v, high_v)


def parse_condition(attr: IndexAttribute, raw: str | None) -> Condition | None:
    """Turn the raw value of a query key into a condition; None means universal matching.

    Raises :class:`InvalidQuery` for values the rules do not allow, such as a malformed
    range or an invalid UID in a UID list.
    """
    if raw is None:
        return None
    if attr.kind is not Kind.UID and len(raw) > MAX_VALUE_LENGTH:
        raise InvalidQuery(f"{attr.keyword} is longer than {MAX_VALUE_LENGTH} characters")
    if attr.kind is Kind.UID and len(raw) > MAX_LIST_VALUES * 65:
        raise InvalidQuery(f"{attr.keyword} lists more than {MAX_LIST_VALUES} UIDs")
    value = _strip(str(raw), attr.kind)
    if value == "" or value == "*":
        return None
    kind = attr.kind
    if kind is Kind.COUNT:
        return None  # counts are return keys only
    if kind is Kind.UID:
        uids = tuple(v.strip() for v in value.split("\\") if v.strip())
        if len(uids) > MAX_LIST_VALUES:
            raise InvalidQuery(f"{attr.keyword} lists more than {MAX_LIST_VALUES} UIDs")
        if not all(is_safe_uid(u) for u in uids):
            raise InvalidQuery(f"{attr.keyword} holds an invalid UID")
        return Exact(uids[0]) if len(uids) == 1 else AnyOf(uids)
    if kind is Kind.CODES:
        codes = tuple(v.strip() for v in value.split("\\") if v.strip())
        if len(codes) > MAX_LIST_VALUES:
            raise InvalidQuery(f"{attr.keyword} lists more than {MAX_LIST_VALUES} values")
        return AnyOf(codes)
    if kind is Kind.DATE:
        if "-" in value:
            return _range(value, _date_bound)
        return Exact(_date_bound(value, False))
    if kind is Kind.TIME:
        if "-" in value:
            return _range(value, _time_bound)
        return Exact(normalize_time(value))
    if kind is Kind.NUMBER and "*" not in value and "?" not in value:
        return Exact(normalize_number(value))
    folded = kind is Kind.NAME
    if "*" in value or "?" in value:
        return Wildcard(value, folded)
    return Exact(value, folded)


def fold(value: str | None) -> str | None:
    """The case-insensitive form under which names are matched."""
    return value.casefold() if value is not None else None
