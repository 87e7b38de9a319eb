"""The admin API (/api): every endpoint against a real ``pacsvault serve`` over HTTPS.

Each change made through the API must show up where the command line looks (``peer
list``, ``user list``, ``share --list``...) and in ``pacsvault audit search`` under
the acting user; ``audit verify`` must pass afterwards. Roles, scopes and CSRF are
checked on the same server.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from conftest import WEB_ADMIN as ADMIN
from conftest import Web, cli, import_studies, start_web
from pacsvault.dicom.synthetic import Spec
from pacsvault.security import totp

STUDY_UID = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def web(data_dir: Path, make_server) -> Web:
    return start_web(data_dir, make_server)


def audited(data: Path, user: str = ADMIN) -> list[dict[str, Any]]:
    """The records of *user*, as ``pacsvault audit search --user`` shows them."""
    out = cli(data, "audit", "search", "--user", user, "--json").stdout
    return json.loads(out)


def assert_audited(data: Path, *details: str, user: str = ADMIN) -> None:
    """Each of *details* is in the trail as a success of ``user:USER``."""
    records = audited(data, user)
    for r in records:
        assert r["actor"] == f"user:{user}"
    done = {r["detail"] for r in records if r["outcome"] == "success"}
    missing = [d for d in details if d not in done]
    assert not missing, f"not audited: {missing}\n{sorted(done)}"


def assert_verified(web: Web) -> None:
    """``pacsvault audit verify`` passes once the server has stopped."""
    web.server.stop()
    out = cli(web.data, "audit", "verify").stdout
    assert "audit trail intact" in out, out


# -- users ------------------------------------------------------------------------------


def test_users_round_trip(web: Web) -> None:
    r = web.call("POST", "/api/users", json={"name": "alice", "role": "radiologist"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["role"] == "radiologist" and not created["disabled"]
    session = web.login("alice", created["password"])
    assert session is not None
    assert session.get(web.url("/api/session")).json()["user"] == "alice"

    names = {u["name"]: u for u in web.call("GET", "/api/users").json()}
    assert "password" not in names["alice"] and names["alice"]["role"] == "radiologist"
    assert web.call("GET", "/api/users/alice").json()["name"] == "alice"

    r = web.call("PUT", "/api/users/alice/role", json={"role": "referrer"})
    assert r.status_code == 200 and r.json()["role"] == "referrer"
    link = {"physician": "Smith^John"}
    assert web.call("POST", "/api/users/alice/physicians", json=link).json() == {"changed": True}
    assert web.call("POST", "/api/users/alice/physicians", json=link).json() == {"changed": False}
    assert web.call("GET", "/api/users/alice").json()["physicians"] == ["Smith^John"]
    assert web.call("DELETE", "/api/users/alice/physicians/Smith%5EJohn").json()["changed"]
    assert web.call("DELETE", "/api/users/alice/physicians/Smith%5EJohn").status_code == 404

    r = web.call("POST", "/api/users/alice/password")
    new_password = r.json()["password"]
    assert new_password != created["password"]
    assert session.get(web.url("/api/session")).status_code == 401  # sessions ended
    assert web.login("alice", created["password"]) is None
    assert web.login("alice", new_password) is not None

    assert web.call("POST", "/api/users/alice/disable").json()["disabled"] is True
    assert web.login("alice", new_password) is None
    assert web.call("POST", "/api/users/alice/enable").json()["disabled"] is False
    assert web.login("alice", new_password) is not None

    listed = cli(web.data, "user", "list").stdout
    assert "alice\treferrer\tenabled" in listed
    assert_audited(web.data, "add alice role=radiologist", "role of alice: referrer",
                   "link alice to a physician", "unlink alice from a physician",
                   "new password for alice", "disable alice", "enable alice")  # fmt: skip
    assert_verified(web)


def test_user_errors(web: Web) -> None:
    assert web.call("POST", "/api/users", json={"name": "bob", "role": "uploader"}).ok
    r = web.call("POST", "/api/users", json={"name": "bob", "role": "uploader"})
    assert r.status_code == 400 and "exists" in r.json()["detail"]
    r = web.call("POST", "/api/users", json={"name": "bad name!", "role": "uploader"})
    assert r.status_code == 400 and "user name" in r.json()["detail"]
    r = web.call("POST", "/api/users", json={"name": "carl", "role": "king"})
    assert r.status_code == 400 and "role" in r.json()["detail"]
    for method, path in (("GET", "/api/users/nobody"), ("POST", "/api/users/nobody/disable"),
                         ("POST", "/api/users/nobody/password")):  # fmt: skip
        r = web.call(method, path)
        assert r.status_code == 404 and "nobody" in r.json()["detail"], (method, path)
    r = web.call("POST", "/api/users/bob/physicians", json={"physician": "^^"})
    assert r.status_code == 400 and "physician" in r.json()["detail"]
    r = web.call("POST", "/api/users", json={"name": "x" * 64, "role": "admin", "pad": "y" * 70000})
    assert r.status_code == 413
    assert web.call("GET", "/api/users/bob").json()["role"] == "uploader"
    refused = [r["detail"] for r in audited(web.data) if r["outcome"] == "refused"]
    assert refused == [
        "POST /api/users: 400 user 'bob' exists",
        "POST /api/users: 400 a user name is 1-64 letters, digits, '.', '_', '@' or '-'",
        "POST /api/users: 400 invalid request: body.role",
        "GET /api/users/{name}: 404 no user named 'nobody'",
        "POST /api/users/{name}/disable: 404 no user named 'nobody'",
        "POST /api/users/{name}/password: 404 no user named 'nobody'",
        "POST /api/users/{name}/physicians: 400 a physician name is needed, e.g. 'Last^First'",
        "POST /api/users: 413 request body larger than 65536 bytes",
    ]


def test_refusals_before_the_caller_is_known_are_audited(web: Web) -> None:
    """No credentials, a wrong token, a forged session: 401, each in the trail."""
    with web.client() as anonymous:
        assert anonymous.get(web.url("/api/users")).status_code == 401
        forged = {"Cookie": "__Host-pv_session=forged"}
        assert anonymous.get(web.url("/api/users"), headers=forged).status_code == 401
    wrong = "pvt_0123456789abcdef_" + "x" * 43
    assert web.call("GET", "/api/users", token=wrong).status_code == 401
    out = cli(web.data, "audit", "search", "--action", "login", "--outcome", "refused", "--json")
    refused = [(r["actor"], r["address"], r["detail"]) for r in json.loads(out.stdout)]
    assert refused == [
        ("unknown:-", "127.0.0.1", "no credentials for GET /api/users"),
        ("unknown:-", "127.0.0.1", "session: no session, or it expired"),
        ("unknown:-", "127.0.0.1", "bearer token: unknown token"),
    ]


def test_second_factor(web: Web) -> None:
    created = web.call("POST", "/api/users", json={"name": "tess", "role": "auditor"}).json()
    r = web.call("PUT", "/api/users/tess/second-factor", json={"enabled": True})
    factor = r.json()
    assert factor["enabled"] and factor["secret"]
    assert factor["otpauth_uri"].startswith("otpauth://totp/pacsvault%3Atess?secret=")
    assert web.call("GET", "/api/users/tess").json()["second_factor"] is True
    assert web.login("tess", created["password"]) is None
    code = totp.code_at(factor["secret"], time.time())
    assert web.login("tess", created["password"], code) is not None
    r = web.call("PUT", "/api/users/tess/second-factor", json={"enabled": False})
    assert r.json() == {"name": "tess", "enabled": False, "secret": None, "otpauth_uri": None}
    assert web.login("tess", created["password"]) is not None
    assert_audited(web.data, "new second factor for tess", "second factor removed for tess")


# -- tokens -----------------------------------------------------------------------------


def test_tokens_round_trip(web: Web) -> None:
    web.call("POST", "/api/users", json={"name": "rad", "role": "radiologist"})
    r = web.call("POST", "/api/tokens", json={"user": "rad", "scope": "read", "expires_in": 3600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"].startswith(f"pvt_{new['id']}_") and new["expires_at"]
    assert web.call("GET", "/dicom-web/studies", token=new["token"]).status_code in (200, 204)

    listing = web.call("GET", "/api/tokens", params={"user": "rad"})
    assert [t["id"] for t in listing.json()] == [new["id"]]
    assert listing.json()[0]["state"] == "active" and listing.json()[0]["last_used_at"]
    everything = web.call("GET", "/api/tokens").text
    assert new["token"].split("_", 2)[2] not in everything  # never the secret
    assert {"rad", ADMIN} <= {t["user"] for t in web.call("GET", "/api/tokens").json()}

    assert web.call("DELETE", f"/api/tokens/{new['id']}").json() == {"changed": True}
    assert web.call("GET", "/dicom-web/studies", token=new["token"]).status_code == 401
    assert web.call("GET", "/api/tokens", params={"user": "rad"}).json()[0]["state"] == "revoked"
    assert web.call("DELETE", f"/api/tokens/{new['id']}").status_code == 404
    assert f"{new['id']}\trad\tread\trevoked" in cli(web.data, "token", "list").stdout
    r = web.call("POST", "/api/tokens", json={"user": "ghost", "scope": "read"})
    assert r.status_code == 404
    assert_audited(web.data, f"revoke token {new['id']}")
    assert any(r["detail"].startswith(f"token {new['id']} for rad scope=read until")
               for r in audited(web.data))  # fmt: skip
    assert_verified(web)


# -- peers ------------------------------------------------------------------------------


def test_peers_round_trip(web: Web) -> None:
    peer = {"name": "WS9", "ae_title": "WS9", "host": "127.0.0.1", "port": 11113,
            "services": ["get", "find"], "tls": "required"}  # fmt: skip
    r = web.call("POST", "/api/peers", json=peer)
    assert r.status_code == 201, r.text
    assert r.json()["services"] == ["find", "get"] and r.json()["client_cert"] == "ca"
    listed = cli(web.data, "peer", "list").stdout
    assert "WS9\tWS9\t127.0.0.1\tport=11113\tallow=find,get\ttls=required" in listed
    assert web.call("GET", "/api/peers/WS9").json()["tls"] == "required"
    assert [p["name"] for p in web.call("GET", "/api/peers").json()] == ["WS9"]

    r = web.call("POST", "/api/peers", json=peer)
    assert r.status_code == 400 and "exists" in r.json()["detail"]
    r = web.call("POST", "/api/peers", json={**peer, "name": "X", "host": "a host"})
    assert r.status_code == 400 and "host must be" in r.json()["detail"]
    r = web.call("POST", "/api/peers", json={**peer, "name": "X", "services": ["fly"]})
    assert r.status_code == 400

    issued = web.call("POST", "/api/peers/WS9/certificate").json()
    cert = x509.load_pem_x509_certificate(issued["cert_pem"].encode())
    ca = x509.load_pem_x509_certificate(issued["ca_pem"].encode())
    key = serialization.load_pem_private_key(issued["key_pem"].encode(), None)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "WS9"
    assert cert.issuer == ca.subject
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert not list(web.data.glob(".peer-cert-*"))  # the key was not left on disk
    r = web.call("POST", "/api/peers/WS9/certificate", params={"format": "zip"})
    assert r.headers["content-type"] == "application/zip"
    assert sorted(zipfile.ZipFile(BytesIO(r.content)).namelist()) == ["WS9.crt", "WS9.key",
                                                                      "ca.crt"]  # fmt: skip
    assert web.call("POST", "/api/peers/NOPE/certificate").status_code == 404

    assert web.call("DELETE", "/api/peers/WS9").json() == {"changed": True}
    assert "WS9" not in cli(web.data, "peer", "list").stdout
    assert web.call("DELETE", "/api/peers/WS9").status_code == 404
    assert_audited(web.data, "add WS9 aet=WS9 host=127.0.0.1 allow=find,get tls=required "
                   "client-cert=ca user-identity=optional", "certificate for WS9",
                   "remove WS9")  # fmt: skip
    assert_verified(web)


# -- shares -----------------------------------------------------------------------------


def test_shares_round_trip(data_dir: Path, make_server, tmp_path: Path) -> None:
    datasets = import_studies(data_dir, tmp_path / "files", Spec(patients=1, studies_per_patient=1))
    study = datasets[0].StudyInstanceUID
    web = start_web(data_dir, make_server)
    web.call("POST", "/api/users", json={"name": "rita", "role": "referrer"})
    rita = web.new_token("rita", "read")

    def visible() -> list[str]:
        r = web.call("GET", "/dicom-web/studies", token=rita)
        return [s["0020000D"]["Value"][0] for s in r.json()] if r.status_code == 200 else []

    assert visible() == []
    r = web.call("POST", "/api/shares", json={"study_uid": study, "user": "rita",
                                              "expires_in": 86400})  # fmt: skip
    assert r.status_code == 201, r.text
    share = r.json()
    assert share["study_uid"] == study and share["created_by"] == f"user:{ADMIN}"
    assert visible() == [study]
    assert [s["id"] for s in web.call("GET", "/api/shares").json()] == [share["id"]]
    assert f"{share['id']}\trita\t{study}" in cli(web.data, "share", "--list").stdout

    assert web.call("DELETE", f"/api/shares/{share['id']}").json() == {"changed": True}
    assert visible() == []
    assert web.call("DELETE", f"/api/shares/{share['id']}").status_code == 404
    r = web.call("POST", "/api/shares", json={"study_uid": "not a uid", "user": "rita"})
    assert r.status_code == 400 and "UID" in r.json()["detail"]
    r = web.call("POST", "/api/shares", json={"study_uid": STUDY_UID, "user": "ghost"})
    assert r.status_code == 404
    assert_audited(web.data, "share a study with rita until "
                   f"{share_expiry(share)}", f"revoke share {share['id']}")  # fmt: skip
    assert_verified(web)


def share_expiry(share: dict[str, Any]) -> str:
    """The expiry of *share* as the audit detail writes it (whole seconds)."""
    from datetime import datetime

    return f"{datetime.fromisoformat(share['expires_at']).timestamp():.0f}"


# -- lockouts and sessions --------------------------------------------------------------


def test_lockouts_cleared_through_a_session(web: Web) -> None:
    admin = web.login(ADMIN, web.password)
    assert admin is not None
    csrf = {"X-CSRF-Token": admin.headers.pop("X-CSRF-Token")}
    for _ in range(5):
        assert web.login("mallory", "guess") is None
    keys = {e["key"] for e in admin.get(web.url("/api/lockouts")).json()}
    assert keys == {"address:127.0.0.1", "account:mallory"}
    assert web.call("GET", "/api/status").status_code == 401  # the address is locked out
    assert admin.delete(web.url("/api/lockouts/account:mallory")).status_code == 403  # no CSRF
    r = admin.delete(web.url("/api/lockouts/account:mallory"), headers=csrf)
    assert r.json() == {"cleared": 1}
    assert admin.get(web.url("/api/status")).json()["lockouts"] == 1
    assert admin.delete(web.url("/api/lockouts"), headers=csrf).json() == {"cleared": 1}
    assert web.call("GET", "/api/status").status_code == 200
    assert "no lockouts" in cli(web.data, "lockout", "list").stdout
    assert_audited(web.data, "cleared account:mallory", "cleared all")
    assert_verified(web)


def test_session_changes_need_the_csrf_token(web: Web) -> None:
    admin = web.login(ADMIN, web.password)
    assert admin is not None
    csrf = {"X-CSRF-Token": admin.headers.pop("X-CSRF-Token")}
    body = {"name": "dave", "role": "uploader"}
    assert admin.get(web.url("/api/users")).status_code == 200  # reading needs none
    assert admin.post(web.url("/api/users"), json=body).status_code == 403
    wrong = {"X-CSRF-Token": "not-the-token"}
    assert admin.post(web.url("/api/users"), json=body, headers=wrong).status_code == 403
    assert "dave" not in cli(web.data, "user", "list").stdout
    r = admin.post(web.url("/api/users"), json=body, headers=csrf)
    assert r.status_code == 201, r.text
    assert admin.post(web.url("/api/users/dave/disable")).status_code == 403
    assert admin.put(web.url("/api/users/dave/role"), json={"role": "admin"}).status_code == 403
    assert web.call("GET", "/api/users/dave").json() == {
        "name": "dave", "role": "uploader", "disabled": False, "physicians": [],
        "second_factor": False,
    }  # fmt: skip
    # GET /api/session hands out a fresh token; the old one stops working.
    fresh = admin.get(web.url("/api/session")).json()["csrf"]
    assert admin.post(web.url("/api/users/dave/disable"), headers=csrf).status_code == 403
    r = admin.post(web.url("/api/users/dave/disable"), headers={"X-CSRF-Token": fresh})
    assert r.status_code == 200 and r.json()["disabled"]
    refused = [r["detail"] for r in audited(web.data) if r["outcome"] == "refused"]
    assert refused == ["session request without its CSRF token"] * 5


# -- roles and scopes -------------------------------------------------------------------

#: One request to every admin route, with a valid body where it takes one.
ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/status", None),
    ("GET", "/api/doctor", None),
    ("GET", "/api/users", None),
    ("POST", "/api/users", {"name": "eve", "role": "admin"}),
    ("GET", "/api/users/root", None),
    ("POST", "/api/users/root/disable", None),
    ("POST", "/api/users/root/enable", None),
    ("POST", "/api/users/root/password", None),
    ("PUT", "/api/users/root/role", {"role": "auditor"}),
    ("PUT", "/api/users/root/second-factor", {"enabled": True}),
    ("POST", "/api/users/root/physicians", {"physician": "Smith^John"}),
    ("DELETE", "/api/users/root/physicians/Smith%5EJohn", None),
    ("GET", "/api/peers", None),
    ("POST", "/api/peers", {"name": "P", "ae_title": "P", "host": "10.0.0.1",
                            "services": ["echo"]}),
    ("GET", "/api/peers/P", None),
    ("DELETE", "/api/peers/P", None),
    ("POST", "/api/peers/P/certificate", None),
    ("GET", "/api/tokens", None),
    ("POST", "/api/tokens", {"user": "root", "scope": "admin"}),
    ("DELETE", "/api/tokens/0123456789abcdef", None),
    ("GET", "/api/shares", None),
    ("POST", "/api/shares", {"study_uid": STUDY_UID, "user": "root"}),
    ("DELETE", "/api/shares/1", None),
    ("GET", "/api/lockouts", None),
    ("DELETE", "/api/lockouts", None),
    ("DELETE", "/api/lockouts/address:127.0.0.1", None),
]  # fmt: skip


def admin_routes(web: Web) -> set[tuple[str, str]]:
    """(method, path template) of every admin route in the OpenAPI document (not the
    session's, nor the viewer's download, tagged ``export``)."""
    doc = web.call("GET", "/api/openapi.json").json()
    return {
        (m.upper(), p)
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
        if p.startswith("/api/")
        and p not in ("/api/session", "/api/openapi.json")
        and "export" not in op.get("tags", [])
    }


def test_admin_calls_cover_every_admin_route(web: Web) -> None:
    templates = {
        ("POST", "/api/audit/search"),
        ("GET", "/api/audit/verify"),
        *((m, _template(p)) for m, p, _b in ADMIN_CALLS),
    }
    assert templates == admin_routes(web)


def _template(path: str) -> str:
    """The route template a concrete path of ADMIN_CALLS is an instance of."""
    parts = path.split("/")
    names = {"users": "{name}", "peers": "{name}", "tokens": "{token_id}",
             "shares": "{share_id}", "lockouts": "{key}"}  # fmt: skip
    if len(parts) > 3:
        parts[3] = names[parts[2]]
    if len(parts) > 5 and parts[4] == "physicians":
        parts[5] = "{physician}"
    return "/".join(parts)


@pytest.fixture
def roles(web: Web) -> dict[str, str]:
    """Tokens of users in each role but admin, and an admin's read-scope token."""
    tokens = {}
    for name, role in (("ref", "referrer"), ("upl", "uploader"), ("aud", "auditor"),
                       ("rad", "radiologist")):  # fmt: skip
        web.call("POST", "/api/users", json={"name": name, "role": role})
        tokens[role] = web.new_token(name, "write")
    tokens["admin-read-scope"] = web.new_token(ADMIN, "read")
    return tokens


def test_other_roles_are_refused(web: Web, roles: dict[str, str]) -> None:
    changes = len(audited(web.data))
    for who, token in roles.items():
        for method, path, body in ADMIN_CALLS:
            r = web.call(method, path, token=token, json=body)
            assert r.status_code == 403, (who, method, path, r.status_code, r.text)
            assert r.json()["detail"] == "admin not permitted"
    assert web.call("GET", "/api/users/root").json()["role"] == "admin"  # nothing changed
    assert len(audited(web.data)) == changes + len(ADMIN_CALLS)  # the read-scope refusals
    refused = [r for r in audited(web.data, "ref") if r["outcome"] == "refused"]
    assert len(refused) == len(ADMIN_CALLS)
    assert {r["action"] for r in refused} == {"settings-change"}


def test_auditor_searches_but_does_not_administer(web: Web, roles: dict[str, str]) -> None:
    auditor = roles["auditor"]
    r = web.call("POST", "/api/audit/search", token=auditor, json={"action": "user-change"})
    assert r.status_code == 200, r.text
    assert web.call("POST", "/api/users", token=auditor,
                    json={"name": "x", "role": "admin"}).status_code == 403  # fmt: skip
    assert web.call("GET", "/api/users", token=auditor).status_code == 403
    # An admin's read-scope token may read the audit trail (read scope) but not administer.
    scoped = roles["admin-read-scope"]
    assert web.call("POST", "/api/audit/search", token=scoped, json={}).status_code == 200
    assert web.call("GET", "/api/users", token=scoped).status_code == 403
    assert web.call("GET", "/api/audit/verify", token=auditor).json()["intact"] is True
    for role in ("referrer", "uploader", "radiologist"):
        r = web.call("POST", "/api/audit/search", token=roles[role], json={})
        assert r.status_code == 403 and r.json()["detail"] == "audit not permitted"
        r = web.call("GET", "/api/audit/verify", token=roles[role])
        assert r.status_code == 403 and r.json()["detail"] == "audit not permitted"
    assert any(r["detail"].startswith("search by action: ") for r in audited(web.data, "aud"))


# -- status and the audit search --------------------------------------------------------


@pytest.fixture
def stocked(data_dir: Path, make_server, tmp_path: Path) -> Iterator[tuple[Web, list[Any]]]:
    """A server whose archive holds two synthetic patients."""
    spec = Spec(patients=2, studies_per_patient=1, series_per_study=1, instances_per_series=2)
    datasets = import_studies(data_dir, tmp_path / "files", spec)
    yield start_web(data_dir, make_server), datasets


def test_status_counts_and_listeners(stocked: tuple[Web, list[Any]]) -> None:
    web, datasets = stocked
    r = web.call("GET", "/api/status")
    status = r.json()
    assert status["counts"]["patients"] == 2 and status["counts"]["instances"] == 4
    assert status["counts"]["bytes"] > 0 and status["identity_conflicts"] == 0
    assert status["ae_title"] == "PACSVAULT" and status["users"] == 1
    ports = {x["kind"]: (x["port"], x["enabled"]) for x in status["listeners"]}
    server = web.server
    assert ports["https"] == (server.https_port, True)
    assert ports["dicom"] == (server.port, True)
    assert ports["dicom-tls"] == (server.tls_port, True)
    assert ports["http-redirect"][1] is False
    assert status["tls_certificate"].startswith("valid until")
    printed = cli(web.data, "status").stdout  # the same numbers as the command line's
    for key, value in status["counts"].items():
        assert f"\n{key}: {value}\n" in printed
    assert f"certificate {status['tls_certificate']}" in printed
    for ds in datasets:  # never patient data
        assert str(ds.PatientID) not in r.text
        assert str(ds.PatientName).split("^")[0] not in r.text


def test_audit_search_filters(stocked: tuple[Web, list[Any]]) -> None:
    web, datasets = stocked
    patient = str(datasets[0].PatientID)
    web.call("POST", "/api/users", json={"name": "zed", "role": "uploader"})

    r = web.call("POST", "/api/audit/search", json={"patient": patient})
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert records and {x["action"] for x in records} == {"import"}
    refs = {x["patient_ref"] for x in records}
    assert len(refs) == 1 and None not in refs
    assert patient not in r.text
    cli_records = json.loads(cli(web.data, "audit", "search", "--patient", patient,
                                 "--json").stdout)  # fmt: skip
    assert [x["seq"] for x in records] == [x["seq"] for x in cli_records]

    r = web.call(
        "POST",
        "/api/audit/search",
        json={"user": ADMIN, "action": "user-change", "outcome": "success"},
    )
    assert [x["detail"] for x in r.json()["records"]] == ["add zed role=uploader"]
    assert r.json()["records"][0]["actor"] == f"user:{ADMIN}"
    study = str(datasets[0].StudyInstanceUID)
    r = web.call("POST", "/api/audit/search", json={"study": study})
    assert r.json()["records"] and {x["study_uid"] for x in r.json()["records"]} == {study}
    r = web.call("POST", "/api/audit/search", json={"since": "2000-01-01", "limit": 1})
    assert len(r.json()["records"]) == 1 and r.json()["truncated"] is True
    r = web.call("POST", "/api/audit/search", json={"since": "2999-01-01T00:00:00Z"})
    assert r.json() == {"records": [], "truncated": False}
    r = web.call("POST", "/api/audit/search", json={"action": "no-such-action"})
    assert r.status_code == 400

    uses = [x for x in audited(web.data) if x["action"] == "audit-use"]
    assert [x["detail"] for x in uses[:2]] == [
        f"search by patient: {len(records)} records",
        "search by user,action,outcome: 1 records",
    ]
    assert all(patient not in (x["detail"] or "") for x in audited(web.data))
    assert_verified(web)


# -- doctor and audit verify ------------------------------------------------------------

#: Rows of ``pacsvault doctor`` that probe the listeners (``GET /api/doctor`` does not).
PROBES = ("DICOM listener (scan)", "TLS listener", "scan ")


def test_doctor_gives_the_checks_of_pacsvault_doctor(web: Web) -> None:
    weak = {"name": "WIDE", "ae_title": "WIDE", "host": "10.0.0.0/8", "services": ["echo"],
            "tls": "off"}  # fmt: skip
    assert web.call("POST", "/api/peers", json=weak).status_code == 201
    r = web.call("GET", "/api/doctor")
    assert r.status_code == 200, r.text
    doctor = r.json()
    rows = doctor["checks"]
    failed = {c["name"]: c["severity"] for c in rows if c["result"] == "FAIL"}
    assert failed == {"peer WIDE address": "high", "peer WIDE TLS": "medium"}
    assert all(c["severity"] is None for c in rows if c["result"] == "PASS")
    assert {c["result"] for c in rows} == {"PASS", "FAIL"}
    assert doctor["passed"] == len(rows) - 2 and doctor["failed"] == 2
    assert "pacsvault doctor" in doctor["note"]
    # The command line's table, without its probes of the listeners: the same rows.
    assert doctor_rows(cli(web.data, "doctor", check=False).stdout) == [
        (c["result"], c["name"], c["detail"] + (f" [{c['severity']}]" if c["severity"] else ""))
        for c in rows
    ]


def doctor_rows(printed: str) -> list[tuple[str, str, str]]:
    """(PASS or FAIL, name, detail [severity]) of each row ``pacsvault doctor`` printed,
    but its probes of the listeners."""
    rows = [m.groups() for m in re.finditer(r"^(PASS|FAIL)  (.+?)  +(.*)$", printed, re.M)]
    return [r for r in rows if not r[1].startswith(PROBES)]


def test_audit_verify_says_what_audit_verify_says(web: Web) -> None:
    web.call("POST", "/api/users", json={"name": "vera", "role": "auditor"})
    r = web.call("GET", "/api/audit/verify")
    assert r.status_code == 200, r.text
    verdict = r.json()
    assert verdict["intact"] is True and verdict["problems"] == []
    assert verdict["records"] > 3 and verdict["checkpoints"] >= 1
    # While the server runs, its newest records wait for their signed checkpoint.
    assert any("has not stopped" in w for w in verdict["warnings"]), verdict
    uses = [x["detail"] for x in audited(web.data) if x["action"] == "audit-use"]
    assert uses == ["verify: intact"]

    # A record changed behind the server's back: the same problem the CLI finds.
    with sqlite3.connect(web.data / "index.sqlite", timeout=30) as conn:
        seq = conn.execute("SELECT seq FROM audit_events WHERE detail = 'add vera role=auditor'")
        target = seq.fetchone()[0]
        conn.execute("UPDATE audit_events SET detail='nothing to see' WHERE seq=?", (target,))
    r = web.call("GET", "/api/audit/verify")
    verdict = r.json()
    assert verdict["intact"] is False
    assert any(p.startswith(f"seq {target} ") for p in verdict["problems"]), verdict
    uses = [x["detail"] for x in audited(web.data) if x["action"] == "audit-use"]
    assert uses[-1] == "verify: problems found"
    web.server.stop()
    printed = cli(web.data, "audit", "verify", check=False)
    assert printed.returncode == 1
    for problem in verdict["problems"]:
        if problem.startswith(f"seq {target} "):
            assert problem in printed.stdout
