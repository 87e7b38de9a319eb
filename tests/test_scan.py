"""The exposure scanner against real targets started here: Orthanc, pacsvault, and non-DICOM."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import cli, dcmtk, free_port, write_data_set
from pacsvault.dicom.synthetic import Spec

SPEC = Spec(patients=3, studies_per_patient=2, series_per_study=2, instances_per_series=2, seed=9)


def scan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "pacsvault", "scan", *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture
def permissive_orthanc(tmp_path: Path):
    """Orthanc as exposed servers were found: any AE, C-FIND allowed, holding SPEC."""
    with running_orthanc(tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_orthanc(tmp_path: Path, **extra: object):
    port, http = free_port(), free_port()
    config = {
        "StorageDirectory": str(tmp_path / "storage"), "IndexDirectory": str(tmp_path / "index"),
        "Plugins": [], "HttpPort": http, "DicomPort": port, "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False, "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, **extra,
    }  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["/usr/sbin/Orthanc", str(tmp_path / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while dcmtk("echoscu", "-aec", "ORTHANC", "127.0.0.1", str(port)).returncode != 0:
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)
        files = write_data_set(tmp_path / "files", SPEC)
        store = dcmtk("storescu", "-aec", "ORTHANC", "127.0.0.1", str(port),
                      *[str(p) for p, _ in files])  # fmt: skip
        assert store.returncode == 0, store.stderr
        yield port, http, files
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def phi_of(files) -> set[str]:
    out = set()
    for _, ds in files:
        out |= {
            str(ds.PatientName),
            str(ds.PatientID),
            str(ds.PatientBirthDate),
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
        }
        out.add(str(ds.PatientName).split("^")[0])
    return out


def test_permissive_orthanc(permissive_orthanc, tmp_path: Path) -> None:
    port, http, files = permissive_orthanc
    report, page = tmp_path / "report.json", tmp_path / "report.html"
    proc = scan(f"127.0.0.1:{port}", f"http://127.0.0.1:{http}", "--json", str(report),
                "--html", str(page))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # critical >= high
    doc = json.loads(report.read_text())
    assert "DIMSE-FIND-STUDY" in proc.stdout, proc.stdout
    by_id = {f["id"]: f for f in doc["findings"]}
    assert by_id["DIMSE-FIND-STUDY"]["severity"] == "critical"
    counts = by_id["DIMSE-FIND-STUDY"]["counts"]
    assert {k: (v["value"], v["quality"]) for k, v in counts.items()} == {
        "patients": (3, "exact"), "studies": (6, "exact"), "series": (12, "exact"),
        "instances": (24, "exact"),
    }  # fmt: skip
    assert by_id["DIMSE-FIND-PATIENT"]["counts"]["patients"]["value"] == 3
    rest = by_id["WEB-ORTHANC-REST-OPEN"]
    assert rest["severity"] == "critical"
    assert {k: (v["value"], v["quality"]) for k, v in rest["counts"].items()} == {
        "patients": (3, "exact"), "studies": (6, "exact"), "series": (12, "exact"),
        "instances": (24, "exact"),
    }  # fmt: skip
    assert by_id["WEB-VIEWER-OPEN"]["severity"] == "high"
    assert by_id["DIMSE-NO-CALLING-AE-CHECK"]["severity"] == "high"
    assert by_id["DIMSE-ANY-CALLED-AE"]["severity"] == "medium"
    assert "OFFIS_DCMTK" in by_id["DIMSE-FINGERPRINT"]["result"]
    assert "PatientName" in by_id["DIMSE-FIND-STUDY"]["details"]["identifying_fields_readable"]
    # Counts, never patient data: nothing identifying in any output.
    written = proc.stdout + proc.stderr + report.read_text() + page.read_text()
    leaked = [value for value in phi_of(files) if value and value in written]
    assert leaked == []


def test_pacsvault_defaults(server) -> None:
    cli(server.data, "demo", "--patients", "2")
    proc = scan(f"127.0.0.1:{server.port}", f"127.0.0.1:{server.tls_port}", "--fail-on", "medium")
    assert proc.returncode == 0, proc.stdout
    assert "DIMSE-REFUSED" in proc.stdout
    assert f"127.0.0.1:{server.tls_port} TLS-SUPPORTED" in proc.stdout
    assert "negotiated TLSv1.3" in proc.stdout and "TLS-OLD-VERSION" not in proc.stdout
    assert "[CRITICAL]" not in proc.stdout and "[HIGH]" not in proc.stdout
    assert "association rejected" in server.log_text()
    assert "Traceback" not in proc.stderr


class Misbehaving:
    """A loopback TCP server that closes at once, answers garbage, or never answers."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "close":
                conn.close()
            elif self.mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)))
                conn.close()
            else:
                self.conns.append(conn)  # silent

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_non_dicom_targets_are_reported_within_the_time_limit() -> None:
    servers = [Misbehaving(m) for m in ("close", "garbage", "silent")]
    closed = free_port()
    try:
        start = time.monotonic()
        proc = scan(*[f"127.0.0.1:{s.port}" for s in servers], f"127.0.0.1:{closed}",
                    "--timeout", "2", "--time-limit", "60")  # fmt: skip
        elapsed = time.monotonic() - start
    finally:
        for s in servers:
            s.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for s in servers:
        assert f"127.0.0.1:{s.port} NET-NOT-DICOM" in proc.stdout
    assert f"127.0.0.1:{closed} NET-UNREACHABLE" in proc.stdout
    assert elapsed < 45


def test_third_party_targets_need_authorization_and_ranges_are_capped() -> None:
    proc = scan("192.0.2.10:104")  # TEST-NET-1: refused before any packet is sent
    assert proc.returncode == 2 and "--authorized" in proc.stderr
    proc = scan("10.0.0.0/16", "--authorized")
    assert proc.returncode == 2 and "at most 256" in proc.stderr


def test_secure_orthanc(tmp_path: Path) -> None:
    """Orthanc locked down: no critical or high finding; cleartext findings remain, correctly."""
    port, http = free_port(), free_port()
    config = {
        "StorageDirectory": str(tmp_path / "s"), "IndexDirectory": str(tmp_path / "i"),
        "Plugins": [], "HttpPort": http, "DicomPort": port, "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": True, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True, "DicomModalities": {"ct": ["CT1", "127.0.0.1", 11999]},
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
        "RegisteredUsers": {"admin": "a-long-random-secret-9481"},
    }  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["/usr/sbin/Orthanc", str(tmp_path / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", http)) != 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        report = tmp_path / "r.json"
        out = scan(f"127.0.0.1:{port}", f"http://127.0.0.1:{http}", "--json", str(report))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert out.returncode == 0, out.stdout
    found = {f["id"]: f["severity"] for f in json.loads(report.read_text())["findings"]}
    assert not [i for i, sev in found.items() if sev in ("critical", "high")]
    assert found["WEB-CLEARTEXT"] == "medium"
    assert found["DIMSE-CLEARTEXT-SERVICE"] == "low"
    assert "DIMSE-REFUSED" in found and "WEB-ORTHANC-REST-OPEN" not in found


def test_dcmqrscp_accepting_any_ae(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    files = write_data_set(tmp_path / "files", SPEC)
    port = free_port()
    (tmp_path / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQRSCP {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    index = subprocess.run(["/usr/bin/dcmqridx", str(db), *[str(p) for p, _ in files]],
                           capture_output=True, text=True)  # fmt: skip
    assert index.returncode == 0, index.stderr
    proc = subprocess.Popen(
        ["/usr/bin/dcmqrscp", "-c", str(tmp_path / "dcmqrscp.cfg"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while dcmtk("echoscu", "-aec", "DCMQRSCP", "127.0.0.1", str(port)).returncode != 0:
            assert time.monotonic() < deadline, "dcmqrscp did not start"
            time.sleep(0.2)
        report = tmp_path / "r.json"
        html = tmp_path / "r.html"
        out = scan(f"127.0.0.1:{port}", "--json", str(report), "--html", str(html))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert out.returncode == 1, out.stdout
    by_id = {f["id"]: f for f in json.loads(report.read_text())["findings"]}
    assert by_id["DIMSE-CALLED-AE-GUESSED"]["severity"] == "high"
    assert "DCMQRSCP" in by_id["DIMSE-CALLED-AE-GUESSED"]["result"]
    counts = by_id["DIMSE-FIND-STUDY"]["counts"]
    assert counts["studies"] == {"value": 6, "quality": "exact", "method": "study-level C-FIND"}
    assert counts["patients"]["value"] == 3
    page = html.read_text()
    assert "A stranger on the network can read patient data" in page
    written = out.stdout + out.stderr + report.read_text() + page
    assert [v for v in phi_of(files) if v in written] == []


def test_orthanc_that_lets_strangers_retrieve(tmp_path: Path) -> None:
    with running_orthanc(tmp_path, DicomAlwaysAllowGet=True) as (port, _http, _files):
        report = tmp_path / "r.json"
        scan(f"127.0.0.1:{port}", "--json", str(report))
    found = {f["id"]: f["severity"] for f in json.loads(report.read_text())["findings"]}
    assert found["DIMSE-GET-OPEN"] == "critical"
    assert "DIMSE-MOVE-ANY-DESTINATION" not in found  # Orthanc refuses unknown destinations


def test_write_test_only_with_intrusive(permissive_orthanc, tmp_path: Path) -> None:
    port, _http, _files = permissive_orthanc
    quiet = tmp_path / "quiet.json"
    scan(f"127.0.0.1:{port}", "--json", str(quiet))
    assert "DIMSE-STORE-OPEN" not in quiet.read_text()
    report = tmp_path / "r.json"
    scan(f"127.0.0.1:{port}", "--intrusive", "--json", str(report))
    by_id = {f["id"]: f for f in json.loads(report.read_text())["findings"]}
    assert "DIMSE-STORE-OPEN" in by_id, [f["result"] for f in by_id.values()]
    stored = by_id["DIMSE-STORE-OPEN"]
    assert stored["severity"] == "high"
    assert stored["details"]["study_instance_uid"].startswith("2.25.")
    assert stored["details"]["study_instance_uid"] in stored["result"]


def test_default_credentials_only_when_asked(tmp_path: Path) -> None:
    users = {"orthanc": "orthanc"}
    with running_orthanc(tmp_path, AuthenticationEnabled=True, RegisteredUsers=users,
                         DicomAlwaysAllowFind=False) as (_port, http, _files):  # fmt: skip
        plain = scan(f"http://127.0.0.1:{http}")
        tried = scan(f"http://127.0.0.1:{http}", "--try-default-credentials")
    assert "WEB-DEFAULT-CREDENTIALS" not in plain.stdout
    assert "[CRITICAL] http://127.0.0.1:" in tried.stdout
    assert "WEB-DEFAULT-CREDENTIALS" in tried.stdout and tried.returncode == 1


def test_known_vulnerable_versions() -> None:
    from pacsvault.scan.vulns import from_orthanc_version, from_version_name

    assert [f.details["version"] for f in from_version_name("OFFIS_DCMTK_366", "t")] == [
        "3.6.6", "3.6.6",
    ]  # fmt: skip
    assert "CVE-2026-50003" in from_version_name("OFFIS_DCMTK_367", "t")[0].result
    assert from_version_name("OFFIS_DCMTK_371", "t") == []
    assert from_version_name("PACSVAULT_010", "t") == []
    assert len(from_orthanc_version("1.10.1", "t")) == 2
    assert from_orthanc_version("1.12.11", "t") == []


FINDING_ID = re.compile(r"(DIMSE|NET|SCAN|TLS|VULN|WEB)-[A-Z0-9-]+")


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_every_finding_the_scanner_reports_is_catalogued() -> None:
    """Probes name findings by literal id through catalogue.finding(), never Finding(...)."""
    import pacsvault
    from pacsvault.scan.catalogue import CATALOGUE

    reported: set[str] = set()  # first arguments of finding(...) in scan/
    mentioned: set[str] = set()  # id-like literals in scan/, and f.id == "..." anywhere
    for path in sorted(Path(pacsvault.__file__).parent.rglob("*.py")):
        in_scan = path.parent.name == "scan"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            called = node.func.id if isinstance(node, ast.Call) and isinstance(
                node.func, ast.Name) else None  # fmt: skip
            if in_scan and called == "Finding":
                assert path.name == "catalogue.py", f"{where}: Finding() outside the catalogue"
            if in_scan and called == "finding":
                fid = _literal(node.args[0])
                assert fid is not None, f"{where}: a finding id must be a literal"
                reported.add(fid)
            if in_scan and FINDING_ID.fullmatch(_literal(node) or ""):
                mentioned.add(_literal(node) or "")
            if isinstance(node, ast.Compare) and getattr(node.left, "attr", "") == "id":
                mentioned |= {c.value for c in node.comparators
                              if FINDING_ID.fullmatch(_literal(c) or "")}  # fmt: skip
    assert reported - set(CATALOGUE) == set()
    assert mentioned - set(CATALOGUE) == set()
    assert set(CATALOGUE) - reported == set(), "catalogued but never reported"


def test_catalogue_entries_and_the_finding_constructor() -> None:
    from pacsvault.scan.catalogue import CATALOGUE, GROUPS, finding
    from pacsvault.scan.findings import SEVERITIES

    assert sum(len(g.entries) for g in GROUPS.values()) == len(CATALOGUE)
    assert all(g.doc.strip() for g in GROUPS.values())
    for fid, entry in CATALOGUE.items():
        assert FINDING_ID.fullmatch(fid), fid
        assert entry.severity in SEVERITIES and set(entry.variants.values()) <= set(SEVERITIES)
        assert entry.title, fid
        assert entry.remediation or entry.severity == "info", f"{fid}: no fix for a problem"
    with pytest.raises(KeyError, match="DIMSE-NO-SUCH-CHECK"):
        finding("DIMSE-NO-SUCH-CHECK", "t", "r")
    with pytest.raises(KeyError):
        finding("DIMSE-ECHO", "t", "r", variant="on Tuesdays")
    with pytest.raises(TypeError):
        finding("VULN-KNOWN", "t", "r", product="DCMTK")  # version and fixed missing
    with pytest.raises(TypeError):
        finding("DIMSE-ECHO", "t", "r", product="DCMTK")  # no such placeholder
    vuln = finding("VULN-KNOWN", "t", "r", product="DCMTK", version="3.6.6", fixed="3.6.7")
    assert (vuln.severity, vuln.title, vuln.remediation) == (
        "high", "DCMTK 3.6.6 has known vulnerabilities", "Upgrade DCMTK to 3.6.7 or later.",
    )  # fmt: skip
    check = "DIMSE-NO-CALLING-AE-CHECK"
    assert finding(check, "t", "r").severity == "high"
    assert finding(check, "t", "r", variant="without Q/R or storage").severity == "medium"


def test_scanner_doc_lists_every_catalogued_finding() -> None:
    from pacsvault.scan.catalogue import CATALOGUE

    doc = Path(__file__).resolve().parents[1] / "docs" / "scanner.md"
    rows: dict[str, str] = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and FINDING_ID.fullmatch(cells[0]):
            assert cells[0] not in rows, f"{cells[0]} listed twice"
            rows[cells[0]] = cells[1]
    assert rows == {fid: entry.severity_text() for fid, entry in CATALOGUE.items()}
