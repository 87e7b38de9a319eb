"""DICOM user identity negotiation with pynetdicom: passcodes and JWTs, valid and not."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import Verification

from conftest import SERVER_AET, Server, cli

HS_KEY = b"test-shared-secret-of-sufficient-length-32b"


@pytest.fixture
def id_site(data_dir: Path, make_server, tmp_path: Path):
    """Peer RAD (TLS required, user identity required), users alice and bob, JWT keys."""
    (tmp_path / "hs.key").write_bytes(HS_KEY)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rs.pub").write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = data_dir / "pacsvault.toml"
    text = settings.read_text()
    text = text.replace('jwt_hs256_key_file = ""', f'jwt_hs256_key_file = "{tmp_path / "hs.key"}"')
    text = text.replace(
        'jwt_rs256_public_key_file = ""', f'jwt_rs256_public_key_file = "{tmp_path / "rs.pub"}"'
    )
    # This test makes many deliberate failures from one address: raise the lockout bar
    # (lockout itself is tested in test_lockout.py).
    text = text.replace("lockout_threshold = 5", "lockout_threshold = 100")
    settings.write_text(text)
    cli(
        data_dir,
        "peer",
        "add",
        "rad",
        "--aet",
        "RAD",
        "--host",
        "127.0.0.1",
        "--allow",
        "echo",
        "--user-identity",
        "required",
    )
    certs = tmp_path / "certs"
    cli(data_dir, "peer", "cert", "rad", "--out", str(certs))
    passwords = {}
    for name in ("alice", "bob"):
        out = cli(data_dir, "user", "add", name, "--role", "radiologist").stdout
        passwords[name] = re.search(r"password \(shown once\): (\S+)", out).group(1)
    return make_server(data_dir), certs, passwords, rsa_key


def associate(server: Server, certs: Path | None, item: UserIdentityNegotiation | None) -> bool:
    ae = AE(ae_title="RAD")
    ae.add_requested_context(Verification)
    kwargs = {}
    port = server.port
    if certs is not None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
        ctx.load_cert_chain(certs / "rad.crt", certs / "rad.key")
        kwargs["tls_args"] = (ctx, "localhost")
        port = server.tls_port
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=SERVER_AET, ext_neg=[item] if item else None, **kwargs
    )
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    if assoc.is_established:
        assoc.release()
    return ok


def passcode(user: str, password: str) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = user.encode()
    item.secondary_field = password.encode()
    return item


def token_item(token: str) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = 5
    item.primary_field = token.encode()
    return item


def hs256(sub: str, exp_delta: float = 300, key: bytes = HS_KEY, aud: str = SERVER_AET) -> str:
    claims = {"sub": sub, "exp": int(time.time() + exp_delta), "aud": aud}
    return jwt.encode(claims, key, algorithm="HS256")


def refused(server: Server) -> list[str]:
    return [d or "" for a, o, *_, d in server.audit() if a == "association" and o == "refused"]


def test_passcode(id_site, data_dir: Path) -> None:
    server, certs, pw, _ = id_site
    assert associate(server, certs, passcode("alice", pw["alice"]))
    actors = [actor for a, o, actor, *_ in server.audit() if a == "association" and o == "success"]
    assert "user:alice" in actors
    assert not associate(server, certs, passcode("alice", pw["bob"]))
    assert not associate(server, certs, passcode("nobody", pw["alice"]))
    assert any("wrong user name or passcode" in d for d in refused(server))
    # Disabled users are refused; re-enabled users work again.
    cli(data_dir, "user", "disable", "bob")
    assert not associate(server, certs, passcode("bob", pw["bob"]))
    cli(data_dir, "user", "enable", "bob")
    assert associate(server, certs, passcode("bob", pw["bob"]))
    # A new password replaces the old one.
    out = cli(data_dir, "user", "passwd", "bob").stdout
    new = re.search(r"\(shown once\): (\S+)", out).group(1)
    assert not associate(server, certs, passcode("bob", pw["bob"]))
    assert associate(server, certs, passcode("bob", new))


def test_passcode_needs_tls(id_site) -> None:
    server, _, pw, _ = id_site
    assert not associate(server, None, passcode("alice", pw["alice"]))
    assert any("passcode refused over cleartext" in d for d in refused(server))


def test_identity_required(id_site) -> None:
    server, certs, _, _ = id_site
    assert not associate(server, certs, None)
    assert any("requires a verified user identity" in d for d in refused(server))


def test_jwt(id_site, data_dir: Path) -> None:
    server, certs, _, rsa_key = id_site
    assert associate(server, certs, token_item(hs256("alice")))
    rs = jwt.encode(
        {"sub": "bob", "exp": int(time.time() + 60), "aud": SERVER_AET}, rsa_key, algorithm="RS256"
    )
    assert associate(server, None, token_item(rs))  # tokens may travel in cleartext on loopback
    assert not associate(server, certs, token_item(hs256("alice", exp_delta=-60)))
    assert any("JWT expired" in d for d in refused(server))
    assert not associate(server, certs, token_item(hs256("alice", key=b"x" * 40)))
    assert not associate(server, certs, token_item(hs256("alice", aud="SOMEONE-ELSE")))
    assert not associate(server, certs, token_item(jwt.encode({"sub": "alice"}, HS_KEY)))
    none_alg = jwt.encode(
        {"sub": "alice", "exp": int(time.time() + 60), "aud": SERVER_AET}, None, algorithm="none"
    )
    assert not associate(server, certs, token_item(none_alg))
    assert not associate(server, certs, token_item(hs256("mallory")))
    cli(data_dir, "user", "disable", "alice")
    assert not associate(server, certs, token_item(hs256("alice")))
    assert any("not an enabled user" in d for d in refused(server))


def test_users_cli(data_dir: Path) -> None:
    cli(data_dir, "user", "add", "carol", "--role", "auditor")
    assert "carol\tauditor\tenabled" in cli(data_dir, "user", "list").stdout
    dup = cli(data_dir, "user", "add", "carol", "--role", "auditor", check=False)
    assert dup.returncode == 2 and "exists" in dup.stderr
    bad = cli(data_dir, "user", "add", "dave", "--role", "superuser", check=False)
    assert bad.returncode == 2
    import sqlite3

    with sqlite3.connect(data_dir / "index.sqlite") as conn:
        (stored,) = conn.execute("SELECT password_hash FROM users WHERE name='carol'").fetchone()
    assert stored.startswith("$argon2id$")
