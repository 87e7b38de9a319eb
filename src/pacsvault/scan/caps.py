"""C-FIND result caps: spot a server that stops at N answers, and count past it by StudyDate.

Some servers answer at most N matches per C-FIND (Orthanc's ``LimitFindResults`` ends
with status Cancel 0xFE00 without being asked; others end with a failure or a warning,
or simply stop at a round number). The scanner then marks its counts lower bounds and,
when the server matches StudyDate ranges (PS3.4 C.2.2.2.5), splits the date axis in
halves until every range answers fewer than N, and sums (exposure-checks.md sec. 6.3).

Studies without a StudyDate match no range: when the capped answers included such a
study, or a single day still reaches the cap, the total stays a lower bound.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

SUCCESS, CANCEL = 0x0000, 0xFE00
FIRST_DAY = dt.date(1900, 1, 1)
#: Round answer counts typical of a configured limit (checked from 50 answers on).
ROUND_STEP = 50
MAX_QUERIES = 2000


@dataclass
class Run:
    """The outcome of one C-FIND, in counts only."""

    responses: int  # pending answers received
    status: int | None  # the final status (None: the association ended first)
    cancelled: bool = False  # we sent C-CANCEL (the --budget was reached)
    outside: int = 0  # answers whose StudyDate lies outside the range asked for


def server_stopped(run: Run) -> bool:
    """True when the server ended the answers early on its own."""
    if run.cancelled or not run.responses or run.status is None:
        return False
    return run.status != SUCCESS


def cap_evidence(run: Run) -> str:
    """Why these answers look cut short by the server; '' when they do not."""
    if run.cancelled or not run.responses:
        return ""
    if server_stopped(run):
        how = "Cancel" if run.status == CANCEL else f"status 0x{run.status:04X}"
        return f"the server ended the answers with {how} after {run.responses} without being asked"
    n = run.responses
    if n >= ROUND_STEP and (n % ROUND_STEP == 0 or n & (n - 1) == 0):
        return f"{n} answers is a round number, typical of a configured limit"
    return ""


@dataclass
class Partition:
    """How counting past the cap went."""

    queries: int = 0
    incomplete: str = ""  # why the sum is only a lower bound ('' when it is exact)
    stopped: bool = False  # partitioning could not go on (the reason is in incomplete)


#: Runs one study-level C-FIND with StudyDate = the given range, adding its answers to the
#: caller's tally; None when the query could not be run.
Query = Callable[[str], "Run | None"]


def _day(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _range(lo: dt.date, hi: dt.date) -> str:
    """A StudyDate range key: ``YYYYMMDD`` for one day, else ``YYYYMMDD-YYYYMMDD``."""
    return _day(lo) if lo == hi else f"{_day(lo)}-{_day(hi)}"


def partition(query: Query, cap: int, today: dt.date, max_queries: int = MAX_QUERIES) -> Partition:
    """Query StudyDate ranges, halving each one that still reaches *cap*, until all are below.

    The ranges cover every date: before 1900 and after next year as two open ranges, and
    1900 to next year by halving. A range that cannot be split further (one day, or an
    open end) and still reaches the cap makes the sum a lower bound; the others go on.
    """
    last = today.replace(year=today.year + 1)
    out = Partition()
    ends = [f"-{_day(FIRST_DAY - dt.timedelta(days=1))}", f"{_day(last + dt.timedelta(days=1))}-"]
    for key in ends:
        run = _step(query, key, out, max_queries)
        if run is not None and _reaches(run, cap):
            out.incomplete = out.incomplete or f"the open range {key} reaches the cap"
    pending = [(FIRST_DAY, last)]
    while pending and not out.stopped:
        lo, hi = pending.pop()
        run = _step(query, _range(lo, hi), out, max_queries)
        if run is None or not _reaches(run, cap):
            continue
        if lo == hi:
            out.incomplete = out.incomplete or f"a single day in {lo.year} reaches the cap"
            continue
        mid = lo + (hi - lo) // 2
        pending += [(lo, mid), (mid + dt.timedelta(days=1), hi)]
    return out


def _reaches(run: Run, cap: int) -> bool:
    """True when this range's answers may have been cut short too."""
    return run.responses >= cap or server_stopped(run)


def _step(query: Query, key: str, out: Partition, max_queries: int) -> Run | None:
    """Run one range query; on a reason to stop partitioning, record it in *out*."""
    if out.stopped:
        return None
    reason = ""
    run = None
    if out.queries >= max_queries:
        reason = f"stopped after {max_queries} queries"
    else:
        out.queries += 1
        run = query(key)
        if run is None:
            reason = "a date-range query was refused or the association ended"
        elif run.cancelled:
            reason = "the --budget of answers was reached"
        elif run.outside:
            reason = "the server does not match StudyDate ranges"
    if reason:
        out.stopped, out.incomplete = True, reason
        return None
    return run
