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
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset

from pacsvault.dicom.synthetic import Spec, data_set
from pacsvault.security.peers import new_peer, parse_services
from pacsvault.site import open_site
from pg_server import pg_server_fixture, pg_url_fixture  # noqa: F401 (fixtures)
from pynetdicom_fix import install as install_pynetdicom_fix

install_pynetdicom_fix()

SERVER_AET = "PACSVAULT"
CLIENT_AET = "TESTSCU"
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")
#: Where tests leave files for people to look at (screenshots); ignored by git.
ARTIFACTS = Path(os.environ.get("PACSVAULT_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))
_session_start = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the artefact directories this run wrote to (screenshots of the viewer tests),
    also when the tests ran in xdist workers."""
    if not ARTIFACTS.is_dir():
        return
    for directory in sorted(p for p in ARTIFACTS.iterdir() if p.is_dir()):
        fresh = [f for f in directory.iterdir() if f.stat().st_mtime >= _session_start]
        if fresh:
            terminalreporter.write_line(f"artefacts: {directory} ({len(fresh)} files)")


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

    def index(self):  # type: ignore[no-untyped-def]
        """A connection to the server's index: SQLite read-only, or PostgreSQL (psycopg:
        the same ``conn.execute(sql).fetchall()``, ``%s`` for parameters)."""
        url = index_url_of(self.data)
        if url:
            import psycopg

            return psycopg.connect(url)
        return sqlite3.connect(f"file:{self.data / 'index.sqlite'}?mode=ro", uri=True)

    def audit(self) -> list[tuple[str, str, str | None, str | None, str | None]]:
        """(action, outcome, actor, address, detail) of every audit record."""
        with self.index() as conn:
            return list(
                conn.execute("SELECT action, outcome, actor, address, detail FROM audit_events")
            )


#: The index databases every index test runs against.
DATABASES = ("sqlite", "postgresql")


def index_url_of(data: Path) -> str:
    """The data directory's configured index URL ("" for its SQLite file)."""
    settings = tomllib.loads((data / "pacsvault.toml").read_text())
    return settings.get("index", {}).get("url") or settings.get("storage", {}).get("index_url", "")


def index_args(request: pytest.FixtureRequest, database: str) -> list[str]:
    """``init`` arguments that put a new data directory's index in *database*: nothing
    for SQLite; for PostgreSQL a new database on the session's server, dropped when the
    requesting fixture is torn down."""
    if database == "sqlite":
        return []
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return ["--index-url", server.url(name)]


@pytest.fixture(params=DATABASES)
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty index: a SQLite file, then a PostgreSQL database (see pg_server.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


class IndexDB:
    """A read-write connection to a data directory's index, SQLite or PostgreSQL, for tests
    that change it behind pacsvault's back: ``execute(sql, params)`` with ``?`` marks on
    both; as a context manager it commits (or rolls back) and closes."""

    def __init__(self, data: Path) -> None:
        url = index_url_of(data)
        self.postgres = bool(url)
        if self.postgres:
            import psycopg

            self.conn = psycopg.connect(url)
        else:
            self.conn = sqlite3.connect(data / "index.sqlite")

    def execute(self, sql: str, params: tuple = ()):  # type: ignore[no-untyped-def]
        if self.postgres:
            return self.conn.execute(sql.replace("?", "%s"), params)
        return self.conn.execute(sql, params)

    def __enter__(self) -> IndexDB:
        return self

    def __exit__(self, exc_type, *_exc) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()
        self.conn.close()


@pytest.fixture(params=DATABASES)
def any_data_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An initialised data directory whose index is SQLite, then PostgreSQL."""
    data = tmp_path / "data"
    cli(data, "init", "--aet", SERVER_AET, *index_args(request, request.param))
    return data


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


def serve(data: Path, log: Path) -> Server:
    """A started server on the initialised *data*, logging to *log*; the caller stops it
    (for module-scoped fixtures: ``make_server`` is per test)."""
    server = Server(data, free_port(), log)
    server.start()
    return server


def start_server(tmp: Path, allow: str = ALL_SERVICES, port: int | None = None) -> Server:
    """A server of its own under *tmp* (for module-scoped fixtures): init, TESTSCU, start.

    The caller stops it.
    """
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET)
    add_test_peer(data, allow, port)
    return serve(data, tmp / "server.log")


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


def import_studies(data: Path, directory: Path, spec: Spec) -> list[Dataset]:
    """Import a synthetic data set into *data* (before its server starts); its datasets."""
    files = write_data_set(directory, spec)
    cli(data, "import", str(directory))
    return [ds for _path, ds in files]


# -- the web door ------------------------------------------------------------------------

WEB_ADMIN = "root"


def https_session(server: Server, token: str | None = None) -> requests.Session:
    """An HTTP client that trusts the site's CA, with *token* as its bearer token."""
    s = requests.Session()
    s.verify = str(server.data / "tls" / "ca.crt")
    s.trust_env = False  # the environment's REQUESTS_CA_BUNDLE would override verify
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def https_url(server: Server, path: str) -> str:
    return f"https://localhost:{server.https_port}{path}"


def add_user(data: Path, name: str, role: str) -> str:
    """Add a user as ``user add`` does, through the same service call in this process
    (no command line's start-up, ~1 s); its password. The command has its own tests."""
    with open_site(data) as site:
        return site.admin.add_user(site.operator(), name, role)


def add_echo_peers(data: Path, count: int) -> None:
    """Register peers ``p0``... (AE ``P0``..., 10.0.0.1, echo only) as ``peer add`` does,
    through the same service call in one process: a trail of peer changes without a
    command line's start-up (~1 s) per peer."""
    with open_site(data) as site:
        for n in range(count):
            peer = new_peer(f"p{n}", f"P{n}", "10.0.0.1", None, parse_services("echo"))
            site.admin.add_peer(site.operator(), peer)


def api_token(data: Path, user: str, scope: str = "read") -> str:
    """A new API token, valid until revoked, as ``token create`` makes it, through the
    same service call in this process."""
    with open_site(data) as site:
        return site.admin.create_token(site.operator(), user, scope, None).text


def web_login(server: Server, name: str, password: str, code: str = "") -> requests.Session | None:
    """A logged-in session that sends its CSRF token (``X-CSRF-Token``); None on a 401."""
    s = https_session(server)
    r = s.post(https_url(server, "/login"),
               data={"username": name, "password": password, "code": code},
               headers={"Accept": "application/json"})  # fmt: skip
    if r.status_code == 401:
        return None
    assert r.status_code == 200, r.text
    s.headers["X-CSRF-Token"] = r.json()["csrf"]
    return s


@dataclass
class Web:
    """A running server with an administrator (``WEB_ADMIN``), its password and an
    admin-scope token."""

    server: Server
    password: str
    token: str

    @property
    def data(self) -> Path:
        return self.server.data

    def url(self, path: str) -> str:
        return https_url(self.server, path)

    def client(self, token: str | None = None) -> requests.Session:
        return https_session(self.server, token)

    def call(self, method: str, path: str, token: str | None = None, **kw: Any):
        """One request with *token* (the admin's by default)."""
        with self.client(token or self.token) as s:
            return s.request(method, self.url(path), timeout=30, **kw)

    def new_token(self, user: str, scope: str) -> str:
        """A new API token for *user*, through the admin API."""
        r = self.call("POST", "/api/tokens", json={"user": user, "scope": scope})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def login(self, user: str, password: str, code: str = "") -> requests.Session | None:
        return web_login(self.server, user, password, code)


def start_web(data: Path, start: Callable[[Path], Server]) -> Web:
    """An administrator and its token on the initialised *data*, then ``start(data)``."""
    password = add_user(data, WEB_ADMIN, "admin")
    return Web(start(data), password, api_token(data, WEB_ADMIN, "admin"))
