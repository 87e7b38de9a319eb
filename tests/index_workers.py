"""Work for other processes in the index tests (several nodes writing one PostgreSQL index).

Each function opens its own Index on the URL it is given, as a separate `pacsvault`
process would, waits at a barrier so the processes really run at once, and returns
something picklable.
"""

from __future__ import annotations

import time
from typing import Any

from pacsvault.dicom.attributes import Level
from pacsvault.storage.index import Index, InstanceRecord, write_transaction


def _wait(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def instance_record(study: str, series: str, sop: str, *, patient_id: str = "P-1",
                    name: str = "DOE^JANE", modality: str = "CT",
                    sop_class: str = "1.2.840.10008.5.1.4.1.1.2") -> InstanceRecord:  # fmt: skip
    """An InstanceRecord with the attributes the matching tests use."""
    return InstanceRecord(
        patient={"patient_id": patient_id, "patient_name": name},
        study={"study_instance_uid": study, "study_date": "20240102"},
        series={"series_instance_uid": series, "modality": modality},
        instance={"sop_instance_uid": sop, "sop_class_uid": sop_class},
        charset=None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"blob/{sop}",
        size=10,
        sha256="0" * 64,
    )


def ingest(url: str, worker: int, count: int, start_at: float) -> int:
    """Record *count* instances into the same few studies, series and patients as every
    other worker, one transaction each (as a node's writer under light load)."""
    index = Index(url)
    _wait(start_at)
    done = 0
    for n in range(count):
        study = f"1.2.3.{n % 3}"
        modality = ("CT", "MR", "PT")[worker % 3]
        # A SOP class of its own: every instance adds to its study's list of classes.
        rec = instance_record(study, f"{study}.{n % 2}", f"1.2.9.{worker}.{n}",
                              patient_id=f"P-{n % 3}", modality=modality,
                              sop_class=f"1.2.840.99.{worker}.{n}")  # fmt: skip
        for _attempt in range(20):
            try:
                with write_transaction(index.engine) as conn:
                    index.record_instance(conn, rec)
                break
            except Exception as exc:  # a deadlock between nodes: the writer retries too
                if getattr(getattr(exc, "orig", None), "sqlstate", None) != "40P01":
                    raise
        done += 1
    index.close()
    return done


def lockout_failures(url: str, key: str, count: int, threshold: int, start_at: float) -> list:
    """Count *count* failures of *key*; the keys this process's failures locked out.

    Lockouts here end before they begin (a negative duration), so every *threshold*-th
    failure of all processes together locks the key again: counted one at a time, the
    locks number exactly total // threshold.
    """
    from pacsvault.storage.audit import AuditTrail
    from pacsvault.storage.lockout import Lockout

    index = Index(url)
    lockout = Lockout(index, AuditTrail(index), threshold=threshold, window=600, duration=-1)
    _wait(start_at)
    locked: list[str] = []
    for _ in range(count):
        locked += lockout.failure(key, reason="test")
    index.close()
    return locked


def audit_records(url: str, chain: str, count: int, start_at: float) -> int:
    """Append *count* audit records to *chain*, one transaction each."""
    from pacsvault.security.audit import Action, Outcome
    from pacsvault.storage.audit import AuditTrail

    index = Index(url)
    trail = AuditTrail(index, chain=chain)
    _wait(start_at)
    for n in range(count):
        trail.record(Action.QUERY, Outcome.SUCCESS, None, detail=f"{chain} {n}")
    index.close()
    return count


def query_levels(url: str) -> dict[str, Any]:
    """Counts per level, read by another process."""
    index = Index(url)
    try:
        return {level.name: len(list(index.query(level, []))) for level in Level}
    finally:
        index.close()
