"""Shared fixtures: real `pacsvault serve` processes, DCMTK tools and generated data.

Every server runs as a separate process on a free loopback port, with its own data
directory, and is stopped (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacsvault.dicom.synthetic import Spec, data_set
from pynetdicom_fix import install as install_pynetdicom_fix

install_pynetdicom_fix()

SERVER_AET = "PACSVAULT"
CLIENT_AET = "TESTSCU"
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on loopback *port* (a peer we started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def cli(data: Path, *args: str, check: bool = True, env: dict[str, str] | None = None):
    """Run the real `pacsvault` command line against *data*."""
    proc = subprocess.run(
        [sys.executable, "-m", "pacsvault", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pacsvault {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dcmtk_path(tool: str) -> str:
    """The DCMTK binary itself: pynetdicom installs Python apps under the same names
    (findscu, storescu...) that may come first on PATH, so look in /usr/bin first."""
    for candidate in (Path("/usr/bin") / tool, Path("/usr/local/bin") / tool):
        if candidate.is_file():
            return str(candidate)
    raise AssertionError(f"DCMTK {tool} not found: install Debian's dcmtk package (make test does)")


def dcmtk(tool: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None):
    """Run a DCMTK tool; TCP_NODELAY=1 so DCMTK does not wait on delayed ACKs."""
    return subprocess.run(
        [dcmtk_path(tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1", **(env or {})},
    )


def children(pid: int) -> list[int]:
    """Process IDs of the children of *pid* (Linux /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


class PortTaken(Exception):
    """The port drawn for a server was taken by another process meanwhile."""


@dataclass
class Server:
    """A running `pacsvault serve` process."""

    data: Path
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)
    tls_port: int = field(default_factory=lambda: free_port())
    https_port: int = field(default_factory=lambda: free_port())

    def start(self, timeout: float = 30) -> None:
        """Start and wait until listening; free ports are re-drawn if another process took one."""
        for _attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port, self.tls_port, self.https_port = free_port(), free_port(), free_port()
        raise AssertionError("could not find free ports")

    def _start(self, timeout: float) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacsvault",
                "--data",
                str(self.data),
                "serve",
                "--bind",
                "127.0.0.1",
                "--dicom-port",
                str(self.port),
                "--tls-port",
                str(self.tls_port),
                "--https-port",
                str(self.https_port),
                *self.extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers with it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                self.log.close()
                if "Address already in use" in self.log_text():
                    raise PortTaken
                raise AssertionError(f"server exited: {self.log_text()}")
            if b"listening on" in self.log_path.read_bytes()[offset:]:
                return
            time.sleep(0.05)
        raise AssertionError(f"server did not start: {self.log_text()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self.log.close()
        return code

    def kill9(self) -> None:
        """kill -9 the whole process group of the server (the parent and its workers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()

    def workers(self) -> list[int]:
        """Process IDs of the server's DICOM worker processes (its children)."""
        assert self.proc is not None
        return children(self.proc.pid)

    def pids(self) -> list[int]:
        """The server process and its workers."""
        assert self.proc is not None
        return [self.proc.pid, *self.workers()]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def index(self) -> sqlite3.Connection:
        """A read-only connection to the server's SQLite index."""
        return sqlite3.connect(f"file:{self.data / 'index.sqlite'}?mode=ro", uri=True)

    def audit(self) -> list[tuple[str, str, str | None, str | None, str | None]]:
        """(action, outcome, actor, address, detail) of every audit record."""
        with self.index() as conn:
            return list(
                conn.execute("SELECT action, outcome, actor, address, detail FROM audit_events")
            )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    cli(data, "init", "--aet", SERVER_AET)
    return data


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory: start a server on an initialised data dir; all are stopped at teardown."""
    servers: list[Server] = []

    def _make(data: Path, *extra: str) -> Server:
        server = Server(
            data, free_port(), tmp_path / f"server{len(servers)}.log", None, list(extra)
        )
        server.start()
        servers.append(server)
        return server

    yield _make
    for s in servers:
        s.stop()


ALL_SERVICES = "echo,store,find,move,get"


def add_test_peer(data: Path, allow: str = ALL_SERVICES, port: int | None = None) -> None:
    """Register TESTSCU at 127.0.0.1 with the *allow* services (and a port for C-MOVE)."""
    extra = ["--port", str(port)] if port else []
    cli(data, "peer", "add", "test", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", allow, *extra)  # fmt: skip


def start_server(tmp: Path, allow: str = ALL_SERVICES, port: int | None = None) -> Server:
    """A server of its own under *tmp* (for module-scoped fixtures): init, TESTSCU, start.

    The caller stops it.
    """
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET)
    add_test_peer(data, allow, port)
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    return server


@pytest.fixture
def server(data_dir: Path, make_server) -> Server:
    """A server with one peer, TESTSCU at 127.0.0.1, granted every service."""
    add_test_peer(data_dir)
    return make_server(data_dir)


def write_data_set(directory: Path, spec: Spec) -> list[tuple[Path, Dataset]]:
    """Write a synthetic data set as Part-10 files; returns (path, dataset) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for n, ds in enumerate(data_set(spec)):
        path = directory / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, ds))
    return out


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its file meta information."""
    from pacsvault.dicom.part10 import split_part10

    data = path.read_bytes()
    _ts, offset = split_part10(data)
    return data[offset:]
