"""``pacsvault fsck``: compare the blob store with the index, and quarantine orphans.

Prints one line per problem (its kind and blob key, never patient data) and a
summary with the counts; exits 1 while anything is wrong. ``--repair`` moves
orphan blobs to ``<blobs>/quarantine/<timestamp>/`` and touches nothing else.
Every run and every repair is audited. ``serve`` runs the quick check at
start-up (:func:`check_at_startup`).
"""

from __future__ import annotations

import argparse
import logging

from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Actor, Principal
from pacsvault.site import Site, open_site
from pacsvault.storage.audit import AuditTrail
from pacsvault.storage.fsck import Kind, Repair, Report, check, repair

log = logging.getLogger("pacsvault.fsck")


def printable(key: str) -> str:
    """*key* with control and undecodable characters escaped (file names come from disk)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


def report_lines(report: Report) -> list[str]:
    """One line per problem, then the summary line with the counts."""
    width = max(len(k.value) for k in Kind)
    lines = []
    for p in report.problems:
        detail = f"  ({p.detail})" if p.detail else ""
        lines.append(f"{p.kind.value.ljust(width)}  {printable(p.key)}{detail}")
    lines.append(report.summary())
    return lines


def repair_lines(fixed: Repair) -> list[str]:
    """One line per orphan moved or kept, then a summary line."""
    lines = [f"quarantined {printable(k)} -> {printable(where)}" for k, where in fixed.moved]
    lines += [f"kept {printable(k)}: {why}" for k, why in fixed.kept]
    lines.append(
        f"repair: {len(fixed.moved)} orphan(s) moved to quarantine batch {fixed.batch}, "
        f"{len(fixed.kept)} kept"
    )
    return lines


def audit_check(audit: AuditTrail, actor: Actor, report: Report) -> None:
    """Record one check: success when clean, warning (with the counts) otherwise."""
    outcome = Outcome.SUCCESS if report.ok else Outcome.WARNING
    audit.record(Action.FSCK, outcome, actor, detail=report.summary())


def audit_repair(audit: AuditTrail, actor: Actor, fixed: Repair) -> None:
    """Record one repair: success when every orphan moved, warning when some were kept."""
    outcome = Outcome.WARNING if fixed.kept else Outcome.SUCCESS
    detail = (
        f"repair: quarantined {len(fixed.moved)} orphan(s) in batch {fixed.batch}, "
        f"kept {len(fixed.kept)}"
    )
    audit.record(Action.FSCK, outcome, actor, detail=detail)


def check_at_startup(site: Site, operator: Principal) -> None:
    """The quick check ``serve`` runs before listening: audited, a warning when not clean.

    Never raises and never stops the server: a problem is logged with its counts
    (the operator runs ``pacsvault fsck`` for the keys).
    """
    try:
        report = check(site.index, site.blobs, quick=True)
    except Exception as exc:
        log.warning("start-up consistency check could not run: %s", type(exc).__name__)
        return
    audit_check(site.audit, operator.actor, report)
    if not report.ok:
        log.warning(
            "blob store and index disagree (%s); run 'pacsvault fsck' for details",
            report.summary(),
        )


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check (and with --repair, quarantine orphans); 1 while any problem remains, else 0."""
    with open_site(args.data_dir) as site:
        actor = site.operator().actor
        report = check(site.index, site.blobs, quick=args.quick)
        audit_check(site.audit, actor, report)
        print("\n".join(report_lines(report)), flush=True)
        remaining = len(report.problems)
        if args.repair:
            fixed = repair(site.index, site.blobs, report)
            audit_repair(site.audit, actor, fixed)
            print("\n".join(repair_lines(fixed)))
            remaining -= len(fixed.moved)
            if len(report.problems) > report.count(Kind.ORPHAN):
                print("missing, damaged and unreadable blobs are reported only: restore them "
                      "from a backup")  # fmt: skip
    return 1 if remaining else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "fsck", parents=[common], help="check that the blob store and the index agree"
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="move orphan blobs (referenced by no index row) to blobs/quarantine/<timestamp>/",
    )
    p.add_argument(
        "--quick", action="store_true", help="check existence and sizes only (no hashing)"
    )
    p.set_defaults(func=cmd_fsck)
