"""The benchmark harnesses keep working: the smallest case of each runs as a test.

A test of the harness, not a timing: each script runs end to end (data generated,
both servers started, loaded, measured, checked and stopped) on a few objects, and
must exit 0 with its table printed and no answer flagged as different.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

pytestmark = pytest.mark.skipif(
    not ORTHANC.exists(), reason="Debian's orthanc package is not installed (make bench-debs)"
)


def run(script: str, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "MISMATCH" not in proc.stdout
    return proc.stdout


def test_bench_ingest_smallest_case(tmp_path: Path) -> None:
    # Without the Nagle scenario (the same send with one environment variable less).
    out = run("ingest", "--count", "4", "--small-count", "8", "--repeat", "1",
              "--nagle-count", "0", "--workdir", str(tmp_path))  # fmt: skip
    for row in ("CT 512x512, 1 association |", "CT 512x512, 4 associations |",
                "small 64x64, 1 association |", "small 64x64, 4 associations |"):  # fmt: skip
        assert f"| {row}" in out, out
    assert "Nagle on" not in out
    assert "peak RSS" in out


def test_bench_find_smallest_case(tmp_path: Path) -> None:
    out = run("find", "--studies", "40", "--repeat", "1", "--workdir", str(tmp_path))
    assert "universal" in out and "peak RSS" in out, out


@pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb is not installed")
def test_bench_web_smallest_case(tmp_path: Path) -> None:
    out = run("web", "--studies", "20", "--series", "3", "--stow", "3", "--repeat", "1",
              "--stow-repeat", "1", "--workdir", str(tmp_path))  # fmt: skip
    assert "| QIDO all studies (21) |" in out and "| WADO-RS one frame" in out, out
    assert "MISMATCH" not in out, out
    # Orthanc behind HAProxy (make debs installs it) was timed too.
    proxied = r"\| WADO-RS one CT instance \| Orthanc behind HAProxy \| [\d.,]+ \|"
    assert re.search(proxied, out), out
    assert re.search(r"\| WADO-RS one CT instance \| [\d.,]+ / [\d.,]+ ms \|", out), out  # CPU


def test_bench_lookup_smallest_case(tmp_path: Path) -> None:
    out = run("lookup", "--sizes", "20,40", "--repeat", "1", "--workdir", str(tmp_path))
    assert "| findscu exact PatientID |" in out and "USING INDEX" in out, out


def test_bench_viewer_smallest_case(tmp_path: Path) -> None:
    out = run("viewer", "--slices", "6", "--size", "64", "--repeat", "1",
              "--workdir", str(tmp_path))  # fmt: skip
    assert "| all-loaded |" in out and "first-image" in out, out


def test_bench_scaleout_smallest_case(tmp_path: Path) -> None:
    # Back ends (a) and (b): (c) runs the same code as (b) with a file store.
    out = run("scaleout", "--small", "4", "--ct", "0", "--repeat", "1", "--backends", "ab",
              "--workdir", str(tmp_path))  # fmt: skip
    assert "embedded" in out and "PostgreSQL + S3" in out and "C-FIND" in out, out
