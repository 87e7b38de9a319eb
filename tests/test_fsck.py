"""`pacsvault fsck`: the blob store against the index, through the real command line.

Each test loads the synthetic demo (one patient), damages the store in one way and
checks the exact counts fsck reports, what --repair moves (orphans only, to the
quarantine) and what it leaves alone (everything an index row references).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from conftest import cli
from pacsvault.dicom.part10 import split_part10
from pacsvault.storage.blobstore import FileBlobStore
from pacsvault.storage.fsck import check
from pacsvault.storage.index import Index

SUMMARY = re.compile(
    r"^(?P<mode>quick|full) check of (?P<rows>\d+) index rows and (?P<blobs>\d+) blobs: "
    r"orphans=(?P<orphans>\d+) missing=(?P<missing>\d+) size=(?P<size>\d+) "
    r"sha256=(?P<sha256>\d+) unreadable=(?P<unreadable>\d+)$",
    re.MULTILINE,
)
ORPHAN_KEY = "ff/ff/1.2.826.0.1.3680043.8.498.999.dcm"
AN_HOUR_AGO = time.time() - 3600


@pytest.fixture
def demo(data_dir: Path) -> tuple[Path, int]:
    """The data directory with the one-patient demo loaded, and its instance count."""
    out = cli(data_dir, "demo", "--patients", "1").stdout
    loaded = int(re.search(r"loaded (\d+)", out).group(1))  # type: ignore[union-attr]
    assert loaded > 1
    return data_dir, loaded


def fsck(data: Path, *args: str) -> tuple[int, dict[str, int], str]:
    """Run `pacsvault fsck`: (exit status, the summary's numbers, stdout)."""
    proc = cli(data, "fsck", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    m = SUMMARY.search(proc.stdout)
    assert m, proc.stdout
    numbers = {k: int(v) for k, v in m.groupdict().items() if k != "mode"}
    assert m["mode"] == ("quick" if "--quick" in args else "full")
    return proc.returncode, numbers, proc.stdout


def expect(rows: int, blobs: int, **problems: int) -> dict[str, int]:
    """The summary numbers for *rows* and *blobs* with the given problems (others zero)."""
    zero = dict.fromkeys(("orphans", "missing", "size", "sha256", "unreadable"), 0)
    return {"rows": rows, "blobs": blobs, **zero, **problems}


def objects(data: Path) -> Path:
    return data / "blobs" / "objects"


def stored(data: Path) -> list[Path]:
    """Every file in the object store, sorted."""
    return sorted(p for p in objects(data).rglob("*") if p.is_file())


def snapshot(data: Path) -> dict[str, tuple[str, int]]:
    """(sha256, mtime_ns) of every file under blobs/, by relative path."""
    root = data / "blobs"
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fsck_audit(data: Path) -> list[tuple[str, str, str]]:
    """(outcome, actor, detail) of every fsck audit record."""
    with sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True) as conn:
        return list(
            conn.execute(
                "SELECT outcome, actor, detail FROM audit_events WHERE action='fsck' ORDER BY seq"
            )
        )


def make_orphan(data: Path, *, age: float | None = AN_HOUR_AGO) -> Path:
    """Copy a stored blob to a key no index row references (backdated, like a crash's)."""
    target = objects(data) / ORPHAN_KEY
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(stored(data)[0], target)
    if age is not None:
        os.utime(target, (age, age))
    return target


def test_clean_store(demo: tuple[Path, int]) -> None:
    data, n = demo
    assert fsck(data)[:2] == (0, expect(n, n))
    assert fsck(data, "--quick")[:2] == (0, expect(n, n))
    records = fsck_audit(data)
    assert [o for o, _a, _d in records] == ["success", "success"]
    assert all(a.startswith("operator:") for _o, a, _d in records)
    assert "full check" in records[0][2] and "quick check" in records[1][2]


def test_orphan_is_reported_and_quarantined(demo: tuple[Path, int]) -> None:
    data, n = demo
    orphan = make_orphan(data)
    referenced = {p: p.read_bytes() for p in stored(data) if p != orphan}

    code, numbers, out = fsck(data)
    assert (code, numbers) == (1, expect(n, n + 1, orphans=1))
    assert re.search(rf"^orphan\s+{re.escape(ORPHAN_KEY)}$", out, re.MULTILINE)
    assert fsck(data, "--quick")[:2] == (1, expect(n, n + 1, orphans=1))

    code, numbers, out = fsck(data, "--repair")
    assert (code, numbers) == (0, expect(n, n + 1, orphans=1))  # found one, repaired it
    assert "repair: 1 orphan(s) moved to quarantine batch" in out
    assert not orphan.exists()
    moved = list((data / "blobs" / "quarantine").glob(f"*/{ORPHAN_KEY}"))
    assert len(moved) == 1 and moved[0].read_bytes() == next(iter(referenced.values()))
    for d in [moved[0].parent, *moved[0].parent.parents]:
        if d == data / "blobs":
            break
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert {p: p.read_bytes() for p in stored(data)} == referenced  # nothing else moved

    assert fsck(data)[:2] == (0, expect(n, n))  # the quarantine is not part of the store
    outcomes = [(o, d.split(":")[0]) for o, _a, d in fsck_audit(data)]
    assert outcomes == [
        ("warning", f"full check of {n} index rows and {n + 1} blobs"),
        ("warning", f"quick check of {n} index rows and {n + 1} blobs"),
        ("warning", f"full check of {n} index rows and {n + 1} blobs"),
        ("success", "repair"),
        ("success", f"full check of {n} index rows and {n} blobs"),
    ]
    assert "quarantined 1 orphan(s)" in fsck_audit(data)[3][2]


def test_fresh_orphan_is_kept(demo: tuple[Path, int]) -> None:
    """An orphan written a moment ago may be an ingest about to commit: it stays."""
    data, n = demo
    orphan = make_orphan(data, age=None)
    code, numbers, out = fsck(data, "--repair")
    assert (code, numbers) == (1, expect(n, n + 1, orphans=1))
    assert f"kept {ORPHAN_KEY}: written" in out and "0 orphan(s) moved" in out
    assert orphan.exists()
    assert fsck_audit(data)[-1][0] == "warning"


def test_missing_blob(demo: tuple[Path, int]) -> None:
    data, n = demo
    gone = stored(data)[0]
    key = gone.relative_to(objects(data)).as_posix()
    gone.unlink()

    code, numbers, out = fsck(data)
    assert (code, numbers) == (1, expect(n, n - 1, missing=1))
    assert re.search(rf"^missing\s+{re.escape(key)}$", out, re.MULTILINE)
    assert fsck(data, "--quick")[:2] == (1, expect(n, n - 1, missing=1))

    before = snapshot(data)
    code, numbers, out = fsck(data, "--repair")
    assert (code, numbers) == (1, expect(n, n - 1, missing=1))  # reported, not "repaired"
    assert "reported only" in out
    assert snapshot(data) == before
    assert not any((data / "blobs" / "quarantine").rglob("*.dcm"))


def test_flipped_byte_is_a_sha256_mismatch_in_full_mode_only(demo: tuple[Path, int]) -> None:
    data, n = demo
    blob = stored(data)[-1]
    raw = bytearray(blob.read_bytes())
    _ts, offset = split_part10(bytes(raw))
    position = len(raw) - 1  # the last byte of the pixel data
    assert position >= offset
    raw[position] ^= 0xFF
    blob.write_bytes(raw)
    key = blob.relative_to(objects(data)).as_posix()

    code, numbers, out = fsck(data)
    assert (code, numbers) == (1, expect(n, n, sha256=1))
    assert re.search(rf"^sha256 mismatch\s+{re.escape(key)}$", out, re.MULTILINE)
    assert fsck(data, "--quick")[:2] == (0, expect(n, n))


def test_truncated_blob_is_a_size_mismatch(demo: tuple[Path, int]) -> None:
    data, n = demo
    blob = stored(data)[0]
    size = blob.stat().st_size
    os.truncate(blob, size - 10)
    key = blob.relative_to(objects(data)).as_posix()

    code, numbers, out = fsck(data)
    assert (code, numbers) == (1, expect(n, n, size=1))
    line = f"size mismatch    {key}  (index {size} bytes, blob {size - 10} bytes)"
    assert line in out.splitlines()
    assert fsck(data, "--quick")[:2] == (1, expect(n, n, size=1))


def test_temporary_files_are_not_orphans(demo: tuple[Path, int]) -> None:
    data, n = demo
    tmp = data / "blobs" / "tmp"
    # The check itself: a half-written temporary file is not an object of the store.
    (tmp / "0123abcd.part").write_bytes(stored(data)[0].read_bytes())
    index = Index(f"sqlite:///{data / 'index.sqlite'}")
    try:
        report = check(index, FileBlobStore(data / "blobs", fsync=False))
    finally:
        index.close()
    assert report.ok and (report.rows, report.blobs) == (n, n)
    # And through the command line (which may clear tmp/ when it opens the site).
    assert fsck(data)[:2] == (0, expect(n, n))


def test_serve_warns_at_startup(demo: tuple[Path, int], make_server) -> None:
    data, n = demo
    clean = make_server(data)
    clean.stop()
    assert "disagree" not in clean.log_text()

    make_orphan(data)
    server = make_server(data)  # starts anyway
    assert re.search(
        rf"WARNING pacsvault\.fsck: blob store and index disagree \(quick check of {n} index "
        rf"rows and {n + 1} blobs: orphans=1 missing=0 size=0 sha256=0 unreadable=0\)",
        server.log_text(),
    ), server.log_text()
    assert ORPHAN_KEY not in server.log_text()  # counts in the log, keys from `fsck`
    audited = [(o, d) for o, _a, d in fsck_audit(data)]
    assert audited[0][0] == "success" and audited[1][0] == "warning"
    assert "orphans=1" in audited[1][1]
