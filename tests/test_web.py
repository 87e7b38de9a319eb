"""The web door: HTTPS, logins, sessions, tokens, roles, scope, bad input and the audit.

Every test talks to a real `pacsvault serve` over HTTPS, verifying its certificate
against the site's own CA, with `requests` and `dicomweb-client`.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from conftest import (
    DATABASES,
    Server,
    add_user,
    api_token,
    cli,
    dataset_bytes,
    free_port,
    https_session,
    https_url,
    index_args,
    web_login,
    write_data_set,
)
from pacsvault.dicom.synthetic import Spec
from pacsvault.security import totp

PHYSICIANS = ["Smith^John", "Doe^Jane"]


# The short names these tests use for the shared helpers.
http, url, token = https_session, https_url, api_token


def dicomweb(server: Server, token: str) -> DICOMwebClient:
    session = http(server)
    return DICOMwebClient(url(server, "/dicom-web"), session=session,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip


@pytest.fixture(scope="module", params=DATABASES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict, list]]:
    """A server with two studies (one per referring physician) and one user per role.
    Once with each index database (sessions, tokens, lockouts live there too)."""
    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "data"
    cli(data, "init", "--aet", "PACSVAULT", *index_args(request, request.param))
    files = write_data_set(tmp / "f", Spec(patients=2, studies_per_patient=1, seed=4))
    studies: list[str] = []
    for path, ds in files:
        if ds.StudyInstanceUID not in studies:
            studies.append(ds.StudyInstanceUID)
        ds.ReferringPhysicianName = PHYSICIANS[studies.index(ds.StudyInstanceUID)]
        ds.save_as(path, enforce_file_format=True)
    assert "stored: 8" in cli(data, "import", str(tmp / "f")).stdout
    users = {role: add_user(data, role, role) for role in
             ("admin", "radiologist", "referrer", "uploader", "auditor")}  # fmt: skip
    cli(data, "user", "link", "referrer", "--physician", "Smith^John")
    tokens = {role: token(data, role, "write") for role in users}
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    yield server, {"passwords": users, "tokens": tokens, "files": files}, studies
    server.stop()


# -- the listener ----------------------------------------------------------------------------


def test_https_speaks_tls_1_2_plus_with_the_sites_certificate(site) -> None:
    server, _, _ = site
    ctx = ssl.create_default_context(cafile=str(server.data / "tls" / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", server.https_port)) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises(ssl.SSLError), socket.create_connection(
        ("127.0.0.1", server.https_port)
    ) as raw:  # fmt: skip
        old.wrap_socket(raw)


def test_only_health_and_login_answer_without_credentials(site) -> None:
    server, _, studies = site
    s = http(server)
    assert s.get(url(server, "/healthz")).status_code == 200
    assert s.get(url(server, "/login")).status_code == 200
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{studies[0]}",
                 f"/dicom-web/studies/{studies[0]}/metadata", "/api/session",
                 "/api/openapi.json"):  # fmt: skip
        r = s.get(url(server, path))
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert s.post(url(server, "/dicom-web/studies")).status_code == 401
    home = s.get(url(server, "/"), allow_redirects=False)
    assert home.status_code == 303 and home.headers["Location"] == "/login"


def test_security_headers(site) -> None:
    server, _, _ = site
    r = http(server).get(url(server, "/login"))
    h = r.headers
    assert h["Strict-Transport-Security"].startswith("max-age=")
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert "script-src 'self'" in h["Content-Security-Policy"]
    assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer" and h["Cache-Control"] == "no-store"
    assert "server" not in {k.lower() for k in h}


def test_oversized_requests_are_refused(site) -> None:
    server, users, _ = site
    s = http(server, users["tokens"]["admin"])
    r = s.get(url(server, "/dicom-web/studies"), headers={"X-Big": "x" * 20000})
    assert r.status_code in (400, 431)
    r = s.post(url(server, "/dicom-web/studies"),
               headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                        "Content-Length": str(10**12)}, data=b"")  # fmt: skip
    assert r.status_code == 413


def test_a_head_that_never_ends_is_refused_before_it_grows(site) -> None:
    """The HTTP parser buffers an unfinished header; the listener stops reading one at
    the head limit (16 KiB by default) with 431 and closes, and goes on serving."""
    server, users, _ = site
    ctx = ssl.create_default_context(cafile=str(server.data / "tls" / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /dicom-web/studies HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(64):  # 1 MiB at most, never a line end
                tls.sendall(b"x" * 16384)
        except OSError:
            pass  # closed on us: what should happen
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"larger than 16384 bytes" in answer
    # pipelined requests still work, and the listener serves the next connection
    with (
        socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2)
        got = b""
        while got.count(b"HTTP/1.1 200 ") < 2:
            chunk = tls.recv(65536)
            assert chunk, got
            got += chunk
    r = http(server, users["tokens"]["admin"]).get(url(server, "/dicom-web/studies"),
                                                  headers={"X-Fits": "y" * 8000})  # fmt: skip
    assert r.status_code == 200


# -- sessions ----------------------------------------------------------------------------------


def login(server: Server, name: str, password: str, code: str = "") -> requests.Session:
    s = web_login(server, name, password, code)
    assert s is not None, f"{name} could not log in"
    return s


def test_a_login_sets_a_strict_session_cookie(site) -> None:
    server, users, _ = site
    s = http(server)
    r = s.post(url(server, "/login"),
               data={"username": "radiologist", "password": users["passwords"]["radiologist"]},
               allow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-pv_session=")
    for flag in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    assert s.get(url(server, "/dicom-web/studies")).status_code == 200
    home = s.get(url(server, "/"))  # the study list (the viewer fetches the data itself)
    assert home.status_code == 200 and 'id="studies"' in home.text


def test_a_state_change_needs_the_csrf_token(site, tmp_path: Path) -> None:
    server, users, _ = site
    s = login(server, "radiologist", users["passwords"]["radiologist"])
    csrf = s.headers.pop("X-CSRF-Token")
    body, ctype = _stow_body(users["files"][0][0], new_uid=True)
    assert s.post(url(server, "/dicom-web/studies"), data=body,
                  headers={"Content-Type": ctype}).status_code == 403  # fmt: skip
    r = s.post(url(server, "/dicom-web/studies"), data=body,
               headers={"Content-Type": ctype, "X-CSRF-Token": csrf})  # fmt: skip
    assert r.status_code == 200, r.text
    assert s.post(url(server, "/logout"), headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert s.post(url(server, "/logout"), headers={"X-CSRF-Token": csrf}).status_code == 200
    assert s.get(url(server, "/dicom-web/studies")).status_code == 401


def test_wrong_passwords_lock_the_account_and_the_address(site) -> None:
    server, _users, _ = site
    name = "locked-" + str(int(time.time()))
    password = add_user(server.data, name, "radiologist")
    s = http(server)
    for _ in range(5):
        r = s.post(url(server, "/login"), data={"username": name, "password": "nope"})
        assert r.status_code == 401
    r = s.post(url(server, "/login"), data={"username": name, "password": password})
    assert r.status_code == 401  # the right password no longer helps
    listed = cli(server.data, "lockout", "list").stdout
    assert f"account:{name}" in listed and "address:127.0.0.1" in listed
    cli(server.data, "lockout", "clear")
    assert s.post(url(server, "/login"), data={"username": name, "password": password},
                  allow_redirects=False).status_code == 303  # fmt: skip
    refused = [d for a, o, _c, _ad, d in server.audit() if a == "login" and o == "refused"]
    assert len(refused) >= 6


def test_a_second_factor(site) -> None:
    server, _, _ = site
    password = add_user(server.data, "twofa", "radiologist")
    out = cli(server.data, "user", "totp", "twofa").stdout
    secret = re.search(r"secret: (\w+)", out).group(1)  # type: ignore[union-attr]
    s = http(server)
    assert s.post(url(server, "/login"), data={"username": "twofa", "password": password}
                  ).status_code == 401  # fmt: skip
    assert s.post(url(server, "/login"), data={"username": "twofa", "password": password,
                                               "code": "000000"}).status_code == 401  # fmt: skip
    login(server, "twofa", password, totp.code_at(secret, time.time()))
    cli(server.data, "lockout", "clear")


@pytest.fixture
def short_sessions(data_dir: Path, make_server) -> tuple[Server, str]:
    path = data_dir / "pacsvault.toml"
    path.write_text(path.read_text().replace("session_idle = 900", "session_idle = 2"))
    password = add_user(data_dir, "idle", "radiologist")
    return make_server(data_dir), password


def test_an_idle_session_expires(short_sessions) -> None:
    server, password = short_sessions
    s = login(server, "idle", password)
    assert s.get(url(server, "/api/session")).status_code == 200
    time.sleep(1)
    assert s.get(url(server, "/api/session")).status_code == 200  # use keeps it alive
    time.sleep(3)
    assert s.get(url(server, "/api/session")).status_code == 401


# -- tokens and roles -------------------------------------------------------------------------


def test_tokens_are_listed_without_secrets_and_revocable(site) -> None:
    server, _, _ = site
    made = cli(server.data, "token", "create", "--user", "radiologist", "--scope", "read",
               "--expires", "1d").stdout.splitlines()  # fmt: skip
    t = made[-1]  # the token alone on the last line, printed once
    assert "until" in made[-2] and t not in made[-2]
    token_id = t.split("_")[1]
    listed = cli(server.data, "token", "list").stdout
    assert token_id in listed and t not in listed
    with server.index() as conn:
        stored = [r[0] for r in conn.execute("SELECT secret_hash FROM api_tokens")]
    assert t.split("_", 2)[2] not in " ".join(stored)
    s = http(server, t)
    assert s.get(url(server, "/dicom-web/studies")).status_code == 200
    cli(server.data, "token", "revoke", token_id)
    assert s.get(url(server, "/dicom-web/studies")).status_code == 401
    assert http(server, t[:-1] + "x").get(url(server, "/dicom-web/studies")).status_code == 401
    cli(server.data, "lockout", "clear")  # those failures counted against 127.0.0.1


def test_a_read_token_cannot_store(site) -> None:
    server, users, _ = site
    t = token(server.data, "radiologist", "read")
    body, ctype = _stow_body(users["files"][0][0], new_uid=True)
    r = http(server, t).post(url(server, "/dicom-web/studies"), data=body,
                             headers={"Content-Type": ctype})  # fmt: skip
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("role", "search", "store"),
    [("admin", 200, 200), ("radiologist", 200, 200), ("uploader", 403, 200),
     ("auditor", 403, 403)],
)  # fmt: skip
def test_roles(site, role: str, search: int, store: int) -> None:
    server, users, _ = site
    s = http(server, users["tokens"][role])
    assert s.get(url(server, "/dicom-web/studies")).status_code == search
    body, ctype = _stow_body(users["files"][0][0], new_uid=True)
    assert s.post(url(server, "/dicom-web/studies"), data=body,
                  headers={"Content-Type": ctype}).status_code == store  # fmt: skip


def test_a_referrer_sees_exactly_its_studies(site) -> None:
    server, users, studies = site
    client = dicomweb(server, users["tokens"]["referrer"])
    found = {s["0020000D"]["Value"][0] for s in client.search_for_studies()}
    assert found == {studies[0]}
    other = studies[1]
    series = _series_of(users["files"], other)
    sop = _instance_of(users["files"], other)
    s = http(server, users["tokens"]["referrer"])
    for path in (f"/dicom-web/studies/{other}", f"/dicom-web/studies/{other}/metadata",
                 f"/dicom-web/studies/{other}/series/{series}/instances/{sop}",
                 f"/dicom-web/studies/{other}/series/{series}/instances/{sop}/metadata",
                 f"/dicom-web/studies/{other}/series"):  # fmt: skip
        r = s.get(url(server, path))
        missing = s.get(url(server, path.replace(other, "1.2.3.4.5.6")))
        assert (r.status_code, r.text) == (missing.status_code, missing.text), path
        assert r.status_code in (404, 200) and other not in r.text
    # Shared: now it can.
    cli(server.data, "share", other, "--user", "referrer", "--expires", "1h")
    assert {s["0020000D"]["Value"][0] for s in client.search_for_studies()} == set(studies)


# -- DICOMweb ---------------------------------------------------------------------------------


def test_dicomweb_client_round_trip(site) -> None:
    server, users, studies = site
    client = dicomweb(server, users["tokens"]["radiologist"])
    path, ds = users["files"][0]
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    assert {s["0020000D"]["Value"][0] for s in client.search_for_studies()} >= set(studies)
    got = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert [s["0020000D"]["Value"][0] for s in got] == [study]
    assert got[0]["00100010"]["Value"][0]["Alphabetic"] == str(ds.PatientName)
    assert len(client.search_for_series(study)) == 2
    inst = client.retrieve_instance(study, series, sop)
    stored = Path(path)
    assert inst.SOPInstanceUID == sop and str(inst.PatientName) == str(ds.PatientName)
    # The bytes on the wire are the object as it was received.
    raw = http(server, users["tokens"]["radiologist"]).get(
        url(server, f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    boundary = raw.headers["Content-Type"].split("boundary=")[1]
    part = raw.content.split(b"--" + boundary.encode())[1]
    obj = part.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")]
    from pacsvault.dicom.part10 import split_part10

    assert obj[split_part10(obj)[1] :] == dataset_bytes(stored)
    meta = client.retrieve_instance_metadata(study, series, sop)
    assert meta["00100010"]["Value"][0]["Alphabetic"] == str(ds.PatientName)
    assert "BulkDataURI" in meta["7FE00010"]
    assert len(client.retrieve_study(study)) >= 4  # other tests STOW copies into it
    new = pydicom.dcmread(stored)
    new.SOPInstanceUID = generate_uid()
    new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
    result = client.store_instances([new])
    assert result.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == new.SOPInstanceUID
    assert len(client.search_for_instances(study)) >= 5


@pytest.mark.parametrize(
    ("query", "code", "reason"),
    [("StudyDate=2020-13-45", 400, "date"), ("NotAnAttribute=1", 400, "unknown"),
     ("limit=-1", 400, "negative"), ("limit=abc", 400, "whole number"),
     ("Modality=CT", 400, "not an attribute of the study level"),
     ("StudyInstanceUID=1.2.a", 400, "invalid UID")],
)  # fmt: skip
def test_malformed_searches_get_400_with_a_reason(site, query: str, code: int, reason: str) -> None:
    server, users, _ = site
    r = http(server, users["tokens"]["admin"]).get(url(server, f"/dicom-web/studies?{query}"))
    assert r.status_code == code and reason in r.json()["detail"], r.text


def test_paging_and_includefield(site) -> None:
    server, users, _ = site
    s = http(server, users["tokens"]["admin"])
    page = s.get(url(server, "/dicom-web/studies?limit=1"))
    assert len(page.json()) == 1 and "additional results" in page.headers["Warning"]
    second = s.get(url(server, "/dicom-web/studies?limit=1&offset=1")).json()
    assert second and second[0]["0020000D"] != page.json()[0]["0020000D"]
    full = s.get(url(server, "/dicom-web/studies?includefield=all&limit=1")).json()[0]
    assert "00101010" in full  # PatientAge, only returned when asked
    fuzzy = s.get(url(server, "/dicom-web/studies?PatientName=do&fuzzymatching=true")).json()
    assert fuzzy and all(r["00100010"]["Value"][0]["Alphabetic"].startswith("DOE") for r in fuzzy)


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [(b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n",
      'multipart/related; type="application/dicom"; boundary=b', 409),
     (b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM-but-cut",
      'multipart/related; type="application/dicom"; boundary=b', 400),
     (b"{}", "application/json", 415),
     (b"--b--", "multipart/related; boundary=b", 400),
     (b"x", 'multipart/related; type="application/pdf"; boundary=b', 415)],
    ids=["not-dicom", "cut-body", "json", "no-parts", "wrong-type"],
)  # fmt: skip
def test_bad_stow_bodies_store_nothing(site, body: bytes, ctype: str, code: int) -> None:
    server, users, _ = site
    before = cli(server.data, "status").stdout
    r = http(server, users["tokens"]["admin"]).post(
        url(server, "/dicom-web/studies"), data=body, headers={"Content-Type": ctype}
    )
    assert r.status_code == code, r.text
    assert re.search(r"instances: \d+", before).group(0) in cli(server.data, "status").stdout  # type: ignore[union-attr]


def test_a_cut_stow_stores_nothing_even_after_a_complete_part(site) -> None:
    server, users, _ = site
    good, ctype = _stow_body(users["files"][1][0], new_uid=True)
    cut = good[: good.rindex(b"\r\n--")]  # the last part never ends
    body = good.replace(b"--pvtest--\r\n", b"") + cut[cut.index(b"--pvtest") :]
    before = cli(server.data, "status").stdout
    s = http(server, users["tokens"]["admin"])
    r = s.post(url(server, "/dicom-web/studies"), data=body, headers={"Content-Type": ctype})
    assert r.status_code == 400
    assert re.search(r"instances: \d+", before).group(0) in cli(server.data, "status").stdout  # type: ignore[union-attr]


def test_invalid_uids_and_path_tricks(site) -> None:
    server, users, _ = site
    s = http(server, users["tokens"]["admin"])
    for path in ("/dicom-web/studies/1.2.a", "/dicom-web/studies/..%2F..%2Fetc",
                 "/dicom-web/studies/1.2.3/series/%00/instances/1"):  # fmt: skip
        r = s.get(url(server, path))
        assert 400 <= r.status_code < 500, (path, r.status_code)


def test_406_for_what_cannot_be_served(site) -> None:
    server, users, studies = site
    r = http(server, users["tokens"]["admin"]).get(
        url(server, f"/dicom-web/studies/{studies[0]}"), headers={"Accept": "application/pdf"}
    )
    assert r.status_code == 406


def test_web_accesses_are_in_the_audit_trail(site) -> None:
    server, users, studies = site
    client = dicomweb(server, users["tokens"]["radiologist"])
    client.search_for_studies()
    client.retrieve_study(studies[0])
    out = cli(server.data, "audit", "search", "--user", "radiologist").stdout
    assert "\tquery\tsuccess\tuser:radiologist\t127.0.0.1" in out
    assert re.search(r"ended: completed \d+, failed 0, warning 0", out)
    assert cli(server.data, "audit", "verify").returncode == 0


# -- helpers ------------------------------------------------------------------------------


def _stow_body(path: Path, *, new_uid: bool = False) -> tuple[bytes, str]:
    ds = pydicom.dcmread(path)
    if new_uid:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body = (b"--pvtest\r\nContent-Type: application/dicom\r\n\r\n" + buf.getvalue()
            + b"\r\n--pvtest--\r\n")  # fmt: skip
    return body, 'multipart/related; type="application/dicom"; boundary=pvtest'


def _series_of(files: list, study: str) -> str:
    return next(ds.SeriesInstanceUID for _p, ds in files if ds.StudyInstanceUID == study)


def _instance_of(files: list, study: str) -> str:
    return next(ds.SOPInstanceUID for _p, ds in files if ds.StudyInstanceUID == study)


# -- settings: HTTP redirect, CORS, OpenID Connect --------------------------------------------


def _set(data: Path, **values: str) -> None:
    path = data / "pacsvault.toml"
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path.write_text(text)


def test_plain_http_only_redirects(data_dir: Path, make_server) -> None:
    port = free_port()
    _set(data_dir, http_redirect_port=str(port))
    server = make_server(data_dir)
    r = requests.get(f"http://127.0.0.1:{port}/dicom-web/studies?PatientID=x",
                     allow_redirects=False, timeout=10)  # fmt: skip
    assert r.status_code == 308
    assert r.headers["Location"] == f"https://127.0.0.1:{server.https_port}/dicom-web/studies"
    assert "HTTP redirect" in server.log_text()


def test_cors_for_configured_origins_only(data_dir: Path, make_server) -> None:
    _set(data_dir, cors_origins='["https://ohif.example.org"]')
    add_user(data_dir, "viewer", "radiologist")
    t = token(data_dir, "viewer")
    server = make_server(data_dir)
    s = http(server)
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    ok = s.options(url(server, "/dicom-web/studies"),
                   headers={"Origin": "https://ohif.example.org", **preflight})  # fmt: skip
    assert ok.headers.get("Access-Control-Allow-Origin") == "https://ohif.example.org"
    assert "Access-Control-Allow-Credentials" not in ok.headers
    bad = s.options(url(server, "/dicom-web/studies"),
                    headers={"Origin": "https://evil.example", **preflight})  # fmt: skip
    assert "Access-Control-Allow-Origin" not in bad.headers
    got = http(server, t).get(url(server, "/dicom-web/studies"),
                              headers={"Origin": "https://ohif.example.org"})  # fmt: skip
    assert got.status_code == 200
    assert got.headers["Access-Control-Allow-Origin"] == "https://ohif.example.org"


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """An OpenID provider on loopback: a discovery document and a JWKS with one RSA key."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            docs = {"/.well-known/openid-configuration": {"issuer": base,
                                                         "jwks_uri": f"{base}/jwks"},
                    "/jwks": {"keys": [jwk]}}  # fmt: skip
            body = json.dumps(docs.get(self.path, {})).encode()
            self.send_response(200 if self.path in docs else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield base, key
    httpd.shutdown()


def test_openid_connect_bearer_tokens(data_dir: Path, make_server, issuer) -> None:
    import jwt

    base, key = issuer
    _set(data_dir, oidc_issuer=f'"{base}"', oidc_audience='"pacsvault"',
         oidc_roles='{ "pacs-rad" = "radiologist", "pacs-up" = "uploader" }')  # fmt: skip
    server = make_server(data_dir)

    def bearer(**claims: object) -> int:
        body = {"iss": base, "aud": "pacsvault", "sub": "u-42", "exp": int(time.time()) + 300,
                "preferred_username": "dr.who", "roles": ["pacs-rad"], **claims}  # fmt: skip
        text = jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})
        return http(server, text).get(url(server, "/dicom-web/studies")).status_code

    assert bearer() == 200
    assert bearer(roles=["pacs-up"]) == 403  # an uploader may not search
    assert bearer(roles=["someone-else"]) == 401  # no mapped role
    assert bearer(aud="other") == 401
    assert bearer(iss="https://evil.example") == 401
    assert bearer(exp=int(time.time()) - 10) == 401
    out = cli(data_dir, "audit", "search", "--user", "dr.who").stdout
    assert "\tquery\tsuccess\tuser:dr.who" in out
    cli(data_dir, "lockout", "clear")


def test_web_connections_have_nagle_off() -> None:
    """Responses go out at once: with Nagle on, every body waited ~40 ms behind its
    headers for the client's delayed ACK (bench/web found it)."""
    import socket

    from pacsvault.web.server import bind_listener

    listener = bind_listener("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        client = socket.create_connection(listener.getsockname()[:2])
        conn, _ = listener.accept()
        with client, conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()
