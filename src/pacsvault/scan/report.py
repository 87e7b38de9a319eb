"""Scan reports: the terminal summary and the JSON document (schema in docs/scanner.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pacsvault import __version__
from pacsvault.scan.findings import Finding, severity_rank

SCHEMA_VERSION = 1
_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m",
            "low": "\033[36m", "info": "\033[2m"}  # fmt: skip


def to_json(findings: list[Finding], started: float, finished: float) -> dict[str, Any]:
    """The report document: findings sorted by severity, worst first."""
    ordered = sorted(findings, key=lambda f: -severity_rank(f.severity))
    return {
        "schema": SCHEMA_VERSION,
        "scanner": f"pacsvault {__version__}",
        "started": started,
        "finished": finished,
        "findings": [f.to_json() for f in ordered],
    }


def write_json(path: Path, findings: list[Finding], started: float, finished: float) -> None:
    path.write_text(json.dumps(to_json(findings, started, finished), indent=1), encoding="utf-8")


def terminal(findings: list[Finding], colour: bool) -> str:
    """Severity-coloured summary with counts and remediation."""
    lines = []
    for f in sorted(findings, key=lambda f: -severity_rank(f.severity)):
        tag = f.severity.upper()
        if colour:
            tag = f"{_COLOURS[f.severity]}{tag}\033[0m"
        lines.append(f"[{tag}] {f.target} {f.id}: {f.title}")
        lines.append(f"    {f.result}")
        for name, count in f.counts.items():
            lines.append(f"    {name}: {count.value} ({count.quality}; {count.method})")
        if f.remediation:
            lines.append(f"    fix: {f.remediation}")
    return "\n".join(lines)
