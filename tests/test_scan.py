"""The exposure scanner against real targets started here: Orthanc, pacsvault, and non-DICOM."""

from __future__ import annotations

import ast
import contextlib
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
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


# -- issue 9: the web door, certificates, client certificates, C-FIND caps ------------------

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"}


def needs_dicomweb_plugin() -> None:
    assert DICOMWEB_PLUGIN.exists(), (
        "Orthanc's DICOMweb plugin is missing: install Debian's orthanc-dicomweb package"
    )


def by_id(report: Path) -> dict[str, dict]:
    return {f["id"]: f for f in json.loads(report.read_text())["findings"]}


def leaks(files, *outputs: str) -> list[str]:
    """The identifying values of *files* that appear in any of *outputs*."""
    written = "".join(outputs)
    return [value for value in phi_of(files) if value and value in written]


def test_open_orthanc_dicomweb(tmp_path: Path) -> None:
    """Orthanc's DICOMweb plugin open: QIDO counted exactly, WADO-RS and WADO-URI readable."""
    needs_dicomweb_plugin()
    plugin = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": DICOMWEB}
    with running_orthanc(tmp_path, **plugin) as (_port, http, files):
        report, page = tmp_path / "r.json", tmp_path / "r.html"
        proc = scan(f"http://127.0.0.1:{http}", "--json", str(report), "--html", str(page))
        found = by_id(report)
        assert "WEB-STOW-OPEN" not in found  # writing only with --intrusive
        written = tmp_path / "w.json"
        wrote = scan(f"http://127.0.0.1:{http}", "--intrusive", "--json", str(written))
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics") as r:
            after = json.loads(r.read())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    qido = found["WEB-QIDO-OPEN"]
    assert qido["severity"] == "critical"
    assert {k: (v["value"], v["quality"]) for k, v in qido["counts"].items()} == {
        "patients": (3, "exact"), "studies": (6, "exact"), "series": (12, "exact"),
        "instances": (24, "exact"),
    }  # fmt: skip
    assert qido["details"]["root"] == "/dicom-web"
    assert "PatientName" in qido["details"]["identifying_fields_readable"]
    wado = found["WEB-WADO-OPEN"]
    assert wado["severity"] == "critical"
    assert (wado["details"]["objects"], wado["details"]["truncated"]) == (4, False)
    assert wado["details"]["bytes"] > 0
    assert found["WEB-WADO-URI-OPEN"]["severity"] == "critical"
    assert found["WEB-WADO-URI-OPEN"]["details"]["bytes"] > 0
    # --intrusive: one synthetic object stored by STOW-RS, its UIDs reported for deletion.
    stow = by_id(written)["WEB-STOW-OPEN"]
    assert stow["severity"] == "high"
    assert stow["details"]["study_instance_uid"].startswith("2.25.")
    assert stow["details"]["study_instance_uid"] in stow["result"]
    assert "ZZZ^EXPAUDIT" in stow["result"]
    assert (after["CountStudies"], after["CountInstances"]) == (7, 25)
    outputs = [proc.stdout, proc.stderr, report.read_text(), page.read_text(), wrote.stdout,
               written.read_text()]  # fmt: skip
    assert leaks(files, *outputs) == []


def test_pacsvault_https_defaults(server) -> None:
    """pacsvault's DICOM, DICOM-TLS and HTTPS ports, HTTPS named both ways, write tests
    included: nothing above low."""
    files = write_data_set(server.data.parent / "files", SPEC)
    store = dcmtk("storescu", "-aet", "TESTSCU", "-aec", "PACSVAULT", "127.0.0.1",
                  str(server.port), *[str(p) for p, _ in files])  # fmt: skip
    assert store.returncode == 0, store.stderr
    report = server.data.parent / "r.json"
    https = f"https://127.0.0.1:{server.https_port}"
    proc = scan(f"127.0.0.1:{server.port}", f"127.0.0.1:{server.tls_port}",
                f"127.0.0.1:{server.https_port}", https, "--fail-on", "medium",
                "--intrusive", "--json", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    assert "Traceback" not in proc.stderr
    findings = json.loads(report.read_text())["findings"]
    assert [f for f in findings if f["severity"] not in ("info", "low")] == []
    seen = {(f["target"], f["id"]) for f in findings}
    tls = f"127.0.0.1:{server.tls_port}"
    assert (tls, "TLS-NO-CLIENT-CERT-REFUSED") in seen
    assert (https, "WEB-DICOMWEB-PROTECTED") in seen  # the bare host:port was found out as HTTPS
    assert [f["target"] for f in findings if f["id"] == "WEB-DICOMWEB-PROTECTED"] == [https] * 2
    certs = [f for f in findings if f["id"] == "TLS-CERT"]
    assert {c["target"] for c in certs} == {tls, https}
    for cert in certs:
        facts = cert["details"]
        assert "pacsvault local CA" in facts["issuer"] and not facts["self_signed"]
        assert "IP:127.0.0.1" in facts["subject_alt_names"]
        assert facts["days_left"] > 30 and facts["key_type"] in ("EC", "RSA", "Ed25519")
    assert not [f for f in findings if f["id"].startswith("TLS-CERT-")]
    assert leaks(files, proc.stdout, proc.stderr, report.read_text()) == []


def make_certificate(directory: Path, *, key_bits: int = 2048, expired: bool = False,
                     name: str = "orthanc.invalid") -> tuple[Path, Path]:  # fmt: skip
    """A self-signed RSA server certificate and key (PEM files) for DICOM-TLS tests."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orthanc-test")])
    now = dt.datetime.now(dt.UTC)
    end = now - dt.timedelta(days=3) if expired else now + dt.timedelta(days=365)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@contextlib.contextmanager
def orthanc_over_tls(tmp_path: Path, require_client_cert: bool):
    """Orthanc whose DICOM port speaks TLS only (self-signed, expired certificate), open
    to any AE, holding SPEC (loaded through its REST API)."""
    cert, key = make_certificate(tmp_path / "tls", expired=True)
    port, http = free_port(), free_port()
    config = {
        "StorageDirectory": str(tmp_path / "s"), "IndexDirectory": str(tmp_path / "i"),
        "Plugins": [], "HttpPort": http, "DicomPort": port, "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False, "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowEcho": True, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(cert),
        "DicomTlsRemoteCertificateRequired": require_client_cert,
    }  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["/usr/sbin/Orthanc", str(tmp_path / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", http)) != 0:
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)
        files = write_data_set(tmp_path / "files", SPEC)
        for path, _ in files:
            req = urllib.request.Request(f"http://127.0.0.1:{http}/instances",
                                         data=path.read_bytes(), method="POST")  # fmt: skip
            urllib.request.urlopen(req).close()
        yield port, files
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dicom_tls_without_a_client_certificate(tmp_path: Path) -> None:
    """Orthanc's DICOM-TLS with and without DicomTlsRemoteCertificateRequired; its
    certificate judged without being trusted (self-signed, expired, naming another host)."""
    outcomes = {}
    for required in (False, True):
        work = tmp_path / f"required-{required}"
        with orthanc_over_tls(work, required) as (port, files):
            report = work / "r.json"
            proc = scan(f"127.0.0.1:{port}", "--json", str(report))
        assert "Traceback" not in proc.stderr
        assert leaks(files, proc.stdout, proc.stderr, report.read_text()) == []
        outcomes[required] = by_id(report)
    admitted, refused = outcomes[False], outcomes[True]
    assert admitted["TLS-NO-CLIENT-CERT-ACCEPTED"]["severity"] == "medium"
    assert admitted["DIMSE-FIND-STUDY"]["counts"]["studies"]["value"] == 6  # counted over TLS
    assert "DIMSE-CLEARTEXT" not in admitted and "DIMSE-CLEARTEXT-SERVICE" not in admitted
    assert refused["TLS-CLIENT-CERT-REQUIRED"]["severity"] == "info"
    assert not {"DIMSE-FIND-STUDY", "TLS-NO-CLIENT-CERT-ACCEPTED"} & set(refused)
    for found in (admitted, refused):
        facts = found["TLS-CERT"]["details"]
        assert facts["self_signed"] and facts["days_left"] < 0
        assert (facts["key_type"], facts["key_bits"]) == ("RSA", 2048)
        assert facts["subject_alt_names"] == ["DNS:orthanc.invalid"]
        assert found["TLS-CERT-EXPIRED"]["severity"] == "high"
        assert found["TLS-CERT-SELF-SIGNED"]["severity"] == "low"
        assert found["TLS-CERT-NAME-MISMATCH"]["severity"] == "low"
    # A client-certificate demand must not hide an old TLS version the server accepts.
    assert ("TLS-OLD-VERSION" in admitted) == ("TLS-OLD-VERSION" in refused)


#: Self-signed, RSA 1024 bits, SHA-1, SAN *.example.org, valid for 100 years (made with
#: `openssl req -x509 -sha1 -newkey rsa:1024`; cryptography no longer signs with SHA-1).
WEAK_CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIICFjCCAX+gAwIBAgIUZeuOUzigjYx80SygU6UhHrZ38xEwDQYJKoZIhvcNAQEF
BQAwDzENMAsGA1UEAwwEcGFjczAgFw0yNjExMzAxOTMzNDlaGA8yMTI2MTEwNjE5
MzM0OVowDzENMAsGA1UEAwwEcGFjczCBnzANBgkqhkiG9w0BAQEFAAOBjQAwgYkC
gYEArDcl+i6NySiKpWU9XPoJBCVtsUboXirTRtDT8U4lmtc/5jGJdKhWFncwisWI
CJFQVdJiIQPqCZCASh8M+VrMh8fA7jVyqPJ8iQgZCP5dRFCBPC+Lawp3TOaaMvvM
X3iWAB039GjjJrCtoBhtNLxJNStikABDpHLUbzg0zgM2MekCAwEAAaNtMGswHQYD
VR0OBBYEFAVld/IHwxDyBzkFIJMS/EXr1nvBMB8GA1UdIwQYMBaAFAVld/IHwxDy
BzkFIJMS/EXr1nvBMA8GA1UdEwEB/wQFMAMBAf8wGAYDVR0RBBEwD4INKi5leGFt
cGxlLm9yZzANBgkqhkiG9w0BAQUFAAOBgQCChwQpdNz2Q168q0XJI2wlhNDPIT+m
4Nk5HenUAyvFF6PQ0FH1wXtBUSJh3b6k0sAUyiIPUYUNb4b4ku0Db0MVmOL92NXP
QjgVaF2G6MsH6VePIxseFfHAIYUYTfMv8MaJJH4bLUepwuVUIHY2GtrtwrMO+JBh
kZNweDbbtyO4DQ==
-----END CERTIFICATE-----
"""


def test_certificate_weaknesses() -> None:
    """Weak key and signature, self-signed, expiring soon, not yet valid, names: from the DER."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from pacsvault.scan.certs import certificate_findings, names_host

    def issued(days: tuple[int, int], san: x509.GeneralName) -> bytes:
        """An EC P-256 certificate issued by another name, valid from/to *days* from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacs")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some CA")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0]))
            .not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cert.public_bytes(serialization.Encoding.DER)

    def ids(der: bytes, host: str) -> dict[str, str]:
        return {f.id: f.severity for f in certificate_findings(der, "t", host)}

    weak = x509.load_pem_x509_certificate(WEAK_CERTIFICATE.encode()).public_bytes(
        serialization.Encoding.DER
    )
    assert ids(weak, "pacs.example.org") == {
        "TLS-CERT": "info", "TLS-CERT-WEAK-KEY": "medium", "TLS-CERT-WEAK-SIGNATURE": "medium",
        "TLS-CERT-SELF-SIGNED": "low",
    }  # fmt: skip
    assert names_host(weak, "PACS.example.org.") and not names_host(weak, "a.b.example.org")
    assert not names_host(weak, "example.org")
    soon = issued((-1, 10), x509.DNSName("pacs.example.org"))
    assert ids(soon, "pacs.example.org") == {"TLS-CERT": "info", "TLS-CERT-EXPIRING": "low"}
    early = issued((5, 300), x509.IPAddress(ipaddress.ip_address("10.1.2.3")))
    assert ids(early, "10.1.2.4") == {
        "TLS-CERT": "info", "TLS-CERT-EXPIRED": "medium", "TLS-CERT-NAME-MISMATCH": "low",
    }  # fmt: skip
    assert names_host(early, "10.1.2.3")


def test_orthanc_find_cap_is_counted_past_by_study_date(tmp_path: Path) -> None:
    """Orthanc's LimitFindResults: the cap is found and the studies counted exactly anyway."""
    with running_orthanc(tmp_path, LimitFindResults=4) as (port, _http, files):
        report = tmp_path / "r.json"
        proc = scan(f"127.0.0.1:{port}", "--json", str(report))
    study = by_id(report)["DIMSE-FIND-STUDY"]
    assert {k: (v["value"], v["quality"]) for k, v in study["counts"].items()} == {
        "patients": (3, "exact"), "studies": (6, "exact"), "series": (12, "exact"),
        "instances": (24, "exact"),
    }  # fmt: skip
    cap = study["details"]["result_cap"]
    assert cap["answers_per_query"] == 4 and cap["lower_bound_because"] == ""
    assert "Cancel" in cap["evidence"] and cap["date_range_queries"] > 1
    assert "stops at 4 answers" in study["result"]
    assert leaks(files, proc.stdout, proc.stderr, report.read_text()) == []


class CappedServer:
    """A fake C-FIND server for caps.partition: studies by date, at most *cap* answers."""

    def __init__(self, dates: list[str], cap: int, ranges: bool = True) -> None:
        from pacsvault.scan.tally import Tally

        self.dates, self.cap, self.ranges = dates, cap, ranges
        self.tally = Tally()

    def query(self, date_range: str):
        from pydicom.dataset import Dataset

        from pacsvault.scan.caps import CANCEL, SUCCESS, Run
        from pacsvault.scan.tally import in_range

        matching = [(n, d) for n, d in enumerate(self.dates)
                    if not self.ranges or in_range(d, date_range)]  # fmt: skip
        run = Run(0, SUCCESS)
        for n, date in matching[: self.cap]:
            ds = Dataset()
            ds.StudyInstanceUID, ds.PatientID, ds.StudyDate = f"2.25.{n}", f"P{n % 3}", date
            self.tally.add_study(ds)
            run.responses += 1
            run.outside += not in_range(date, date_range)
        if len(matching) > self.cap:
            run.status = CANCEL
        return run


def test_partition_by_study_date_counts_past_a_cap() -> None:
    import datetime as dt

    from pacsvault.scan.caps import Run, cap_evidence, partition

    today = dt.date(2026, 6, 1)
    spread = [f"20{y:02d}{m:02d}15" for y in range(10, 24) for m in (1, 6, 11)]  # 42 studies
    server = CappedServer(spread, cap=5)
    server.query("")
    result = partition(server.query, 5, today)
    assert (server.tally.responses, result.incomplete) == (42, "")
    assert result.queries < 200
    crowded = CappedServer(["20200101"] * 7 + ["20210101"], cap=5)  # one day beyond the cap
    result = partition(crowded.query, 5, today)
    assert "single day in 2020" in result.incomplete and crowded.tally.responses == 6
    deaf = CappedServer(spread, cap=5, ranges=False)  # ignores StudyDate
    result = partition(deaf.query, 5, today)
    assert result.stopped and "does not match StudyDate" in result.incomplete
    assert "Cancel" in cap_evidence(Run(4, 0xFE00))
    assert "round number" in cap_evidence(Run(500, 0x0000))
    assert cap_evidence(Run(37, 0x0000)) == cap_evidence(Run(500, 0, cancelled=True)) == ""


class FakeQido:
    """A loopback QIDO-RS server with *n* studies; optionally ignoring ``offset``."""

    def __init__(self, n: int, honour_offset: bool = True) -> None:
        import http.server
        from urllib.parse import parse_qs, urlsplit

        studies = [{"0020000D": {"vr": "UI", "Value": [f"2.25.{i}"]},
                    "00100020": {"vr": "LO", "Value": [f"P{i % 4}"]},
                    "00201206": {"vr": "IS", "Value": [2]},
                    "00201208": {"vr": "IS", "Value": [3]}} for i in range(n)]  # fmt: skip

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/dicom-web/studies":
                    self.send_error(404)
                    return
                query = parse_qs(url.query)
                limit = int(query.get("limit", ["100"])[0])
                offset = int(query.get("offset", ["0"])[0]) if honour_offset else 0
                body = json.dumps(studies[offset : offset + limit]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_qido_paging_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without native counters, QIDO-RS is paged: exact when the server pages, else lower bound."""
    from pacsvault.scan import dicomweb

    monkeypatch.setattr(dicomweb, "PAGE_SIZE", 4)
    for honour, quality in ((True, "exact"), (False, "lower bound")):
        fake = FakeQido(10, honour_offset=honour)
        try:
            found = dicomweb.probe_dicomweb(fake.base, "t", 5.0)
        finally:
            fake.close()
        qido = next(f for f in found if f.id == "WEB-QIDO-OPEN")
        counts = {k: (c.value, c.quality) for k, c in qido.counts.items()}
        studies = 10 if honour else 4
        assert counts == {"patients": (4, quality), "studies": (studies, quality),
                          "series": (2 * studies, quality), "instances": (3 * studies, quality)}


def test_multipart_parts_are_counted_across_chunks() -> None:
    from pacsvault.scan.dicomweb import PartCounter

    boundary = "b0undary-42"
    body = b"".join(
        f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + b"\0" * 128 + b"DICM" + bytes(range(256)) * 3
        for _ in range(3)
    ) + f"\r\n--{boundary}--\r\n".encode()
    for size in (1, 5, 7, 64, len(body)):
        counter = PartCounter(boundary)
        for at in range(0, len(body), size):
            counter(body[at : at + size])
        assert (counter.parts(truncated=False), counter.dicm) == (3, True), size


class TlsServer:
    """A loopback TLS server that completes handshakes and then waits (no DICOM)."""

    def __init__(self, cert: Path, key: Path, verify: ssl.VerifyMode,
                 max_version: ssl.TLSVersion) -> None:  # fmt: skip
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.load_verify_locations(cafile=str(cert))
        self.ctx.verify_mode, self.ctx.maximum_version = verify, max_version
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), self.ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    def close(self) -> None:
        self.sock.close()


def test_client_certificate_demand_seen_in_tls_12_and_13(tmp_path: Path) -> None:
    """TLS 1.2 refuses inside the handshake (seen by refusing a throwaway certificate),
    TLS 1.3 right after it; a server that only requests a certificate is not flagged."""
    from pacsvault.scan.tls_probe import probe_tls

    cert, key = make_certificate(tmp_path, name="localhost")
    cases = [(ssl.CERT_REQUIRED, ssl.TLSVersion.TLSv1_2), (ssl.CERT_REQUIRED,
             ssl.TLSVersion.TLSv1_3), (ssl.CERT_OPTIONAL, ssl.TLSVersion.TLSv1_3)]  # fmt: skip
    seen = []
    for verify, version in cases:
        server = TlsServer(cert, key, verify, version)
        try:
            found = {f.id: f for f in probe_tls("127.0.0.1", server.port, 3.0)}
        finally:
            server.close()
        assert "TLS-SUPPORTED" in found
        seen.append("TLS-CLIENT-CERT-REQUIRED" in found)
    assert seen == [True, True, False]
