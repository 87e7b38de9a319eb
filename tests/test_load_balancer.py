"""Behind a load balancer: deploy/haproxy.cfg run by Debian's HAProxy in front of a node.

The node must see the modality's address (PROXY v2 from the balancer) and nobody else's
claim of one; HTTPS through the balancer is re-encrypted and checked against the site CA,
and the client's own X-Forwarded-For is not believed.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CLIENT_AET, SERVER_AET, Server, cli, dcmtk, free_port, wait_listening
from pacsvault.dimse.proxy_header import ProxyHeaderError, encode, parse
from test_web import add_user, http, token

ROOT = Path(__file__).resolve().parents[1]
HAPROXY = "/usr/sbin/haproxy"


def set_in_section(data: Path, section: str, key: str, value: str) -> None:
    """Set *key* in [*section*] of the data directory's pacsvault.toml."""
    path = data / "pacsvault.toml"
    text = path.read_text()
    head = text.index(f"[{section}]\n")
    end = text.find("\n[", head + 1)
    end = len(text) if end < 0 else end
    body, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text[head:end])
    assert n == 1, (section, key)
    path.write_text(text[:head] + body + text[end:])


class Balancer:
    """deploy/haproxy.cfg, unchanged, with addresses and ports from the environment."""

    def __init__(self, tmp: Path, nodes: list[Server]) -> None:
        if not Path(HAPROXY).is_file():
            raise AssertionError("HAProxy not found: install Debian's haproxy (make debs does)")
        self.dicom_port, self.tls_port, self.https_port = free_port(), free_port(), free_port()
        tls = nodes[0].data / "tls"
        pem = tmp / "lb.pem"  # the balancer's certificate: here the site's own, for localhost
        pem.write_bytes((tls / "server.crt").read_bytes() + (tls / "server.key").read_bytes())
        pem.chmod(0o600)
        second = nodes[1] if len(nodes) > 1 else nodes[0]
        env = {
            **os.environ,
            "PACS_LB_BIND": "127.0.0.1",
            "PACS_NODE1": "127.0.0.1",
            "PACS_NODE2": "127.0.0.1",
            "PACS_DICOM_PORT": str(self.dicom_port),
            "PACS_DICOM_TLS_PORT": str(self.tls_port),
            "PACS_HTTPS_PORT": str(self.https_port),
            "PACS_NODE_DICOM_PORT": str(nodes[0].port),
            "PACS_NODE_DICOM_TLS_PORT": str(nodes[0].tls_port),
            "PACS_NODE_HTTPS_PORT": str(nodes[0].https_port),
            "PACS_LB_CERT": str(pem),
            "PACS_SITE_CA": str(tls / "ca.crt"),
        }
        cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
        if second is not nodes[0]:  # node2 on its own ports
            cfg = _node2_ports(cfg, second)
        self.cfg = tmp / "haproxy.cfg"
        self.cfg.write_text(cfg)
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.cfg)], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        for port in (self.dicom_port, self.tls_port, self.https_port):
            wait_listening(port, self.proc)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _node2_ports(cfg: str, node: Server) -> str:
    """deploy/haproxy.cfg gives both nodes the same ports; on one host node2 has its own."""
    ports = {"DICOM": node.port, "DICOM_TLS": node.tls_port, "HTTPS": node.https_port}
    lines = []
    for line in cfg.splitlines():
        if "server node2 " in line:
            line = re.sub(r"\$\{PACS_NODE_(\w+?)_PORT\}", lambda m: str(ports[m.group(1)]), line)
        lines.append(line)
    return "\n".join(lines) + "\n"


class ClaimingRelay:
    """A 'balancer' at a trusted address that claims every client is *claim*."""

    def __init__(self, target: int, claim: str, source: str = "127.0.0.1") -> None:
        self.target, self.claim, self.source = target, claim, source
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                client, addr = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target),
                                                source_address=(self.source, 0))  # fmt: skip
            upstream.sendall(encode((self.claim, addr[1]), ("127.0.0.1", self.target)))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def echo(port: int) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(port),
                 timeout=30)  # fmt: skip


@pytest.fixture
def node(data_dir: Path, make_server) -> Iterator[Server]:
    """A node that trusts a balancer at 127.0.0.1; TESTSCU registered at 10.1.1.0/24 only.

    Cleartext DICOM from that network is allowed too (it is not loopback).
    """
    cli(data_dir, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "10.1.1.0/24",
        "--allow", "echo,store,find,get")  # fmt: skip
    set_in_section(data_dir, "dicom", "trusted_proxies", '["127.0.0.1"]')
    set_in_section(data_dir, "dicom", "cleartext_networks", '["10.1.1.0/24"]')
    set_in_section(data_dir, "web", "trusted_proxies", '["127.0.0.1"]')
    yield make_server(data_dir)


def test_proxy_v2_headers_round_trip() -> None:
    v4 = encode(("10.1.1.7", 40000), ("10.0.0.11", 11112))
    assert parse(v4[:16], v4[16:]) == "10.1.1.7"
    v6 = encode(("2001:db8::7", 40000), ("2001:db8::1", 11112))
    assert parse(v6[:16], v6[16:]) == "2001:db8::7"
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert parse(local, b"") is None
    with pytest.raises(ProxyHeaderError):
        parse(b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x21\x11\x00\x0c", b"x" * 12)


def test_the_node_uses_the_address_the_balancer_names(node: Server, tmp_path: Path) -> None:
    # A balancer at a trusted address saying the client is 10.1.1.9: TESTSCU's network.
    relay = ClaimingRelay(node.port, "10.1.1.9")
    try:
        out = echo(relay.port)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        relay.close()
    # HAProxy tells the truth: the client is 127.0.0.1, not a registered address.
    lb = Balancer(tmp_path, [node])
    try:
        refused = echo(lb.dicom_port)
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr
    finally:
        lb.stop()
    rows = node.audit()
    assert any(a == "association" and o == "success" and addr == "10.1.1.9"
               for a, o, _u, addr, _d in rows), rows  # fmt: skip
    assert any(o != "success" and addr == "127.0.0.1" for _a, o, _u, addr, _d in rows), rows


def test_a_trusted_balancer_without_the_header_is_refused(node: Server) -> None:
    # Straight from 127.0.0.1 (the trusted balancer's address) without a PROXY header.
    out = echo(node.port)
    assert out.returncode != 0
    deadline = time.monotonic() + 10
    while "PROXY" not in node.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "connection from balancer 127.0.0.1 refused" in node.log_text()


def test_a_header_from_an_untrusted_address_is_not_read(data_dir: Path, make_server) -> None:
    # No trusted balancer: a connection that starts with a PROXY header is not DICOM.
    cli(data_dir, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "10.1.1.0/24",
        "--allow", "echo")  # fmt: skip
    set_in_section(data_dir, "dicom", "cleartext_networks", '["10.1.1.0/24"]')
    server = make_server(data_dir)
    relay = ClaimingRelay(server.port, "10.1.1.9")
    try:
        out = echo(relay.port)
        assert out.returncode != 0, "a claimed address was believed"
    finally:
        relay.close()


def test_https_through_the_balancer(node: Server, tmp_path: Path) -> None:
    add_user(node.data, "rad", "radiologist")
    secret = token(node.data, "rad", "read")
    lb = Balancer(tmp_path, [node])
    try:
        s = http(node, secret)
        # The client's own X-Forwarded-For is replaced by the balancer.
        r = s.get(f"https://localhost:{lb.https_port}/dicom-web/studies",
                  headers={"X-Forwarded-For": "10.9.9.9"}, timeout=30)  # fmt: skip
        assert r.status_code in (200, 204), r.text
        assert r.headers.get("Strict-Transport-Security")
    finally:
        lb.stop()
    out = cli(node.data, "audit", "search", "--user", "rad").stdout
    assert "\tquery\tsuccess\tuser:rad\t127.0.0.1" in out, out
    assert "10.9.9.9" not in out
