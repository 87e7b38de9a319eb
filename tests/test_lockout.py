"""Lockout: guessing AE titles from one address locks that address, and only that one."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import CLIENT_AET, SERVER_AET, IndexDB, cli, dcmtk

LOCK_SECONDS = 20  # long enough for the checks below on a busy machine


def echo_from(port: int, source: str, calling: str = CLIENT_AET) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AET, bind_address=(source, 0))
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    if assoc.is_established:
        assoc.release()
    return ok


def test_guessing_locks_the_address_out(data_dir: Path, make_server) -> None:
    settings = data_dir / "pacsvault.toml"
    settings.write_text(
        settings.read_text().replace("lockout_duration = 900", f"lockout_duration = {LOCK_SECONDS}")
    )
    cli(
        data_dir,
        "peer",
        "add",
        "ws",
        "--aet",
        CLIENT_AET,
        "--host",
        "127.0.0.0/24",
        "--allow",
        "echo",
    )
    server = make_server(data_dir)
    assert echo_from(server.port, "127.0.0.1")

    for n in range(6):  # DCMTK's echoscu connects from 127.0.0.1
        proc = dcmtk(
            "echoscu", "-aet", f"GUESS{n}", "-aec", SERVER_AET, "127.0.0.1", str(server.port)
        )
        assert proc.returncode != 0
        assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
    locked_at = time.monotonic()
    # The right AE title from the locked address gets the same refusal as a wrong one.
    proc = dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(server.port))
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
    assert echo_from(server.port, "127.0.0.2")  # the registered peer from another address works
    listed = cli(data_dir, "lockout", "list").stdout
    assert "address:127.0.0.1" in listed and "127.0.0.2" not in listed
    lockouts = [d for a, o, _actor, _addr, d in server.audit() if a == "lockout"]
    assert len(lockouts) == 1 and "address:127.0.0.1" in lockouts[0]
    assert "source address is locked out" in server.log_text()
    assert "locked out" in cli(data_dir, "status").stdout

    # The lockout survives a restart...
    server.stop()
    server.start()
    assert not echo_from(server.port, "127.0.0.1")
    # ... and expires: after the configured duration, its end moved to a second ago in the
    # index rather than waited for (~20 s).
    assert time.monotonic() - locked_at < LOCK_SECONDS, "the checks outlasted the lockout"
    with IndexDB(data_dir) as db:
        (until,) = db.execute("SELECT until FROM lockouts WHERE key = ?",
                              ("address:127.0.0.1",)).fetchone()  # fmt: skip
        locked_wall = time.time() - (time.monotonic() - locked_at)
        assert LOCK_SECONDS - 5 < until - locked_wall < LOCK_SECONDS + 5
        db.execute("UPDATE lockouts SET until = ? WHERE key = ?",
                   (time.time() - 1, "address:127.0.0.1"))  # fmt: skip
    assert echo_from(server.port, "127.0.0.1")


def test_lockout_clear(data_dir: Path, make_server) -> None:
    cli(
        data_dir,
        "peer",
        "add",
        "ws",
        "--aet",
        CLIENT_AET,
        "--host",
        "127.0.0.0/24",
        "--allow",
        "echo",
    )
    server = make_server(data_dir)
    for n in range(5):
        assert not echo_from(server.port, "127.0.0.4", calling=f"BAD{n}")
    assert not echo_from(server.port, "127.0.0.4")
    assert "cleared 1 lockout(s)" in cli(data_dir, "lockout", "clear", "address:127.0.0.4").stdout
    assert echo_from(server.port, "127.0.0.4")
    assert "no lockouts" in cli(data_dir, "lockout", "list").stdout


def test_a_locked_address_gets_the_answers_an_unlocked_one_gets(
    data_dir: Path, make_server
) -> None:
    """Locked or not, a wrong called AE gets reason 7 and an unknown AE reason 3: the
    answers do not tell a guesser that the lock is on."""
    cli(data_dir, "peer", "add", "ws", "--aet", CLIENT_AET, "--host", "127.0.0.0/24",
        "--allow", "echo")  # fmt: skip
    server = make_server(data_dir)

    def answer(calling: str, called: str) -> str:
        proc = dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(server.port))
        assert proc.returncode != 0
        return "called" if "Called AE Title Not Recognized" in proc.stderr else "calling"

    unlocked = (answer("GUESS", SERVER_AET), answer(CLIENT_AET, "NOTUS"))
    for n in range(6):
        answer(f"GUESS{n}", SERVER_AET)
    assert "address:127.0.0.1" in cli(data_dir, "lockout", "list").stdout
    locked = (answer("GUESS", SERVER_AET), answer(CLIENT_AET, "NOTUS"))
    assert unlocked == locked == ("calling", "called")


def _allow_cleartext_passcodes(data_dir: Path) -> None:
    path = data_dir / "pacsvault.toml"
    text = path.read_text()
    path.write_text(
        text.replace("allow_passcode_without_tls = false", "allow_passcode_without_tls = true")
    )


def test_a_guessed_account_is_locked_for_dicom_user_identity(
    data_dir: Path, make_server
) -> None:
    """Five wrong passcodes for alice lock the account: her right passcode is then
    refused too, from any address, while bob is not affected."""
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    _allow_cleartext_passcodes(data_dir)
    passwords = {}
    for name in ("alice", "bob"):
        out = cli(data_dir, "user", "add", name, "--role", "radiologist").stdout
        passwords[name] = out.split("(shown once): ")[1].strip()
    cli(data_dir, "peer", "add", "ws", "--aet", CLIENT_AET, "--host", "127.0.0.0/24",
        "--allow", "echo")  # fmt: skip
    server = make_server(data_dir)

    def echo_as(name: str, password: str, source: str) -> bool:
        ae = AE(ae_title=CLIENT_AET)
        ae.add_requested_context(Verification)
        item = UserIdentityNegotiation()
        item.user_identity_type = 2
        item.primary_field = name.encode()
        item.secondary_field = password.encode()
        assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET,
                             bind_address=(source, 0), ext_neg=[item])  # fmt: skip
        ok = assoc.is_established
        if ok:
            assoc.release()
        return ok

    assert echo_as("alice", passwords["alice"], "127.0.0.5")
    # Spread over addresses, so that only the account can be what is locked.
    for n in range(5):
        assert not echo_as("alice", "wrong", f"127.0.0.{10 + n}")
    assert "account:alice" in cli(data_dir, "lockout", "list").stdout
    assert not echo_as("alice", passwords["alice"], "127.0.0.20")
    assert echo_as("bob", passwords["bob"], "127.0.0.20")
    assert "account is locked out" in server.log_text()


def test_an_mtls_peer_keeps_working_while_its_address_is_guessed_from(
    data_dir: Path, make_server, tmp_path: Path
) -> None:
    """Failures that are not its own do not lock out a peer that proves itself with a
    client certificate issued to it; unauthenticated peers at that address are locked."""
    import ssl

    cli(data_dir, "peer", "add", "ws", "--aet", "WS", "--host", "127.0.0.1",
        "--allow", "echo", "--tls", "required")  # fmt: skip
    cli(data_dir, "peer", "add", "plain", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", "echo")  # fmt: skip
    certs = tmp_path / "certs"
    cli(data_dir, "peer", "cert", "ws", "--out", str(certs))
    server = make_server(data_dir)

    def mtls_echo() -> bool:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.crt"))
        ctx.load_cert_chain(certs / "ws.crt", certs / "ws.key")
        ae = AE(ae_title="WS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.tls_port, ae_title=SERVER_AET,
                             tls_args=(ctx, "localhost"))  # fmt: skip
        ok = assoc.is_established and assoc.send_c_echo().Status == 0
        if assoc.is_established:
            assoc.release()
        return ok

    assert mtls_echo() and echo_from(server.port, "127.0.0.1")
    for n in range(6):  # guessing AE titles from the peer's address
        assert not echo_from(server.port, "127.0.0.1", calling=f"GUESS{n}")
    for _ in range(3):  # failed TLS handshakes from it, too
        with socket.create_connection(("127.0.0.1", server.tls_port)) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                sock.recv(100)
    assert "address:127.0.0.1" in cli(data_dir, "lockout", "list").stdout
    assert not echo_from(server.port, "127.0.0.1")  # the cleartext peer is locked out
    assert mtls_echo()  # the peer with its certificate is not
