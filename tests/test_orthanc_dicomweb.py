"""Orthanc's DICOMweb plugin as a client of pacsvault's DICOMweb server.

Debian's Orthanc with its orthanc-dicomweb plugin gets pacsvault as a DICOMweb server
(``DicomWeb.Servers``: pacsvault's HTTPS URL and a bearer token; pacsvault's CA in
``HttpsCACertificates``). Through Orthanc's REST API it lists pacsvault's studies
(QIDO-RS) and pulls one study (WADO-RS) into its own storage, where every instance
must be, dataset byte for dataset byte, what pacsvault stored. A wrong token gets
nothing. Both servers run as processes on free loopback ports, stopped at teardown.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from conftest import Server, cli, free_port, write_data_set
from pacsvault.dicom.part10 import split_part10
from pacsvault.dicom.synthetic import Spec

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SPEC = Spec(patients=2, studies_per_patient=1, series_per_study=2, instances_per_series=2)
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

pytestmark = pytest.mark.skipif(
    not (ORTHANC.is_file() and PLUGIN.is_file()),
    reason="Orthanc's DICOMweb plugin is not installed (Debian packages orthanc and "
    "orthanc-dicomweb; CI installs them)",
)


def session(ca: Path | None = None) -> requests.Session:
    """A requests session that ignores the environment's proxies and CA bundle."""
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    s.verify = str(ca) if ca else True
    return s


def dataset_of(part10: bytes) -> bytes:
    """The dataset bytes of a Part-10 object (after its file meta information)."""
    _ts, offset = split_part10(part10)
    return part10[offset:]


def syntax_of(part10: bytes) -> str:
    """The transfer syntax a Part-10 object's file meta states."""
    return split_part10(part10)[0]


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a multipart/related response's parts."""
    found = re.search(r'boundary="?([^";,\s]+)"?', content_type)
    assert found, content_type
    pieces = (b"\r\n" + body).split(b"\r\n--" + found.group(1).encode())
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        parts.append(piece.partition(b"\r\n\r\n")[2])
    return parts


@dataclass
class Vault:
    """pacsvault serving the synthetic data set over HTTPS, and what it was given."""

    server: Server
    token: str
    datasets: list[Dataset]
    files: dict[str, bytes]  # SOPInstanceUID -> the Part-10 file imported

    @property
    def ca(self) -> Path:
        return self.server.data / "tls" / "ca.crt"

    @property
    def base(self) -> str:
        return f"https://localhost:{self.server.https_port}/dicom-web"

    def study_uids(self) -> set[str]:
        return {str(ds.StudyInstanceUID) for ds in self.datasets}

    def wado(self, study: str) -> dict[str, bytes]:
        """pacsvault's own WADO-RS of *study*, as stored: SOPInstanceUID -> Part-10 bytes."""
        s = session(self.ca)
        r = s.get(
            f"{self.base}/studies/{study}",
            timeout=60,
            headers={"Authorization": f"Bearer {self.token}", "Accept": DICOM_ACCEPT},
        )
        assert r.status_code == 200, r.text
        parts = multipart_parts(r.content, r.headers["Content-Type"])
        by_uid = {}
        for part in parts:
            uid = next(u for u, f in self.files.items() if dataset_of(f) == dataset_of(part))
            by_uid[uid] = part
        assert len(by_uid) == len(parts)
        return by_uid


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    """pacsvault with SPEC imported, a radiologist with a write token, serving HTTPS."""
    tmp = tmp_path_factory.mktemp("vault")
    data = tmp / "data"
    cli(data, "init", "--aet", "PACSVAULT")
    written = write_data_set(tmp / "in", SPEC)
    path, first = written[0]  # one object in another transfer syntax: kept as it is
    first.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    first.save_as(path, enforce_file_format=True)
    cli(data, "import", str(tmp / "in"))
    cli(data, "user", "add", "orthanc", "--role", "radiologist")
    token = cli(data, "token", "create", "--user", "orthanc", "--scope", "write")
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    try:
        yield Vault(
            server,
            token.stdout.strip().splitlines()[-1].strip(),
            [ds for _, ds in written],
            {str(ds.SOPInstanceUID): path.read_bytes() for path, ds in written},
        )
    finally:
        server.stop()


class Orthanc:
    """Orthanc with the DICOMweb plugin, pacsvault declared as a DICOMweb server."""

    def __init__(self, directory: Path, vault: Vault) -> None:
        self.port = free_port()
        self.log_path = directory / "orthanc.log"
        self.config = directory / "orthanc.json"
        self.config.write_text(json.dumps(self.settings(directory, vault), indent=2))
        self.http = session()
        self.proc: subprocess.Popen | None = None

    def settings(self, directory: Path, vault: Vault) -> dict[str, Any]:
        """Orthanc's configuration: loopback HTTP only, pacsvault twice (right and wrong token)."""

        def server(token: str) -> dict[str, Any]:
            return {
                "Url": f"https://localhost:{vault.server.https_port}/dicom-web/",
                "HttpHeaders": {"Authorization": f"Bearer {token}"},
                "HasDelete": False,
            }

        return {
            "Name": "pacsvault-test-orthanc",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "StorageCompression": False,
            "Plugins": [str(PLUGIN)],
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpsVerifyPeers": True,
            "HttpsCACertificates": str(vault.ca),
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Servers": {
                    "pacsvault": server(vault.token),
                    "pacsvault-wrong-token": server("pvt_0000000000000000_" + "x" * 43),
                },
            },
        }

    def start(self, timeout: float = 30) -> None:
        """Start Orthanc and wait until its REST API answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited: {self.log()}")
            try:
                if self.http.get(self.url("/system"), timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"Orthanc did not start: {self.log()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url(path), timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return self.http.post(self.url(path), json=body, timeout=120)

    def instances(self) -> dict[str, str]:
        """SOPInstanceUID -> Orthanc's identifier of every instance Orthanc holds."""
        out = {}
        for ident in self.get("/instances").json():
            tags = self.get(f"/instances/{ident}").json()["MainDicomTags"]
            out[tags["SOPInstanceUID"]] = ident
        return out


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, vault: Vault) -> Iterator[Orthanc]:
    """Orthanc with the plugin, pacsvault trusted and declared; stopped at teardown."""
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), vault)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_orthanc_knows_pacsvault(orthanc: Orthanc) -> None:
    """The plugin loaded and lists the configured DICOMweb servers."""
    r = orthanc.get("/dicom-web/servers")
    assert r.status_code == 200, orthanc.log()
    assert {"pacsvault", "pacsvault-wrong-token"} <= set(r.json())


def test_orthanc_lists_pacsvault_studies(orthanc: Orthanc, vault: Vault) -> None:
    """QIDO-RS through Orthanc: all studies, then one patient's, with their keys."""
    r = orthanc.post("/dicom-web/servers/pacsvault/get", {"Uri": "/studies"})
    assert r.status_code == 200, orthanc.log()
    answers = r.json()
    assert {a["0020000D"]["Value"][0] for a in answers} == vault.study_uids()

    first = vault.datasets[0]
    r = orthanc.post(
        "/dicom-web/servers/pacsvault/get",
        {"Uri": "/studies", "Arguments": {"PatientID": str(first.PatientID)}},
    )
    assert r.status_code == 200, orthanc.log()
    (answer,) = r.json()
    assert answer["0020000D"]["Value"] == [str(first.StudyInstanceUID)]
    assert answer["00100020"]["Value"] == [str(first.PatientID)]
    assert answer["00100010"]["Value"] == [{"Alphabetic": str(first.PatientName)}]
    assert answer["00201208"]["Value"] == [SPEC.series_per_study * SPEC.instances_per_series]


def test_orthanc_retrieves_a_study_byte_identical(orthanc: Orthanc, vault: Vault) -> None:
    """WADO-RS into Orthanc: exactly that study's instances, in their transfer syntax
    (one is Implicit VR), datasets byte-identical to pacsvault's stored objects and to
    the files imported."""
    study = str(vault.datasets[0].StudyInstanceUID)
    wanted = {str(ds.SOPInstanceUID) for ds in vault.datasets if ds.StudyInstanceUID == study}
    r = orthanc.post("/dicom-web/servers/pacsvault/retrieve", {"Resources": [{"Study": study}]})
    assert r.status_code == 200, orthanc.log()
    assert int(r.json()["ReceivedInstancesCount"]) == len(wanted)

    held = orthanc.instances()
    assert set(held) == wanted
    stored = vault.wado(study)
    assert set(stored) == wanted
    for uid, ident in held.items():
        file = orthanc.get(f"/instances/{ident}/file")
        assert file.status_code == 200
        assert dataset_of(file.content) == dataset_of(stored[uid]) == dataset_of(vault.files[uid])
        assert syntax_of(file.content) == syntax_of(vault.files[uid])
    assert ImplicitVRLittleEndian in {syntax_of(vault.files[uid]) for uid in held}


def test_wrong_token_gets_nothing(orthanc: Orthanc, vault: Vault) -> None:
    """With a token pacsvault does not know, Orthanc can neither list nor retrieve."""
    before = set(orthanc.instances())
    r = orthanc.post("/dicom-web/servers/pacsvault-wrong-token/get", {"Uri": "/studies"})
    assert r.status_code != 200
    other = str(vault.datasets[-1].StudyInstanceUID)
    r = orthanc.post(
        "/dicom-web/servers/pacsvault-wrong-token/retrieve", {"Resources": [{"Study": other}]}
    )
    assert r.status_code != 200 or int(r.json().get("ReceivedInstancesCount", 0)) == 0
    assert set(orthanc.instances()) == before
