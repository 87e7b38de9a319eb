"""``pacsvault audit``: verify, search, who-accessed, export, export-checkpoints.

Using them is itself audited.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from pacsvault.cli.base import CommandError
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.audit_log import LogContents, read_copy
from pacsvault.security.audit_message import audit_message
from pacsvault.security.audit_verify import Verdict
from pacsvault.site import Site, open_site
from pacsvault.storage.audit import AuditFilters, parse_time


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _filters(args: argparse.Namespace) -> AuditFilters:
    """The command line's filters."""
    return AuditFilters(**{f: getattr(args, f, None) for f in AuditFilters.__dataclass_fields__})


def _search(args: argparse.Namespace, site: Site) -> list[dict[str, Any]]:
    """The records matching the command line's filters, in chain order."""
    return site.audit.search(_filters(args).query(site.archive.pseudonyms))


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        keys = ("seq", "time", "event_code", "action", "outcome", "actor", "address",
                "study_uid", "patient_ref", "detail")  # fmt: skip
        json.dump([{k: r[k] for k in keys} for r in rows], sys.stdout, indent=1)
        print()
        return
    for r in rows:
        print("\t".join(str(x) for x in (
            _iso(r["time"]), r["action"], r["outcome"], r["actor"] or "-", r["address"] or "-",
            r["study_uid"] or "-", r["detail"] or "",
        )))  # fmt: skip


def _verify(site: Site, copies: list[LogContents]) -> Verdict:
    """Check the trail against the local checkpoint log and *copies* (see audit_verify)."""
    return site.audit.verify(copies)


def _print_verdict(verdict: Verdict) -> None:
    if verdict.intact:
        chains = f" in {verdict.chains} chains" if verdict.chains > 1 else ""
        print(f"audit trail intact: {verdict.records} records, "
              f"{verdict.checkpoints} checkpoints{chains}")  # fmt: skip
    for problem in verdict.problems:
        print(problem.describe())
    for warning in verdict.warnings:
        print(f"warning: {warning}")
    for note in verdict.notes:
        print(f"note: {note}")
    if not verdict.intact:
        print(f"audit trail NOT intact: {len(verdict.problems)} problem(s)")


def _export_checkpoints(site: Site, out_path: str | None) -> int:
    """Write the checkpoint log's complete lines to *out_path* (0600) or stdout."""
    text = site.audit.log.complete_text()
    if out_path:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    else:
        sys.stdout.write(text)
    return text.count("\n")


def _copies(args: argparse.Namespace) -> list[LogContents]:
    copies = []
    for path in getattr(args, "checkpoints", None) or []:
        try:
            copies.append(read_copy(path))
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    return copies


def cmd_verify(args: argparse.Namespace) -> int:
    copies = _copies(args)
    with open_site(args.data_dir) as site:
        verdict = _verify(site, copies)
        # Best effort: a damaged trail may refuse new records, and verify is the tool
        # that says what is wrong with it.
        site.audit.record(
            Action.AUDIT_USE, Outcome.SUCCESS, site.operator().actor,
            detail=f"verify: {'intact' if verdict.intact else 'problems found'}"
            f"{f' (+{len(copies)} checkpoint copies)' if copies else ''}",
            best_effort=True,
        )  # fmt: skip
    _print_verdict(verdict)
    return 0 if verdict.intact else 1


def cmd_export_checkpoints(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        lines = _export_checkpoints(site, args.out)
        site.audit.record(Action.EXPORT, Outcome.SUCCESS, site.operator().actor,
                          detail=f"checkpoint log: {lines} lines")  # fmt: skip
    if args.out:
        print(f"{lines} checkpoint log lines written to {args.out}")
    return 0


#: The actions that disclose patient data, for an accounting of disclosures.
DISCLOSURES = ("store", "import", "retrieve", "view", "export", "delete")


def cmd_search(args: argparse.Namespace) -> int:
    """``audit search`` and ``audit who-accessed`` (disclosures of one patient)."""
    with open_site(args.data_dir) as site:
        rows = _search(args, site)
        if args.audit_cmd == "who-accessed":
            rows = [r for r in rows if r["action"] in DISCLOSURES]
        # The patient ID itself is never written down, only that a lookup happened.
        site.audit.record(Action.AUDIT_USE, Outcome.SUCCESS, site.operator().actor,
                          detail=_filters(args).describe(args.audit_cmd, len(rows)))  # fmt: skip
    _print(rows, getattr(args, "json", False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        rows = _search(args, site)
        site.audit.record(Action.EXPORT, Outcome.SUCCESS, site.operator().actor,
                          detail=f"audit export: {len(rows)} messages")  # fmt: skip
        source = site.settings.dicom.ae_title
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for row in rows:
            out.write(audit_message(row, source) + "\n")
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"{len(rows)} audit messages written to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``pacsvault audit ...``."""
    p = sub.add_parser("audit", parents=[common], help="verify, search and export the audit trail")
    audit_sub = p.add_subparsers(dest="audit_cmd", required=True)
    v = audit_sub.add_parser(
        "verify", parents=[common], help="check the hash chain, checkpoints and checkpoint log"
    )
    v.add_argument(
        "--checkpoints", metavar="FILE", type=Path, action="append",
        help="also check against this copy of the checkpoint log (an export-checkpoints "
        "file, or the AUDIT-CHECKPOINT messages a syslog collector received); repeatable",
    )  # fmt: skip
    v.set_defaults(func=cmd_verify)
    x = audit_sub.add_parser(
        "export-checkpoints", parents=[common],
        help="copy the checkpoint log (to keep off this machine)",
    )  # fmt: skip
    x.add_argument("--out", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")
    x.set_defaults(func=cmd_export_checkpoints)

    def filters(q: argparse.ArgumentParser, patient_required: bool = False) -> None:
        q.add_argument("--patient", metavar="ID", required=patient_required,
                       help="patient ID (matched through its pseudonym)")  # fmt: skip
        q.add_argument("--user")
        q.add_argument("--peer")
        q.add_argument("--study", metavar="UID")
        q.add_argument("--action", choices=[a.value for a in Action])
        q.add_argument("--outcome", choices=[o.value for o in Outcome])
        q.add_argument("--since", type=_time, metavar="TIME")
        q.add_argument("--until", type=_time, metavar="TIME")

    q = audit_sub.add_parser("search", parents=[common], help="find audit records")
    filters(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_search)
    w = audit_sub.add_parser("who-accessed", parents=[common],
                             help="accounting of disclosures for one patient")  # fmt: skip
    filters(w, patient_required=True)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_search)
    e = audit_sub.add_parser(
        "export", parents=[common], help="DICOM audit messages (PS3.15 A.5 XML), one per line"
    )
    filters(e)
    e.add_argument("--out", metavar="FILE")
    e.set_defaults(func=cmd_export)
