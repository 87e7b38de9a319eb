"""Settings lint: each weakened setting is reported, the defaults pass."""

from __future__ import annotations

import os
from pathlib import Path

from pacsvault.config import load_settings
from pacsvault.security.hardening import check_peers, check_settings
from pacsvault.security.peers import Peer, Service, TlsMode


def failed(checks) -> set[str]:
    return {c.name for c in checks if not c.ok}


def test_defaults_pass(data_dir: Path) -> None:
    assert failed(check_settings(load_settings(data_dir), data_dir)) == set()


def test_each_weakened_setting_is_reported(data_dir: Path) -> None:
    path = data_dir / "pacsvault.toml"
    text = path.read_text()
    for old, new in (
        ('bind = "127.0.0.1"', 'bind = "0.0.0.0"'),
        ("cleartext_networks = []", 'cleartext_networks = ["10.0.0.0/8"]'),
        ("enabled = true", "enabled = false"),
        ("allow_passcode_without_tls = false", "allow_passcode_without_tls = true"),
        ("lockout_threshold = 5", "lockout_threshold = 50"),
        ("fsync = true", "fsync = false"),
    ):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    os.chmod(data_dir, 0o755)
    checks = check_settings(load_settings(data_dir), data_dir)
    assert failed(checks) == {
        "cleartext DICOM",
        "DICOM-TLS",
        "passcodes over cleartext",
        "lockout",
        "durability (fsync)",
        "mode of data",
    }


def test_weak_peers_are_reported() -> None:
    every = frozenset(Service)
    peers = [
        Peer("ok", "OK", "10.1.2.3", None, every, TlsMode.REQUIRED),
        Peer("wide", "WIDE", "0.0.0.0/0", None, every),
        Peer("plain", "PLAIN", "10.1.2.4", None, every, TlsMode.OFF),
        Peer("nocert", "NOCERT", "10.1.2.5", None, every, TlsMode.REQUIRED, "none"),
    ]
    assert failed(check_peers(peers)) == {
        "peer wide address",
        "peer plain TLS",
        "peer nocert client certificate",
    }
    assert not failed(check_peers(peers[:1]))


def test_doctor_against_a_running_server(server) -> None:
    from conftest import cli

    settings = server.data / "pacsvault.toml"
    settings.write_text(settings.read_text().replace("port = 2762", f"port = {server.tls_port}"))
    settings.write_text(settings.read_text().replace("port = 11112", f"port = {server.port}"))
    out = cli(server.data, "doctor")
    assert "PASS  TLS listener rejects TLS 1.1" in out.stdout
    assert "PASS  scan DIMSE-REFUSED" in out.stdout
    assert "calling AE not recognised" in out.stdout
    assert "association rejected" in server.log_text()
    assert "speaks TLSv1.3" in out.stdout
    assert "0 failed" in out.stdout


def test_doctor_reports_each_weakened_setting(data_dir: Path) -> None:
    from conftest import cli

    path = data_dir / "pacsvault.toml"
    path.write_text(
        path.read_text()
        .replace("allow_passcode_without_tls = false", "allow_passcode_without_tls = true")
        .replace("fsync = true", "fsync = false")
        .replace("lockout_duration = 900", "lockout_duration = 60")
    )
    cli(data_dir, "peer", "add", "any", "--aet", "ANY", "--host", "0.0.0.0/0", "--allow", "find")
    out = cli(data_dir, "doctor", check=False)
    assert out.returncode == 1
    for name in ("passcodes over cleartext", "durability (fsync)", "lockout", "peer any address"):
        assert any(line.startswith("FAIL") and name in line for line in out.stdout.splitlines())
    assert "4 failed" in out.stdout
