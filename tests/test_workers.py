"""DICOM worker processes: limits across them, replacement of a dead one, a clean stop.

``serve`` runs ``dicom.workers`` processes behind a parent that accepts and admits every
connection (see ``pacsvault.dimse.workers``). The limits and lockouts themselves are
tested in test_limits.py and test_lockout.py, which run with several workers by default;
these tests cover what only exists because there are several processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import CLIENT_AET, SERVER_AET, Server, add_test_peer, cli, dcmtk
from test_robustness import set_dicom_setting


def start(data: Path, make_server, **settings: str) -> Server:
    add_test_peer(data)
    for key, value in settings.items():
        set_dicom_setting(data, key, value)
    return make_server(data)


def echo(server: Server) -> int:
    proc = dcmtk("echoscu", "-aet", CLIENT_AET, "-aec", SERVER_AET, "127.0.0.1", str(server.port))
    return proc.returncode


def wait_for_workers(server: Server, count: int, gone: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(server.workers()) != count or gone & set(server.workers()):
        assert time.monotonic() < deadline, "the workers were not replaced"
        time.sleep(0.1)


def test_sigterm_stops_every_worker_and_each_signs_its_final_checkpoint(
    data_dir: Path, make_server
) -> None:
    server = start(data_dir, make_server, workers="3")
    workers = server.workers()
    assert len(workers) == 3
    for _ in range(6):  # associations spread over the workers: each writes audit records
        assert echo(server) == 0
    assert server.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    out = cli(data_dir, "audit", "verify")
    assert "did not stop cleanly" not in out.stdout + out.stderr, out.stdout
    log = (data_dir / "audit" / "checkpoints.log").read_text()
    assert log.count('"final":true') >= 2  # the parent and the workers that wrote records


def test_a_dead_worker_is_replaced_and_its_association_slots_freed(
    data_dir: Path, make_server
) -> None:
    server = start(data_dir, make_server, workers="2", max_associations_per_peer="2")
    ae = AE(ae_title=CLIENT_AET)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert echo(server) != 0  # the peer's two slots are taken
        workers = set(server.workers())
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_for_workers(server, 2, workers)
        assert echo(server) == 0  # the dead workers' slots were given back
    finally:
        for a in held:
            a.abort()
    out = server.log_text()
    assert "starting a new one" in out and "Traceback" not in out
    assert "DICOM processes: 2 workers" in cli(data_dir, "status").stdout


def test_one_worker_serves_in_the_main_process(data_dir: Path, make_server) -> None:
    server = start(data_dir, make_server, workers="1")
    assert server.workers() == []
    assert echo(server) == 0
    assert "DICOM processes: 1 (the main process)" in cli(data_dir, "status").stdout
