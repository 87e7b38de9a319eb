"""A real PostgreSQL for tests: Debian's server binaries, a throwaway cluster on loopback.

Import the fixtures into a test module or conftest (``from pg_server import
pg_server_fixture, pg_url_fixture``; they are named ``pg_server`` and ``pg_url``).

``pg_server`` (one per test session, i.e. per xdist worker) runs ``initdb`` into a new
temporary directory and ``postgres`` listening on 127.0.0.1 at a free port (and on a
unix socket in that directory only), and stops it at the end. As root the cluster is
run by an unprivileged account (``postgres`` if it exists, else ``nobody``) through
``setpriv``, since PostgreSQL refuses to run as root. Connections over TCP need the
password (SCRAM), which is distinctive so tests can look for leaks. Durability is off
(``fsync``, ``synchronous_commit``): a test cluster need not survive a power cut.

``pg_url`` gives each test a new, empty database (``CREATE DATABASE`` is fast) as a
``postgresql://`` URL, dropped at teardown. Tests skip, saying why, when the binaries
are missing (``make debs`` installs Debian's ``postgresql``) or psycopg is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("PACSVAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "pacs"
PASSWORD = "pv-pg-" + secrets.token_hex(12)


def require_postgres() -> None:
    """Skip the calling test unless the PostgreSQL binaries and psycopg are there."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (make debs installs them)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """The command prefix that drops root for the server (empty when not root)."""
    if os.getuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return [shutil.which("setpriv") or "setpriv", f"--reuid={pw.pw_uid}",
                f"--regid={pw.pw_gid}", "--clear-groups", "--"]  # fmt: skip
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody) exists")


def _locale() -> str:
    """A UTF-8 locale whose collation is not bytewise (as most sites' databases have), so
    the tests see what the indexes must cope with; C.UTF-8 where there is none."""
    try:
        found = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout.split()
    except OSError:
        found = []
    return "en_US.UTF-8" if {"en_US.utf8", "en_US.UTF-8"} & set(found) else "C.UTF-8"


@dataclass
class PgServer:
    """One PostgreSQL cluster in a temporary directory; :meth:`start` waits until it answers."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _n: int = 0

    @property
    def datadir(self) -> Path:
        return self.root / "cluster"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        prefix = _run_as()
        if prefix:
            uid, gid = (int(a.split("=")[1]) for a in prefix[1:3])
            os.chown(self.root, uid, gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if prefix:
            os.chown(pwfile, uid, gid)
        subprocess.run(
            [*prefix, str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", USER,
             f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
             "-E", "UTF8", f"--locale={_locale()}", "--no-sync"],
            check=True, capture_output=True, cwd=self.root,
        )  # fmt: skip
        pwfile.unlink()

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (on another free port if the drawn one was taken meanwhile)."""
        for _attempt in range(3):
            if self._start(timeout):
                return
            self.port = free_port()
        raise AssertionError(f"postgres did not start:\n{self.log_text()}")

    def _start(self, timeout: float) -> bool:
        with open(self.log_path, "ab") as log:
            if os.getuid() == 0:
                os.chown(self.log_path, *(int(a.split("=")[1]) for a in _run_as()[1:3]))
            self.proc = subprocess.Popen(
                [*_run_as(), str(PG_BIN / "postgres"), "-D", str(self.datadir),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                 "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._answers():
                return True
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"postgres did not answer:\n{self.log_text()}")

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def execute(self, statement: str, database: str = "postgres") -> None:
        """Run one statement in autocommit (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}_{secrets.token_hex(3)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGKILL); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(name="pg_server", scope="session")
def pg_server_fixture() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the test session (per xdist worker), removed at the end."""
    require_postgres()
    # Not under pytest's tmp_path: its parents are 0700 root, which the server's
    # unprivileged account cannot enter.
    root = Path(tempfile.mkdtemp(prefix="pacsvault-pg-"))
    server = PgServer(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg_server: PgServer) -> Iterator[str]:
    """A new, empty database on the session's server, as a ``postgresql://`` URL."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
