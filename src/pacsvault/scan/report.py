"""Scan reports: the terminal summary and the JSON document (schema in docs/scanner.md)."""

from __future__ import annotations

import json
import time
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


def html(findings: list[Finding], started: float, finished: float) -> str:
    """A self-contained page a clinic manager can read: worst findings first, plain words."""
    from html import escape

    rows = []
    for f in sorted(findings, key=lambda f: -severity_rank(f.severity)):
        counts = "".join(
            f"<li>{escape(name)}: <b>{c.value}</b> ({escape(c.quality)}; {escape(c.method)})</li>"
            for name, c in f.counts.items()
        )
        rows.append(
            f'<section class="{f.severity}"><h2>{escape(f.severity.upper())}: '
            f"{escape(f.title)}</h2><p class=where>{escape(f.target)} &middot; {escape(f.id)}</p>"
            f"<p>{escape(f.result)}</p>"
            + (f"<ul>{counts}</ul>" if counts else "")
            + (f"<p><b>What to do:</b> {escape(f.remediation)}</p>" if f.remediation else "")
            + "</section>"
        )
    worst = max((severity_rank(f.severity) for f in findings), default=0)
    verdict = (
        "A stranger on the network can read patient data from this system."
        if worst >= severity_rank("critical")
        else "No critical exposure was found."
    )
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    return f"""<!doctype html><html lang=en><meta charset=utf-8>
<title>PACS exposure report</title>
<style>body{{font:16px/1.4 sans-serif;max-width:56em;margin:2em auto;padding:0 1em}}
section{{border-left:6px solid #999;padding:.2em 1em;margin:1em 0;background:#f7f7f7}}
.critical{{border-color:#b00}}.high{{border-color:#e60}}.medium{{border-color:#db0}}
.low{{border-color:#39c}}.info{{border-color:#aaa}}.where{{color:#555;font-size:90%}}</style>
<h1>PACS exposure report</h1><p>Scanned {escape(when)} by pacsvault {escape(__version__)}
({finished - started:.0f} s). Counts only: no patient data was copied.</p>
<p><b>{escape(verdict)}</b></p>
{"".join(rows)}
</html>
"""


def write_html(path: Path, findings: list[Finding], started: float, finished: float) -> None:
    path.write_text(html(findings, started, finished), encoding="utf-8")
