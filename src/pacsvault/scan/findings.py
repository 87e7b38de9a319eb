"""Findings: what a stranger could do, how bad it is, and how to fix it. Never patient data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass
class Count:
    """A count with how sure it is: exact, estimated or lower bound, and the method used."""

    value: int
    quality: str  # "exact", "estimated", "lower bound"
    method: str


@dataclass
class Finding:
    """One result of one check against one target."""

    id: str
    severity: str
    target: str
    title: str
    result: str
    remediation: str = ""
    counts: dict[str, Count] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)
