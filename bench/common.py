"""Helpers shared by the benchmark scripts (bench/ingest, bench/find).

Starting pacsvault and Debian's Orthanc on loopback, waiting for them to answer
C-ECHO, stopping them, and reading what the operating system knows about them.
Nothing here is pacsvault code: the servers run as separate processes, as a user
would run them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# DCMTK itself: pynetdicom installs Python apps with some of the same names.
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
FINDSCU = "/usr/bin/findscu"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_CONFIG = HERE / "orthanc" / "bench-config.json"


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nodelay_env() -> dict[str, str]:
    """This process's environment with ``TCP_NODELAY=1``, which DCMTK tools read."""
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for_echo(
    aet: str, port: int, calling: str, proc: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    """Return once *aet* on loopback *port* answers DCMTK echoscu as *calling*.

    Raises RuntimeError after *timeout* seconds, or as soon as *proc* (the server)
    exits; *proc*, when given, is stopped before anything is raised (Ctrl-C included).
    """
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{aet} exited with status {proc.returncode} before answering")
            ok = subprocess.run(
                [ECHOSCU, "-aet", calling, "-aec", aet, "127.0.0.1", str(port)],
                capture_output=True,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{aet} did not answer C-ECHO on port {port} within {timeout:.0f} s")
    except BaseException:
        if proc is not None:
            stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM *proc*, then SIGKILL it if it has not exited within 20 s.

    Interrupted while waiting (Ctrl-C), it kills the process before re-raising,
    so no server outlives the benchmark.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def version(cmd: list[str]) -> str:
    """The first line *cmd* prints (a tool's ``--version``), or ``?``."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def process_tree(pid: int) -> list[int]:
    """*pid* and its descendants (pacsvault's DICOM workers are children of ``serve``)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def status_kib(pid: int, field: str) -> int:
    """A size from /proc/PID/status (VmHWM, VmRSS) in KiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages divided among their users) in KiB; 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time used so far by *pids* and their descendants, in seconds
    (/proc counts in ticks of 10 ms: compare sums or means over many requests)."""
    ticks = 0
    for pid in (p for root in pids for p in process_tree(root)):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running server, in MiB: the sum over *pid*
    and its descendants (an upper bound of the tree's peak: pages shared between the
    processes, and peaks at different moments, are all counted)."""
    total = sum(status_kib(p, "VmHWM") for p in process_tree(pid))
    if not total:
        raise RuntimeError(f"no VmHWM for process {pid}")
    return total / 1024


def pacsvault_cmd(data: Path) -> list[str]:
    """The ``pacsvault --data DATA`` command line, run by this interpreter."""
    return [sys.executable, "-m", "pacsvault", "--data", str(data)]


def pacsvault_env() -> dict[str, str]:
    """The environment for pacsvault commands: this tree's src/ first on PYTHONPATH.

    So the benchmark measures the pacsvault next to it, whatever the venv points at.
    """
    path = os.environ.get("PYTHONPATH")
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src}


def init_pacsvault(data: Path, calling: str, allow: str, aet: str = "PACSVAULT") -> None:
    """Create a pacsvault data directory with one loopback peer *calling* allowed *allow*."""
    cmd = pacsvault_cmd(data)
    env = pacsvault_env()
    subprocess.run([*cmd, "init", "--aet", aet], check=True, capture_output=True, env=env)
    subprocess.run(
        [*cmd, "peer", "add", "bench", "--aet", calling, "--host", "127.0.0.1",
         "--allow", allow],
        check=True, capture_output=True, env=env,
    )  # fmt: skip


def serve_pacsvault(data: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start ``pacsvault serve`` on loopback free ports; (process, DICOM port).

    Does not wait for it: call :func:`wait_for_echo`.
    """
    port = free_port()
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [*pacsvault_cmd(data), "serve", "--bind", "127.0.0.1", "--dicom-port", str(port),
             "--tls-port", str(free_port()), "--https-port", str(free_port())],
            stdout=subprocess.DEVNULL, stderr=err, env=pacsvault_env(),
        )  # fmt: skip
    return proc, port


def pacsvault_instances(data: Path) -> int:
    """How many instances pacsvault's ``status`` says *data* holds."""
    out = subprocess.run(
        [*pacsvault_cmd(data), "status"],
        capture_output=True, text=True, check=True, env=pacsvault_env(),
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("instances:"))
    return int(line.split(":")[1])


def write_orthanc_config(
    data: Path, dicom_port: int, http_port: int, overrides: dict[str, Any] | None = None
) -> Path:
    """Write bench/orthanc/bench-config.json for *data* and these ports, plus *overrides*."""
    text = ORTHANC_CONFIG.read_text().replace("@DATA@", str(data))
    text = text.replace("@DICOM_PORT@", str(dicom_port)).replace("@HTTP_PORT@", str(http_port))
    config = json.loads(text)
    config.update(overrides or {})
    path = data / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_orthanc_process(config: Path, log: Path) -> subprocess.Popen:
    """Start Orthanc on *config* with ``TCP_NODELAY=1``; does not wait for it.

    Orthanc's DICOM stack is DCMTK, which reads TCP_NODELAY from the environment:
    this gives it the same no-delay sockets pacsvault always uses, so it runs at its best.
    """
    with open(log, "ab") as err:
        return subprocess.Popen(
            [ORTHANC, str(config)], env=nodelay_env(), stdout=subprocess.DEVNULL, stderr=err
        )


def orthanc_get(http_port: int, path: str, timeout: float = 60) -> Any:
    """GET *path* from Orthanc's REST API on loopback, decoded from JSON."""
    url = f"http://127.0.0.1:{http_port}{path}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


# -- DICOMweb (bench/web) ------------------------------------------------------------------

ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_dicomweb_overrides() -> dict[str, Any]:
    """Orthanc settings that load Debian's DICOMweb plugin at ``/dicom-web/`` (WADO-URI off)."""
    return {
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


def create_token(data: Path, user: str = "bench", role: str = "radiologist") -> str:
    """Add *user* with *role* to pacsvault *data* and return a new write-scope API token.

    The token is the last line ``pacsvault token create`` prints.
    """
    cmd, env = pacsvault_cmd(data), pacsvault_env()
    subprocess.run([*cmd, "user", "add", user, "--role", role],
                   check=True, capture_output=True, env=env)  # fmt: skip
    out = subprocess.run(
        [*cmd, "token", "create", "--user", user, "--scope", "write"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    return out.strip().splitlines()[-1].strip()


def serve_pacsvault_https(data: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start ``pacsvault serve`` on loopback free ports; (process, HTTPS port).

    Does not wait for it: call :func:`wait_for_http`.
    """
    https = free_port()
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [*pacsvault_cmd(data), "serve", "--bind", "127.0.0.1", "--dicom-port",
             str(free_port()), "--tls-port", str(free_port()), "--https-port", str(https)],
            stdout=subprocess.DEVNULL, stderr=err, env=pacsvault_env(),
        )  # fmt: skip
    return proc, https


def http_session(ca: Path | None = None, token: str | None = None) -> Any:
    """A ``requests`` session that ignores proxy and CA variables from the environment.

    *ca*: the only CA trusted for HTTPS (REQUESTS_CA_BUNDLE would otherwise override
    ``verify``); *token*: sent as ``Authorization: Bearer``. Responses are asked
    uncompressed (``Accept-Encoding: identity``), so no server spends time on gzip.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca) if ca else True
    session.headers["Accept-Encoding"] = "identity"
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def wait_for_http(
    session: Any, url: str, proc: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    """Return once GET *url* answers 200 on *session*.

    Raises RuntimeError after *timeout* seconds, or as soon as *proc* (the server)
    exits; *proc*, when given, is stopped before anything is raised (Ctrl-C included).
    """
    import requests

    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url}: server exited with status {proc.returncode}")
            try:
                if session.get(url, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
    except BaseException:
        if proc is not None:
            stop(proc)
        raise


_BOUNDARY = re.compile(r'boundary="?([^";,\s]+)"?', re.IGNORECASE)


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of the parts of a ``multipart/related`` *body* (headers dropped)."""
    found = _BOUNDARY.search(content_type)
    if not found:
        raise ValueError(f"no boundary in {content_type!r}")
    pieces = (b"\r\n" + body).split(b"\r\n--" + found.group(1).encode())
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        parts.append(piece.partition(b"\r\n\r\n")[2])
    return parts


def multipart_body(parts: list[bytes], media: str = "application/dicom") -> tuple[bytes, str]:
    """A ``multipart/related`` body of *parts*, each of type *media*; (body, Content-Type)."""
    boundary = os.urandom(16).hex()
    head = f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="{media}"; boundary={boundary}'
