"""Checking the audit trail: every edit, deletion, insertion, reordering or truncation shows.

The chain is walked in storage order. Each record's hash must match its content
and the previous record's hash; sequence numbers must climb by one; the head in
``meta`` and every signed checkpoint must point at a record that is still there
with the same hash.

That much an attacker who can write the index defeats by rewriting the chain and
deleting the checkpoints after the change. The evidence outside the index closes
the gap (the rules, with the local checkpoint log *L* and the index *I*):

1. *I* must hold a genesis (signed checkpoint at seq 0). Without one the trail was
   wiped: a site opened by this release always writes one, unless *L* already holds
   a genesis, which is exactly the wiped case.
2. Every genesis/checkpoint line of *L*, and of each copy given with ``--checkpoints``
   (an export, or what a syslog collector received), must carry this site's signature
   and be in *I* unchanged: the checkpoint row and the record at its seq. Lines are
   written after their transaction commits, so no honest line is ever missing from *I*.
3. *L* must exist once *I* has a genesis, and every line but a torn last one (a write
   cut short) must be an entry. A checkpoint in *I* that *L* lacks is only a warning
   (the process stopped between commit and log write; nobody can forge signed ones).
4. Runs: each writing process logs ``start`` and, on a clean stop, a final checkpoint
   of the head. When no writer is alive and every run ended cleanly, the head must be
   the last final checkpoint: records beyond it were added by something that does not
   sign (a failure). A run without its final is a warning: it is running, or it
   crashed (its unsigned tail cannot be vouched for) until a later run that started
   alone (no writer alive) signs past it.

Chains: each node of a scale-out site writes a chain of its own (``index.node``; the
first chain, "", is the only one of a single-node site), with its own head, signed
checkpoints (the statement names the chain) and genesis. Every chain is checked as
above. A node's genesis is announced by an ``audit-chain`` record in the first chain,
so a chain deleted whole (records, checkpoints and head) is still missed: every
announced chain must be in the index with the announced genesis, and every chain in
the index must be announced. The local log is the evidence of the chain of the node
whose data directory it is: rules 3 and 4 apply to that chain only; rule 2 to every
line, whichever chain it names (a copy of another node's log checks that node's chain).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pacsvault.security.audit import (
    GENESIS_HASH,
    GENESIS_SEQ,
    ROOT_CHAIN,
    Action,
    checkpoint_statement,
    parse_announcement,
    record_hash,
)
from pacsvault.security.audit_keys import AuditSigner
from pacsvault.security.audit_log import Entry, LogContents, entry_chain


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else "-"


@dataclass(frozen=True)
class Problem:
    """One place where the trail is not what was written (seq None: the trail as a whole)."""

    seq: int | None
    time: float | None
    what: str
    chain: str = ROOT_CHAIN

    def describe(self) -> str:
        where = f"chain {self.chain}: " if self.chain != ROOT_CHAIN else ""
        if self.seq is None:
            return where + self.what
        when = dt.datetime.fromtimestamp(self.time, dt.UTC).isoformat() if self.time else "-"
        return f"{where}seq {self.seq} ({when}): {self.what}"


@dataclass
class Verdict:
    records: int
    checkpoints: int
    problems: list[Problem]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chains: int = 1

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass
class Trail:
    """One consistent read of one chain of the trail in the index."""

    rows: list[Any]
    head: tuple[int, str]
    checkpoints: dict[int, Any]
    chain: str = ROOT_CHAIN

    @property
    def last(self) -> int:
        """The highest record seq present (0 when none)."""
        return max((r["seq"] for r in self.rows), default=0)

    @property
    def hashes(self) -> dict[int, str]:
        return {r["seq"]: r["hash"] for r in self.rows}


@dataclass
class Evidence:
    """What lies outside the index: the local log, copies, and whether a writer is alive.

    *local* must be read before the index (so each of its lines committed before the
    read); *alive* and *changed* (the local log grew meanwhile) after it.
    """

    local: LogContents | None = None
    copies: list[LogContents] = field(default_factory=list)
    alive: bool = False
    changed: bool = False


def check(
    trails: Trail | dict[str, Trail],
    signer: AuditSigner,
    evidence: Evidence | None = None,
    *,
    chain: str = ROOT_CHAIN,
) -> Verdict:
    """Every inconsistency of *trails* (every chain in the index), against *evidence* when
    given (the module's rules); *chain* is the one the local log is the evidence of."""
    if isinstance(trails, Trail):
        trails = {trails.chain: trails}
    trails = {ROOT_CHAIN: Trail([], (0, GENESIS_HASH), {}), **trails}
    problems: list[Problem] = []
    used = [t for t in trails.values() if t.rows or t.checkpoints]
    verdict = Verdict(sum(len(t.rows) for t in used), sum(len(t.checkpoints) for t in used),
                      problems, chains=max(1, len(used)))  # fmt: skip
    for name in sorted(trails):
        trail = trails[name]
        found = _chain_problems(trail) + _checkpoint_problems(trail, signer)
        if GENESIS_SEQ not in trail.checkpoints:
            found.append(Problem(None, None, "no genesis in the index (no signed checkpoint at "
                                 "seq 0): the audit trail was wiped or replaced"))  # fmt: skip
        problems.extend(_in_chain(found, name))
    problems.extend(_registry_problems(trails))
    if evidence is None:
        return verdict
    if evidence.local is not None:
        _check_local(trails, signer, evidence, verdict, chain)
    for copy in evidence.copies:
        if not copy.of_kind("genesis", "checkpoint"):
            problems.append(Problem(None, None, f"{copy.source} holds no checkpoints"))
        problems.extend(_log_problems(trails, signer, copy))
    return verdict


def _in_chain(problems: list[Problem], chain: str) -> list[Problem]:
    return [Problem(p.seq, p.time, p.what, chain) for p in problems]


def _announces(row: Any) -> bool:
    """True for a record announcing a node's chain (see :func:`_registry_problems`)."""
    if row["action"] != Action.AUDIT_CHAIN.value:
        return False
    return parse_announcement(row["detail"]) is not None


def _registry_problems(trails: dict[str, Trail]) -> list[Problem]:
    """Every node's chain is announced in the first chain, once, and every announced one
    is there with the announced genesis."""
    problems: list[Problem] = []
    announced: dict[str, tuple[str, Any]] = {}
    for row in trails[ROOT_CHAIN].rows:
        if _announces(row):
            name, trail_id = parse_announcement(row["detail"])  # type: ignore[misc]
            if name in announced:
                what = f"announces chain {name} a second time: not written by pacsvault"
                problems.append(Problem(row["seq"], row["time"], what))
                continue
            announced[name] = (trail_id, row)
    for name, (trail_id, row) in sorted(announced.items()):
        genesis = trails[name].checkpoints.get(GENESIS_SEQ) if name in trails else None
        if genesis is None:
            what = (f"announced at seq {row['seq']} of the first chain, but missing from the "
                    "index (no genesis): the chain was deleted")  # fmt: skip
            problems.append(Problem(None, None, what, name))
        elif genesis["hash"] != trail_id:
            what = ("the genesis differs from its announcement in the first chain: the chain "
                    "was replaced")  # fmt: skip
            problems.append(Problem(GENESIS_SEQ, genesis["time"], what, name))
    for name, trail in sorted(trails.items()):
        if name != ROOT_CHAIN and name not in announced and (trail.rows or trail.checkpoints):
            problems.append(Problem(None, None, "not announced in the first chain: it was "
                                    "not started by pacsvault", name))  # fmt: skip
    return problems


def _chain_problems(trail: Trail) -> list[Problem]:
    """The hash chain and the head, as stored."""
    problems: list[Problem] = []
    prev_seq, prev_hash = 0, GENESIS_HASH
    for row in trail.rows:
        seq, t = row["seq"], row["time"]
        if record_hash(row["prev_hash"], dict(row)) != row["hash"]:
            problems.append(Problem(seq, t, "record modified: its content does not match its hash"))
        if seq <= prev_seq:
            problems.append(Problem(seq, t, f"out of order: comes after seq {prev_seq}"))
        elif seq > prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}-{seq - 1}"
            problems.append(Problem(seq, t, f"record(s) {missing} deleted before this one"))
        elif row["prev_hash"] != prev_hash:
            problems.append(
                Problem(seq, t, "chain broken: a record before this one was inserted or replaced")
            )
        prev_seq, prev_hash = max(prev_seq, seq), row["hash"]

    head_seq, head_hash = trail.head
    last = trail.last
    if head_seq > last:
        problems.append(
            Problem(head_seq, None, f"tail truncated: records {last + 1}-{head_seq} are missing")
        )
    elif head_seq and trail.hashes.get(head_seq) != head_hash:
        problems.append(Problem(head_seq, None, "the chain head does not match the last record"))
    return problems


def _checkpoint_problems(trail: Trail, signer: AuditSigner) -> list[Problem]:
    """The signed checkpoints in the index against the records."""
    problems: list[Problem] = []
    hashes, last = trail.hashes, trail.last
    for seq, cp in trail.checkpoints.items():
        statement = checkpoint_statement(seq, cp["hash"], trail.chain)
        if not signer.verify(statement, cp["signature"]):
            problems.append(Problem(seq, cp["time"], "checkpoint signature invalid"))
        elif seq == GENESIS_SEQ:
            continue
        elif seq > last:
            problems.append(
                Problem(
                    seq,
                    cp["time"],
                    f"tail truncated: signed checkpoint at seq {seq}, trail ends at {last}",
                )
            )
        elif hashes.get(seq) != cp["hash"]:
            problems.append(Problem(seq, cp["time"], "record differs from its signed checkpoint"))
    return problems


def _signed_entries(log: LogContents) -> list[tuple[int, Entry]]:
    """Genesis and checkpoint entries, each distinct one once (copies may repeat lines)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for n, e in log.of_kind("genesis", "checkpoint"):
        key = (e.get("kind"), entry_chain(e), e.get("seq"), e.get("hash"), e.get("signature"))
        if key not in seen:
            seen.add(key)
            out.append((n, e))
    return out


def _log_problems(
    trails: dict[str, Trail], signer: AuditSigner, log: LogContents
) -> list[Problem]:
    """Rule 2: every signed line of *log* is in the index, unchanged (in its chain)."""
    problems: list[Problem] = []
    for n, e in _signed_entries(log):
        chain = entry_chain(e)
        trail = trails.get(chain) or Trail([], (0, GENESIS_HASH), {}, chain)
        hashes, last = trail.hashes, trail.last
        seq, digest, sig, t = e.get("seq"), e.get("hash"), e.get("signature"), e.get("time")
        where = f"({log.source} line {n})"
        if not (isinstance(seq, int) and isinstance(digest, str) and isinstance(sig, str)):
            problems.append(Problem(None, None, f"malformed checkpoint entry {where}", chain))
            continue
        t = t if isinstance(t, int | float) else None
        if not signer.verify(checkpoint_statement(seq, digest, chain), sig):
            problems.append(Problem(seq, t, f"not signed by this site's audit key {where}", chain))
            continue
        cp = trail.checkpoints.get(seq)
        if seq == GENESIS_SEQ:
            if cp is None:
                what = "the genesis in the checkpoint log is missing from the index: the trail "
                problems.append(Problem(seq, t, what + f"was wiped or replaced {where}", chain))
            elif cp["hash"] != digest:
                what = "the index's genesis differs from the checkpoint log: the trail was "
                problems.append(Problem(seq, t, what + f"replaced {where}", chain))
            continue
        issues = []
        record = hashes.get(seq)
        if record is None:
            ends = f" (the trail ends at seq {last})" if seq > last else ""
            issues.append(f"its record is missing from the index{ends}")
        elif record != digest:
            issues.append("the record differs from the checkpoint log")
        if cp is None:
            issues.append("the signed checkpoint is missing from the index")
        elif cp["hash"] != digest:
            issues.append("the index's signed checkpoint differs from the checkpoint log")
        if issues:
            problems.append(Problem(seq, t, "; ".join(issues) + f" {where}", chain))
    return problems


def _check_local(
    trails: dict[str, Trail], signer: AuditSigner, ev: Evidence, verdict: Verdict, chain: str
) -> None:
    """Rules 2-4 for the local log (the evidence of *chain*), and the notes it gives rise to."""
    log = ev.local
    assert log is not None
    trail = trails.get(chain) or Trail([], (0, GENESIS_HASH), {}, chain)
    if not log.exists:
        if GENESIS_SEQ in trail.checkpoints:
            what = f"the checkpoint log {log.source} is missing, but the index has a genesis"
            verdict.problems.append(Problem(None, None, what + ": the log was deleted"))
        return
    for n in log.bad_lines:
        verdict.problems.append(Problem(None, None, f"{log.source} line {n} is not a checkpoint "
                                        "log entry: the log was edited"))  # fmt: skip
    if log.torn_tail is not None:
        verdict.warnings.append(f"{log.source} line {log.torn_tail} is incomplete (a write was "
                                "cut short, e.g. by a crash); it is not counted")  # fmt: skip
    for n in log.repaired:
        verdict.notes.append(f"{log.source} line {n} was cut short by a crash and is not counted")
    verdict.problems.extend(_log_problems(trails, signer, log))
    logged = {(e.get("seq"), e.get("hash")) for _n, e in log.of_kind("genesis", "checkpoint")
              if entry_chain(e) == chain}  # fmt: skip
    if not ev.alive and not ev.changed:
        for seq, cp in trail.checkpoints.items():
            if (seq, cp["hash"]) not in logged:
                verdict.warnings.append(
                    f"the signed checkpoint at seq {seq} is in the index but not in the "
                    "checkpoint log (a process stopped between its commit and the log write?)"
                )
    for _n, e in log.of_kind("genesis"):
        if e.get("legacy") and entry_chain(e) == chain:
            verdict.notes.append(
                f"genesis written {_when(e.get('time'))} for a trail made by an older release: "
                f"its {e.get('records', 0)} earlier records are signed from then on"
            )
    _check_runs(trail, ev, verdict)


def _check_runs(trail: Trail, ev: Evidence, verdict: Verdict) -> None:
    """Rule 4: the head after the last clean shutdown is covered; unclean ones are warnings."""
    log = ev.local
    assert log is not None
    chain = trail.chain
    signed = [e for _n, e in log.of_kind("genesis", "checkpoint") if entry_chain(e) == chain]
    last_signed = max((e.get("seq", 0) for e in signed), default=0)
    starts = [(n, e) for n, e in log.of_kind("start") if entry_chain(e) == chain]
    finished = {e.get("run") for e in signed if e.get("final")}
    # A run that started before a later run started alone had ended by then.
    last_alone = max((n for n, e in starts if e.get("alone")), default=0)
    open_runs = [e for n, e in starts if e.get("run") not in finished and n >= last_alone]
    for e in open_runs:
        who = f"pacsvault process {e.get('pid')} ({e.get('program', 'command')}, started " \
              f"{_when(e.get('time'))})"  # fmt: skip
        if ev.alive:
            verdict.warnings.append(
                f"{who} has not stopped: it is running, or it crashed; records after seq "
                f"{last_signed} (the last signed checkpoint) are not covered by a signature yet"
            )
        else:
            verdict.warnings.append(
                f"{who} did not stop cleanly (it crashed or was killed): records after seq "
                f"{last_signed} (the last signed checkpoint) are not covered by a signature; "
                "the next pacsvault command that writes to the trail signs past them"
            )
    if open_runs or ev.alive:
        return
    if ev.changed:
        verdict.warnings.append("the trail changed while it was verified: run verify again")
        return
    final = max((e.get("seq", 0) for e in signed if e.get("final") or e["kind"] == "genesis"),
                default=0)  # fmt: skip
    head = max(trail.head[0], trail.last)
    beyond = [r for r in trail.rows if r["seq"] > final]
    if head > final and len(beyond) == head - final and all(map(_announces, beyond)):
        # Another node's first start: it announces its chain here, vouched for by that
        # chain's signed genesis (checked with the registry), and signs nothing here.
        verdict.notes.append(f"records {final + 1}-{head} announce other nodes' audit chains")
        return
    if head > final:
        verdict.problems.append(Problem(head, None, (
            f"the head is not covered by the checkpoint of the last clean shutdown (seq {final}):"
            f" records {final + 1}-{head} were added without pacsvault signing them"
        ), chain))  # fmt: skip
