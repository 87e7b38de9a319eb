"""The command line: init, settings, serve's listener rules, status and peers."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from conftest import Server, cli, free_port


def test_init_creates_a_private_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "site"
    out = cli(data, "init", "--aet", "MYPACS").stdout
    assert "MYPACS" in out
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "pacsvault.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "index.sqlite").stat().st_mode) == 0o600
    settings = (data / "pacsvault.toml").read_text()
    assert 'ae_title = "MYPACS"' in settings and 'bind = "127.0.0.1"' in settings
    assert "no peers registered" in cli(data, "peer", "list").stdout


def test_init_refuses_an_existing_directory_and_bad_titles(tmp_path: Path) -> None:
    data = tmp_path / "site"
    cli(data, "init")
    again = cli(data, "init", check=False)
    assert again.returncode == 2 and "already initialised" in again.stderr
    bad = cli(tmp_path / "other", "init", "--aet", "WAY_TOO_LONG_AE_TITLE", check=False)
    assert bad.returncode == 2 and "AE title" in bad.stderr


def test_data_directory_from_environment(tmp_path: Path) -> None:
    data = tmp_path / "env-site"
    proc = subprocess.run(
        [sys.executable, "-m", "pacsvault", "init"],
        capture_output=True,
        text=True,
        env={**os.environ, "PACSVAULT_DATA": str(data)},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (data / "pacsvault.toml").exists()


def test_uninitialised_directory_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli(tmp_path / "nothing", "status", check=False)
    assert proc.returncode == 2 and "run 'pacsvault --data" in proc.stderr


def test_invalid_settings_name_the_key(data_dir: Path) -> None:
    path = data_dir / "pacsvault.toml"
    path.write_text(path.read_text().replace("port = 11112", "port = 99999"))
    proc = cli(data_dir, "status", check=False)
    assert proc.returncode == 2 and "dicom.port" in proc.stderr
    path.write_text(path.read_text().replace("port = 99999", "port = 11112\nbogus = 1"))
    proc = cli(data_dir, "status", check=False)
    assert proc.returncode == 2 and "dicom.bogus" in proc.stderr


def test_serve_refuses_cleartext_on_a_public_address(data_dir: Path) -> None:
    proc = cli(
        data_dir, "serve", "--bind", "0.0.0.0", "--dicom-port", str(free_port()), check=False
    )
    assert proc.returncode == 2
    assert "cleartext_networks" in proc.stderr


def test_cleartext_networks_restrict_who_may_connect(tmp_path: Path) -> None:
    """The policy behind a non-loopback listener: cleartext only from the listed networks."""
    from pacsvault.config import load_settings
    from pacsvault.dimse.association import REJECTIONS
    from pacsvault.security.identity import Principal, Refusal
    from pacsvault.security.peers import new_peer, parse_services
    from pacsvault.security.policy import AssociationRequest
    from pacsvault.site import init_site

    with init_site(tmp_path / "d", "PACSVAULT") as site:
        peer = new_peer("ws", "WS", "0.0.0.0/0", None, parse_services("echo"))
        site.admin.add_peer(site.operator(), peer)
    settings = load_settings(tmp_path / "d")
    settings.dicom.cleartext_networks = ["192.0.2.0/24"]
    from pacsvault.site import open_site

    with open_site(tmp_path / "d", settings) as site:
        policy = site.policy
        accepted = policy.authenticate_association(
            AssociationRequest("PACSVAULT", "WS", "192.0.2.9")
        )
        assert isinstance(accepted, Principal)
        local = policy.authenticate_association(AssociationRequest("PACSVAULT", "WS", "127.0.0.1"))
        assert isinstance(local, Principal)
        outside = policy.authenticate_association(
            AssociationRequest("PACSVAULT", "WS", "198.51.100.7")
        )
        assert isinstance(outside, Refusal) and "cleartext" in outside.why
        assert REJECTIONS[outside.reason] == (1, 1, 1)


def test_serve_stops_cleanly_on_sigterm(data_dir: Path, tmp_path: Path) -> None:
    server = Server(data_dir, free_port(), tmp_path / "s.log")
    server.start()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    assert "pacsvault stopped" in server.log_text()
    server.proc = None
    server.log.close()
    actions = [a for a, *_ in server.audit()]
    assert "application-start" in actions and "application-stop" in actions


def test_status_counts_demo_data(data_dir: Path) -> None:
    assert "loaded 24 synthetic instances" in cli(data_dir, "demo", "--patients", "3").stdout
    out = cli(data_dir, "status").stdout
    for line in (
        "patients: 3",
        "studies: 6",
        "series: 12",
        "instances: 24",
        "AE PACSVAULT on 127.0.0.1:11112 (loopback only)",
    ):
        assert line in out


def test_peer_validation(data_dir: Path) -> None:
    bad_service = cli(
        data_dir,
        "peer",
        "add",
        "x",
        "--aet",
        "X",
        "--host",
        "127.0.0.1",
        "--allow",
        "store,delete",
        check=False,
    )
    assert bad_service.returncode == 2 and "unknown service 'delete'" in bad_service.stderr
    bad_host = cli(
        data_dir,
        "peer",
        "add",
        "x",
        "--aet",
        "X",
        "--host",
        "example.org",
        "--allow",
        "store",
        check=False,
    )
    assert bad_host.returncode == 2 and "CIDR" in bad_host.stderr
    cli(data_dir, "peer", "add", "x", "--aet", "X", "--host", "10.0.0.0/8", "--allow", "store")
    dup = cli(
        data_dir,
        "peer",
        "add",
        "y",
        "--aet",
        "X",
        "--host",
        "10.0.0.1",
        "--allow",
        "store",
        check=False,
    )
    assert dup.returncode == 2 and "exists" in dup.stderr
    assert "x\tX\t10.0.0.0/8" in cli(data_dir, "peer", "list").stdout
    cli(data_dir, "peer", "remove", "x")
    assert "no peers registered" in cli(data_dir, "peer", "list").stdout
    missing = cli(data_dir, "peer", "remove", "x", check=False)
    assert missing.returncode == 2
