"""``pacsvault import PATH...``: files and folders in, through the same Archive path.

The import walks files and folders, stores DICOM (Part-10 files and bare datasets),
counts duplicates, skips what is not DICOM, refuses bad objects with a reason, shows a
progress bar on a terminal and ends with a summary; the exit status is 1 when
something was refused, 2 when a path does not exist.
"""

from __future__ import annotations

import os
import pty
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from conftest import cli, dataset_bytes
from pacsvault.dicom.part10 import split_part10
from pacsvault.dicom.synthetic import Spec, data_set

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class Tree:
    """A folder to import and what importing it must do."""

    root: Path
    pre: Path  # a file imported on its own first
    expected: dict[str, bytes] = field(default_factory=dict)  # stored: SOP UID -> dataset
    transfer_syntax: dict[str, str] = field(default_factory=dict)
    datasets: list[Dataset] = field(default_factory=list)  # those stored
    names: set[str] = field(default_factory=set)  # every patient name in the files
    patient_ids: set[str] = field(default_factory=set)
    refused_uids: set[str] = field(default_factory=set)
    files: int = 0  # regular files under root


def _named(spec: Spec, prefix: str) -> list[Dataset]:
    """The synthetic data set of *spec*, with patient names found nowhere else."""
    out = []
    for ds in data_set(spec):
        n = int(ds.PatientID[-5:])
        ds.PatientName = f"{prefix}{n}^SENTINEL"
        out.append(ds)
    return out


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _bare_implicit(ds: Dataset) -> bytes:
    """*ds* as a bare dataset: no preamble, no file meta, implicit VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "incoming"
    t = Tree(root=root, pre=tmp_path / "single" / "pre.dcm")

    # 2 patients x 1 study x 2 series x 2 instances, spread over nested folders.
    main = _named(
        Spec(patients=2, studies_per_patient=1, series_per_study=2, instances_per_series=2, seed=3),
        "QUIXOTE",
    )
    for n, ds in enumerate(main):
        folder = root / f"patient{n // 4}" / f"series{(n // 2) % 2}" / ("deeper" if n % 2 else "")
        path = _save(ds, folder / f"img{n:02d}.dcm")
        t.expected[ds.SOPInstanceUID] = dataset_bytes(path)
        t.transfer_syntax[ds.SOPInstanceUID] = EXPLICIT_LE
        t.datasets.append(ds)

    pre, bare, bad_uid, truncated = _named(
        Spec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=4, seed=5),
        "ZANZIBAR",
    )
    # Imported on its own first, then found again in the tree: a duplicate.
    _save(pre, t.pre)
    (root / "zz-copies").mkdir(parents=True)
    shutil.copyfile(t.pre, root / "zz-copies" / "again.dcm")
    t.expected[pre.SOPInstanceUID] = dataset_bytes(t.pre)
    t.transfer_syntax[pre.SOPInstanceUID] = EXPLICIT_LE
    t.datasets.append(pre)
    # A byte copy of a file of the tree: a duplicate within one import.
    shutil.copyfile(root / "patient0" / "series0" / "img00.dcm", root / "zz-copies" / "img00.dcm")

    # A bare dataset, implicit VR little endian, without preamble or file meta: stored.
    raw = _bare_implicit(bare)
    (root / "bare").mkdir()
    (root / "bare" / "dataset.raw").write_bytes(raw)
    t.expected[bare.SOPInstanceUID] = raw
    t.transfer_syntax[bare.SOPInstanceUID] = IMPLICIT_LE
    t.datasets.append(bare)

    # A SOP Instance UID with a letter in it, same length: refused.
    path = _save(bad_uid, root / "bad" / "bad-uid.dcm")
    data = path.read_bytes()
    _ts, offset = split_part10(data)
    good = bad_uid.SOPInstanceUID.encode()
    invalid = b"1.2x" + b"3" * (len(good) - 4)
    assert data[offset:].count(good) == 1
    path.write_bytes(data[:offset] + data[offset:].replace(good, invalid))
    t.refused_uids.add(bad_uid.SOPInstanceUID)

    # A Part-10 file cut in the middle of its pixel data: refused.
    path = _save(truncated, root / "bad" / "truncated.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    t.refused_uids.add(truncated.SOPInstanceUID)

    # Not DICOM: text, PNG-ish bytes, an empty file.
    (root / "notes.txt").write_text("Scanned on Tuesday; see the referral letter.\n")
    (root / "patient0" / "thumb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    )
    (root / "patient1" / "empty.dat").write_bytes(b"")

    for ds in [*main, pre, bare, bad_uid, truncated]:
        t.names.add(str(ds.PatientName))
        t.names.add(str(ds.PatientName).split("^")[0])
        t.patient_ids.add(str(ds.PatientID))
    t.files = sum(1 for p in root.rglob("*") if p.is_file())
    assert t.files == 16
    return t


def summary(proc: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    """(the four count lines, the refusal reason lines) of an import's output."""
    lines = proc.stdout.splitlines()
    assert len(lines) >= 4, proc.stdout + proc.stderr
    return lines[:4], lines[4:]


def counts(stored: int, duplicates: int, skipped: int, refused: int) -> list[str]:
    return [
        f"stored: {stored}",
        f"duplicates: {duplicates}",
        f"skipped (not DICOM): {skipped}",
        f"refused: {refused}",
    ]


def assert_two_refusals(reasons: list[str]) -> None:
    """One refusal names the bad UID, one the truncation; each counted once."""
    assert len(reasons) == 2, reasons
    assert all(r.startswith("  1 x ") for r in reasons), reasons
    uid = [r for r in reasons if "UID" in r]
    cut = [r for r in reasons if "truncated" in r]
    assert len(uid) == 1 and "SOP Instance UID" in uid[0], reasons
    assert len(cut) == 1 and cut != uid, reasons


def query(data: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def status_counts(data: Path) -> dict[str, int]:
    out = cli(data, "status").stdout
    result = {}
    for line in out.splitlines():
        key, _, value = line.partition(": ")
        if key in ("patients", "studies", "series", "instances"):
            result[key] = int(value)
    return result


def assert_stored_exactly(data: Path, tree: Tree) -> None:
    """The index holds exactly the expected instances, each file holding what was read."""
    rows = query(
        data, "SELECT sop_instance_uid, blob_key, size, transfer_syntax_uid FROM instances"
    )
    assert sorted(r[0] for r in rows) == sorted(tree.expected)
    assert tree.refused_uids.isdisjoint(r[0] for r in rows)
    objects = data / "blobs" / "objects"
    for uid, key, size, ts in rows:
        path = objects / key
        assert path.stat().st_size == size
        assert ts == tree.transfer_syntax[uid]
        assert split_part10(path.read_bytes())[0] == ts
        assert dataset_bytes(path) == tree.expected[uid], uid
    # Refused objects left nothing behind.
    assert sum(1 for p in objects.rglob("*") if p.is_file()) == len(rows)
    assert list((data / "blobs" / "tmp").iterdir()) == []


def assert_no_phi(text: str, tree: Tree, where: str) -> None:
    leaked = sorted(n for n in tree.names if n in text)
    assert leaked == [], f"patient names in {where}: {leaked}"
    leaked = sorted(i for i in tree.patient_ids if i in text)
    assert leaked == [], f"patient IDs in {where}: {leaked}"


def audit_text(data: Path) -> str:
    return "\n".join(repr(r) for r in query(data, "SELECT * FROM audit_events"))


def import_outcomes(data: Path) -> Counter[str]:
    rows = query(data, "SELECT action, outcome FROM audit_events WHERE action = 'import'")
    return Counter(outcome for _action, outcome in rows)


def test_import_a_folder_tree(data_dir: Path, tree: Tree) -> None:
    outputs = []

    first = cli(data_dir, "import", str(tree.pre), check=False)
    outputs.append(first)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first) == (counts(1, 0, 0, 0), [])
    assert import_outcomes(data_dir) == {"success": 1}

    proc = cli(data_dir, "import", str(tree.root), check=False)
    outputs.append(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # something was refused
    head, reasons = summary(proc)
    # 8 tree images + the bare dataset; the pre-imported file and the in-tree copy are
    # duplicates; text, PNG and empty file skipped; bad UID and truncated file refused.
    assert head == counts(9, 2, 3, 2)
    assert_two_refusals(reasons)
    assert "[" not in proc.stderr  # no progress bar when not on a terminal

    stored = tree.datasets
    expected = {
        "patients": len({ds.PatientID for ds in stored}),
        "studies": len({ds.StudyInstanceUID for ds in stored}),
        "series": len({ds.SeriesInstanceUID for ds in stored}),
        "instances": len(stored),
    }
    assert expected == {"patients": 3, "studies": 3, "series": 5, "instances": 10}
    assert status_counts(data_dir) == expected
    assert_stored_exactly(data_dir, tree)

    # One 'import' success record per stored object; duplicates and refusals recorded too.
    assert import_outcomes(data_dir) == {"success": 10, "warning": 2, "refused": 2}
    success = query(
        data_dir,
        "SELECT count(*) FROM audit_events WHERE action = 'import' AND outcome = 'success'",
    )
    assert success == [(len(tree.expected),)]

    # Again: everything DICOM is a duplicate, nothing new is stored.
    again = cli(data_dir, "import", str(tree.root), check=False)
    outputs.append(again)
    assert again.returncode == 1
    head, reasons = summary(again)
    assert head == counts(0, 11, 3, 2)
    assert_two_refusals(reasons)
    assert status_counts(data_dir)["instances"] == 10
    assert_stored_exactly(data_dir, tree)
    assert import_outcomes(data_dir) == {"success": 10, "warning": 13, "refused": 4}

    # No patient name (or ID) in the audit trail or anything the command printed.
    assert_no_phi(audit_text(data_dir), tree, "the audit table")
    for out in outputs:
        assert_no_phi(out.stdout + out.stderr, tree, "the import output")


def test_import_without_refusals_exits_0(data_dir: Path, tree: Tree) -> None:
    shutil.rmtree(tree.root / "bad")
    proc = cli(data_dir, "import", str(tree.root), str(tree.pre), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Folder first: the pre file is met twice (in the tree, then given itself).
    assert summary(proc) == (counts(10, 2, 3, 0), [])
    assert status_counts(data_dir)["instances"] == 10
    assert_stored_exactly(data_dir, tree)


def test_import_shows_a_progress_bar_on_a_terminal(data_dir: Path, tree: Tree) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsvault", "--data", str(data_dir), "import", str(tree.root)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 1
    out = b"".join(chunks).decode(errors="replace")
    total = tree.files
    assert f"[{'#' * 30}] {total}/{total} files" in out, out
    assert "\r[" in out  # redrawn in place
    # The pre file was not imported before: its copy in the tree is stored this time.
    assert "\r\nstored: 10\r\nduplicates: 1\r\n" in out and "refused: 2" in out
    assert_no_phi(out, tree, "the terminal output")


def test_import_of_a_missing_path(data_dir: Path, tmp_path: Path, tree: Tree) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    proc = cli(data_dir, "import", str(missing), check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no such file or directory" in proc.stderr and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr

    # One missing path among existing ones: nothing at all is imported.
    proc = cli(data_dir, "import", str(tree.root), str(missing), check=False)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert status_counts(data_dir)["instances"] == 0
    assert import_outcomes(data_dir) == {}


def test_a_part10_file_cut_inside_its_file_meta_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """A file with the DICM marker is DICOM: cut short, it is refused, not 'not DICOM'."""
    one = Spec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=1)
    (ds,) = _named(one, "ULYSSES")
    path = _save(ds, tmp_path / "cut" / "cut.dcm")
    data = path.read_bytes()
    _ts, offset = split_part10(data)
    path.write_bytes(data[: (132 + offset) // 2])  # after DICM, inside the file meta
    assert path.read_bytes()[128:132] == b"DICM"
    proc = cli(data_dir, "import", str(path.parent), check=False)
    head, reasons = summary(proc)
    assert head == counts(0, 0, 0, 1), proc.stdout
    assert len(reasons) == 1 and reasons[0].startswith("  1 x "), reasons
    assert proc.returncode == 1
