"""``pacsvault audit``: verify, search, who-accessed, export. Using them is itself audited."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from sqlalchemy import select

from pacsvault.security.audit import Action, Outcome
from pacsvault.security.audit_message import audit_message
from pacsvault.security.audit_verify import verify
from pacsvault.security.identity import local_operator
from pacsvault.security.secrets import pseudonymizer
from pacsvault.storage import schema as s


def _time(text: str) -> float:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "use ISO 8601, e.g. 2026-11-23 or 2026-11-23T10:00"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()
    return value.timestamp()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _search(args: argparse.Namespace, site: Any) -> list[dict[str, Any]]:
    a = s.audit_events
    q = select(a).order_by(a.c.seq)
    if getattr(args, "user", None):
        q = q.where(a.c.actor == f"user:{args.user}")
    if getattr(args, "peer", None):
        q = q.where(a.c.actor == f"peer:{args.peer}")
    if getattr(args, "patient", None):
        q = q.where(a.c.patient_ref == pseudonymizer(args.data_dir).ref(args.patient))
    if getattr(args, "study", None):
        q = q.where(a.c.study_uid == args.study)
    if getattr(args, "action", None):
        q = q.where(a.c.action == args.action)
    if getattr(args, "outcome", None):
        q = q.where(a.c.outcome == args.outcome)
    if getattr(args, "since", None):
        q = q.where(a.c.time >= args.since)
    if getattr(args, "until", None):
        q = q.where(a.c.time <= args.until)
    with site.index.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


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


def cmd_audit(args: argparse.Namespace) -> int:
    from pacsvault.site import open_site

    site = open_site(args.data_dir)
    actor = local_operator()
    try:
        if args.audit_cmd == "verify":
            with site.index.engine.connect() as conn:
                verdict = verify(conn, site.archive.audit.signer)  # type: ignore[arg-type]
            site.archive.audit.record(
                Action.AUDIT_USE, Outcome.SUCCESS, actor,
                detail=f"verify: {'intact' if verdict.intact else 'problems found'}",
            )  # fmt: skip
            if verdict.intact:
                print(f"audit trail intact: {verdict.records} records, "
                      f"{verdict.checkpoints} checkpoints")  # fmt: skip
                return 0
            for problem in verdict.problems:
                print(problem.describe())
            return 1
        if args.audit_cmd in ("search", "who-accessed"):
            rows = _search(args, site)
            if args.audit_cmd == "who-accessed":
                rows = [r for r in rows if r["action"] in ("store", "import", "retrieve",
                        "view", "export", "delete")]  # fmt: skip
            # The patient ID itself is never written down, only that a lookup happened.
            used = [k for k in ("user", "peer", "patient", "study", "action", "outcome",
                                "since", "until") if getattr(args, k, None)]  # fmt: skip
            site.archive.audit.record(
                Action.AUDIT_USE, Outcome.SUCCESS, actor,
                detail=f"{args.audit_cmd} by {','.join(used) or 'nothing'}: {len(rows)} records",
            )  # fmt: skip
            _print(rows, getattr(args, "json", False))
            return 0
        # export
        rows = _search(args, site)
        source = site.settings.dicom.ae_title
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
        try:
            for row in rows:
                out.write(audit_message(row, source) + "\n")
        finally:
            if args.out:
                out.close()
        site.archive.audit.record(
            Action.EXPORT, Outcome.SUCCESS, actor, detail=f"audit export: {len(rows)} messages"
        )
        if args.out:
            print(f"{len(rows)} audit messages written to {args.out}")
        return 0
    finally:
        site.close()


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``pacsvault audit ...``."""
    p = sub.add_parser("audit", parents=[common], help="verify, search and export the audit trail")
    audit_sub = p.add_subparsers(dest="audit_cmd", required=True)
    audit_sub.add_parser("verify", parents=[common], help="check the hash chain and checkpoints")

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
    w = audit_sub.add_parser("who-accessed", parents=[common],
                             help="accounting of disclosures for one patient")  # fmt: skip
    filters(w, patient_required=True)
    w.add_argument("--json", action="store_true")
    e = audit_sub.add_parser(
        "export", parents=[common], help="DICOM audit messages (PS3.15 A.5 XML), one per line"
    )
    filters(e)
    e.add_argument("--out", metavar="FILE")
    p.set_defaults(func=cmd_audit)
