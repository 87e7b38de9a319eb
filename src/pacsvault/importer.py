"""``pacsvault import``: ingest DICOM files and folders through the same Archive path as C-STORE."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TextIO

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsvault.dicom.part10 import NotDicom, read_index_dataset, split_part10
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Principal
from pacsvault.storage.archive import Archive, StoreStatus


@dataclass
class ImportSummary:
    """Counts of what an import did, and why objects were refused."""

    stored: int = 0
    duplicates: int = 0
    skipped: int = 0  # not DICOM
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def lines(self) -> list[str]:
        out = [
            f"stored: {self.stored}",
            f"duplicates: {self.duplicates}",
            f"skipped (not DICOM): {self.skipped}",
            f"refused: {self.refused_total}",
        ]
        out += [f"  {n} x {reason}" for reason, n in self.refused.most_common()]
        return out


def walk(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under *paths*, in a stable order; links are not followed."""
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    p = Path(root) / name
                    if p.is_file() and not p.is_symlink():
                        yield p


class DamagedDicom(NotDicom):
    """A file that says it is DICOM (it has the ``DICM`` marker) but cannot be read."""


HEAD_SIZE = 1024 * 1024


def locate_dataset(head: bytes) -> tuple[str, int]:
    """(transfer syntax, offset of the dataset) of a file, from its first bytes.

    A Part-10 file gives both from its file meta information. A bare dataset (no
    preamble) is tried as implicit, then explicit VR little endian, and counts as
    DICOM when its first elements read and include a SOP Instance UID. Raises
    :class:`DamagedDicom` for a file with the ``DICM`` marker that cannot be read,
    and :class:`NotDicom` for anything else.
    """
    try:
        return split_part10(head)
    except NotDicom as exc:
        if head[128:132] == b"DICM":
            raise DamagedDicom(str(exc)) from None
    for ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        try:
            ds = read_index_dataset(BytesIO(head), ts)
            if "SOPInstanceUID" in ds and ds.get("SOPInstanceUID"):
                return str(ts), 0
        except Exception:
            continue
    raise NotDicom("not a DICOM file")


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, out: TextIO = sys.stderr) -> None:
        self.total, self.out, self.done = total, out, 0
        self.enabled = out.isatty()

    def step(self) -> None:
        self.done += 1
        if self.enabled and (self.done == self.total or self.done % 10 == 0):
            width = 30
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (width - filled)
            self.out.write(f"\r[{bar}] {self.done}/{self.total} files")
            self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")


def import_paths(archive: Archive, principal: Principal, paths: list[Path]) -> ImportSummary:
    """Ingest every file under *paths*; bad files are counted, never fatal."""
    files = list(walk(paths))
    summary = ImportSummary()
    progress = Progress(len(files))
    for path in files:
        progress.step()
        incoming = None
        try:
            with open(path, "rb") as f:
                ts, offset = locate_dataset(f.read(HEAD_SIZE))
                f.seek(offset)
                incoming = archive.receive(principal, ts)
                while chunk := f.read(1 << 20):
                    incoming.write(chunk)
        except DamagedDicom as exc:
            summary.refused[f"invalid: {exc}"] += 1
            archive.audit.record(Action.IMPORT, Outcome.REFUSED, principal.actor,
                                 detail=f"invalid: {exc}", best_effort=True)  # fmt: skip
            continue
        except NotDicom:
            summary.skipped += 1
            continue
        except OSError as exc:
            if incoming is not None:
                incoming.discard()
            summary.refused[f"unreadable file ({exc.strerror})"] += 1
            continue
        result = archive.store_incoming(principal, incoming, ts, action=Action.IMPORT)
        if result.status in (StoreStatus.STORED, StoreStatus.REPLACED):
            summary.stored += 1
        elif result.status in (
            StoreStatus.IDENTICAL_DUPLICATE,
            StoreStatus.DUPLICATE_KEPT_FIRST,
            StoreStatus.DUPLICATE_REJECTED,
        ):
            summary.duplicates += 1
        else:
            summary.refused[f"{result.status.value}: {result.reason}"] += 1
    progress.close()
    return summary
