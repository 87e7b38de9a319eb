"""Lockout: guessing AE titles from one address locks that address, and only that one."""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import CLIENT_AET, SERVER_AET, cli, dcmtk

LOCK_SECONDS = 8


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
    # ... and expires.
    time.sleep(LOCK_SECONDS + 0.5)
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
