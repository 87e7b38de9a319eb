"""A real S3 endpoint for tests: moto in server mode, as a subprocess on a loopback port.

Import the fixtures into a test module (``from s3_server import moto_server_fixture,
s3_fixture``; they are named ``moto_server`` and ``s3``).
``moto_server`` (one per module) runs ``python -m moto.server -H 127.0.0.1 -p PORT``
and stops it at teardown; ``s3`` gives each test a new, empty bucket on it and the
settings to reach it. Tests skip, saying why, when boto3 or moto[server] is missing
(both are in the ``test`` extra, so CI has them).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

#: Credentials moto accepts; the secret is distinctive so tests can look for leaks.
ACCESS_KEY_ID = "AKIAPACSVAULTTEST0001"
SECRET_ACCESS_KEY = "pv-secret-" + secrets.token_hex(16)
REGION = "us-east-1"


def require_moto() -> None:
    """Skip the calling test unless boto3 and moto's server mode can be imported."""
    for module, why in (
        ("boto3", "boto3 is not installed (pip install -e '.[test]')"),
        ("moto", "moto is not installed (pip install -e '.[test]' brings moto[server])"),
        ("flask", "moto's server mode needs flask (pip install 'moto[server]')"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(why)


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Endpoint:
    """How to reach one bucket of the test endpoint."""

    endpoint_url: str
    bucket: str
    region: str = REGION
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY

    def url(self, prefix: str = "") -> str:
        """The store URL ``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for S3BlobStore (endpoint, region, credentials)."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """The same settings as AWS environment variables."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def client(self) -> Any:
        """A plain boto3 client on the endpoint, to look behind the store's back."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


@dataclass
class MotoServer:
    """A ``moto.server`` subprocess on 127.0.0.1; :meth:`start` waits until it answers."""

    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    #: Extra environment for the server, e.g. INITIAL_NO_AUTH_ACTION_COUNT to have moto
    #: check credentials after that many requests.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (on another free port if the drawn one was taken meanwhile)."""
        for _attempt in range(3):
            if self._start(timeout):
                return
            self.port = free_port()
        raise AssertionError(f"moto server did not start:\n{self.log_text()}")

    def _start(self, timeout: float) -> bool:
        """One try: True once the server answers, False if it exited (port taken)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._answers():
                return True
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"moto server did not answer:\n{self.log_text()}")

    def _answers(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def bucket(self, name: str | None = None) -> S3Endpoint:
        """Create a new bucket (a fresh name unless given) and return its settings."""
        endpoint = S3Endpoint(self.endpoint_url, name or f"pv-{secrets.token_hex(6)}")
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
        return endpoint


@pytest.fixture(name="moto_server", scope="module")
def moto_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the test module, stopped at teardown."""
    require_moto()
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="s3")
def s3_fixture(moto_server: MotoServer) -> S3Endpoint:
    """A new, empty bucket on the module's moto server."""
    return moto_server.bucket()
