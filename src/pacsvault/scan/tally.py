"""Counting studies from query answers without keeping them (exposure-checks.md sec. 6.3).

Shared by the C-FIND and the QIDO-RS counts. Identifiers are hashed in memory with a
per-run salt, for de-duplication only; nothing identifying is kept or written, only
counts, the modalities, the StudyDate range and *which* identifying fields were readable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

#: Identifying fields whose presence (never value) is reported.
IDENTIFYING = ("PatientName", "PatientBirthDate", "PatientID", "ReferringPhysicianName",
               "AccessionNumber", "StudyDescription")  # fmt: skip


@dataclass
class Tally:
    """Counts gathered from study answers; identifiers only as salted hashes in memory."""

    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    responses: int = 0  # distinct studies
    read: int = 0  # answers read, repeats included (what --budget limits)
    studies: set[str] = field(default_factory=set)  # hashed StudyInstanceUIDs
    patients: set[str] = field(default_factory=set)
    series: int = 0
    instances: int = 0
    counts_complete: bool = True
    modalities: set[str] = field(default_factory=set)
    first_date: str = ""
    last_date: str = ""
    fields_seen: set[str] = field(default_factory=set)
    capped: bool = False  # we sent C-CANCEL at the budget
    undated: int = 0  # studies without a StudyDate (date partitions cannot see them)
    sample_study: str = ""  # one StudyInstanceUID, kept in memory for the retrieve checks only

    def _hash(self, value: str) -> str:
        return hmac.new(self.salt, value.encode(), hashlib.sha256).hexdigest()

    def add_json(self, study: Any) -> bool:
        """Count one QIDO-RS answer (DICOM JSON); False when repeated or not a study."""
        if not isinstance(study, dict):
            return False
        try:
            ds = Dataset.from_json(study)
        except Exception:  # a malformed answer still counts as a study, without details
            self.counts_complete = False
            ds = Dataset()
        return self.add_study(ds)

    def add_study(self, ds: Dataset) -> bool:
        """Count one study answer; False when this study was counted already."""
        self.read += 1
        uid = str(ds.get("StudyInstanceUID", "") or "")
        key = self._hash(uid) if uid else f"answer-{self.read}"
        if key in self.studies:
            return False
        self.studies.add(key)
        self.responses += 1
        if not self.sample_study:
            self.sample_study = uid
        self.patients.add(self._hash(str(ds.get("PatientID", "") or "")))
        for name in IDENTIFYING:
            if ds.get(name):
                self.fields_seen.add(name)
        try:
            self.series += int(ds.get("NumberOfStudyRelatedSeries"))
            self.instances += int(ds.get("NumberOfStudyRelatedInstances"))
        except (TypeError, ValueError):
            self.counts_complete = False
        mods = ds.get("ModalitiesInStudy") or []
        self.modalities.update([mods] if isinstance(mods, str) else [str(m) for m in mods])
        date = str(ds.get("StudyDate", "") or "")
        if len(date) == 8 and date.isdigit():
            self.first_date = min(self.first_date or date, date)
            self.last_date = max(self.last_date, date)
        else:
            self.undated += 1
        return True


def in_range(date: str, date_range: str) -> bool:
    """Whether a StudyDate matches a ``YYYYMMDD``, ``A-B``, ``-B`` or ``A-`` range key."""
    if not date_range:
        return True
    lo, dash, hi = date_range.partition("-")
    if not dash:
        return date == lo
    return len(date) == 8 and (not lo or date >= lo) and (not hi or date <= hi)
