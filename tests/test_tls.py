"""DICOM over TLS with DCMTK: peer certificates from `pacsvault peer cert`, and every refusal."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pydicom
import pytest

from conftest import SERVER_AET, Server, cli, dataset_bytes, dcmtk, write_data_set
from pacsvault.dicom.synthetic import Spec
from pacsvault.security.tls import LocalCA, expiry_note


@pytest.fixture
def tls_site(data_dir: Path, make_server, tmp_path: Path):
    """A server with peer 'ws' (AE WS) that must use TLS, and its certificate files."""
    cli(
        data_dir,
        "peer",
        "add",
        "ws",
        "--aet",
        "WS",
        "--host",
        "127.0.0.1",
        "--allow",
        "echo,store,find,get",
        "--tls",
        "required",
    )
    certs = tmp_path / "certs"
    out = cli(data_dir, "peer", "cert", "ws", "--out", str(certs)).stdout.split()
    assert out == [str(certs / "ws.key"), str(certs / "ws.crt"), str(certs / "ca.crt")]
    assert (certs / "ws.key").stat().st_mode & 0o077 == 0
    return make_server(data_dir), certs


def tls_args(certs: Path, name: str = "ws") -> list[str]:
    return [
        "+tls",
        str(certs / f"{name}.key"),
        str(certs / f"{name}.crt"),
        "+cf",
        str(certs / "ca.crt"),
    ]


def get_over_tls(server: Server, certs: Path, study_uid: str) -> dict[str, bytes]:
    """C-GET a study with pynetdicom over TLS; returns SOP Instance UID -> dataset bytes."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    from pacsvault.dicom.synthetic import SOP_CLASS_FOR

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
    ctx.load_cert_chain(certs / "ws.crt", certs / "ws.key")
    received: dict[str, bytes] = {}

    def on_store(event) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="WS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in SOP_CLASS_FOR.values():
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate(
        "127.0.0.1",
        server.tls_port,
        ae_title=SERVER_AET,
        tls_args=(ctx, "localhost"),
        ext_neg=[build_role(uid, scp_role=True) for uid in SOP_CLASS_FOR.values()],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    model = StudyRootQueryRetrieveInformationModelGet
    statuses = [status.Status for status, _ in assoc.send_c_get(query, model)]
    assoc.release()
    assert statuses[-1] == 0x0000
    return received


def refusals(server: Server) -> list[str]:
    return [
        d or ""
        for a, o, _actor, _addr, d in server.audit()
        if a == "association" and o == "refused"
    ]


def test_store_find_get_over_tls(tls_site, tmp_path: Path) -> None:
    server, certs = tls_site
    files = write_data_set(tmp_path / "f", Spec(patients=1, studies_per_patient=1))
    tls = tls_args(certs)
    port = str(server.tls_port)
    store = dcmtk(
        "storescu",
        *tls,
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        port,
        *[str(p) for p, _ in files],
    )
    assert store.returncode == 0, store.stderr
    find = dcmtk(
        "findscu",
        *tls,
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
        "-X",
        "-od",
        str(tmp_path),
        "127.0.0.1",
        port,
    )
    assert find.returncode == 0, find.stderr
    assert [pydicom.dcmread(p).StudyInstanceUID for p in tmp_path.glob("rsp*.dcm")] == [
        files[0][1].StudyInstanceUID
    ]
    # DCMTK 3.6.7's getscu and movescu have no TLS options: retrieve with pynetdicom over TLS.
    received = get_over_tls(server, certs, files[0][1].StudyInstanceUID)
    assert received.keys() == {ds.SOPInstanceUID for _, ds in files}
    for path, ds in files:
        assert received[ds.SOPInstanceUID] == dataset_bytes(path)
    accepted = [d for a, o, *_, d in server.audit() if a == "association" and o == "success"]
    assert any("TLS" in (d or "") for d in accepted)


def test_peer_requiring_tls_is_refused_in_cleartext(tls_site) -> None:
    server, _ = tls_site
    proc = dcmtk("echoscu", "-aet", "WS", "-aec", SERVER_AET, "127.0.0.1", str(server.port))
    assert proc.returncode != 0
    assert any("peer requires TLS" in d for d in refusals(server))


def test_without_client_certificate(tls_site) -> None:
    server, certs = tls_site
    proc = dcmtk(
        "echoscu",
        "+tla",
        "+cf",
        str(certs / "ca.crt"),
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert proc.returncode != 0
    assert any("no client certificate" in d for d in refusals(server))


def test_certificate_from_another_ca(tls_site, tmp_path: Path) -> None:
    server, certs = tls_site
    rogue = LocalCA(tmp_path / "rogue")
    rogue.create("rogue")
    rogue_certs = tmp_path / "rogue-certs"
    rogue.issue_peer("ws", rogue_certs)
    (rogue_certs / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())  # trust the server
    proc = dcmtk(
        "echoscu",
        *tls_args(rogue_certs),
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert proc.returncode != 0
    assert any("TLS handshake failed" in d for d in _wait_refusals(server))


def test_certificate_issued_to_another_peer(tls_site, data_dir: Path, tmp_path: Path) -> None:
    server, certs = tls_site
    cli(
        data_dir, "peer", "add", "other", "--aet", "OTHER", "--host", "127.0.0.1", "--allow", "echo"
    )
    cli(data_dir, "peer", "cert", "other", "--out", str(certs))
    proc = dcmtk(
        "echoscu",
        *tls_args(certs, "other"),
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert proc.returncode != 0
    assert any("not issued to this peer" in d for d in refusals(server))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_is_refused(tls_site) -> None:
    server, certs = tls_site
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.load_cert_chain(certs / "ws.crt", certs / "ws.key")
    with (
        socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, OSError)),
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)
    assert any("TLS handshake failed" in d for d in _wait_refusals(server))


def test_cleartext_to_the_tls_port(tls_site) -> None:
    server, _ = tls_site
    proc = dcmtk("echoscu", "-aet", "WS", "-aec", SERVER_AET, "127.0.0.1", str(server.tls_port))
    assert proc.returncode != 0
    assert any("TLS handshake failed" in d for d in _wait_refusals(server))
    ok = dcmtk(
        "echoscu",
        *tls_args(tls_site[1]),
        "-aet",
        "WS",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert ok.returncode == 0, ok.stderr


def test_pinned_certificate(data_dir: Path, make_server, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from pacsvault.security.tls import fingerprint

    ca = LocalCA(data_dir)
    certs = tmp_path / "c"
    ca.issue_peer("pinned", certs)
    der = x509.load_pem_x509_certificate((certs / "pinned.crt").read_bytes()).public_bytes(
        Encoding.DER
    )
    cli(
        data_dir,
        "peer",
        "add",
        "pinned",
        "--aet",
        "PINNED",
        "--host",
        "127.0.0.1",
        "--allow",
        "echo",
        "--tls",
        "required",
        "--client-cert",
        f"sha256:{fingerprint(der)}",
    )
    server = make_server(data_dir)
    ok = dcmtk(
        "echoscu",
        *tls_args(certs, "pinned"),
        "-aet",
        "PINNED",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert ok.returncode == 0, ok.stderr
    ca.issue_peer("pinned", tmp_path / "c2")  # same name, same CA, different certificate
    bad = dcmtk(
        "echoscu",
        *tls_args(tmp_path / "c2", "pinned"),
        "-aet",
        "PINNED",
        "-aec",
        SERVER_AET,
        "127.0.0.1",
        str(server.tls_port),
    )
    assert bad.returncode != 0
    assert any("pinned fingerprint" in d for d in refusals(server))


def test_status_shows_certificate_expiry_and_warns(data_dir: Path, tmp_path: Path) -> None:
    assert "certificate valid until" in cli(data_dir, "status").stdout
    cert, _key = LocalCA(data_dir).issue("soon", server=True, days=10)
    path = tmp_path / "soon.crt"
    path.write_bytes(cert)
    assert "WARNING: expires in" in expiry_note(path)
    exported = tmp_path / "ca.crt"
    cli(data_dir, "tls", "export-ca", "--out", str(exported))
    assert exported.read_bytes() == (data_dir / "tls" / "ca.crt").read_bytes()


def _wait_refusals(server: Server, timeout: float = 5.0) -> list[str]:
    """Refusal details, waiting briefly: a handshake failure is audited after the client left."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = refusals(server)
        if any("TLS handshake failed" in d for d in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
