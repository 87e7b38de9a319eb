"""A DICOM worker process of ``serve`` (see :mod:`pacsvault.dimse.workers`): its own
:class:`~pacsvault.site.Site` and :class:`~pacsvault.dimse.server.DicomServer`, serving the
connections the parent hands over. Here, not in ``dimse``, because it opens the Site."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from pacsvault.config import Settings
from pacsvault.dimse.server import DicomServer
from pacsvault.dimse.workers import Link, RemoteAdmission, die_with_parent
from pacsvault.site import open_site

log = logging.getLogger("pacsvault.dimse")

#: What ``python -m`` runs for a restarted worker.
MODULE = "pacsvault.cli.dicom_worker"


def run_worker(data_dir: Path, ctl: socket.socket, number: int) -> int:
    """Serve the connections the parent hands over *ctl* until told to stop; exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the
    stopping = threading.Event()  # parent decides; SIGTERM to a worker alone stops it

    def _on_term(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _on_term)
    link = Link(ctl)
    start, _fd = link.receive()
    if start is None or start.get("op") != "start":
        return 0  # the parent ended before starting us
    settings = Settings.model_validate(start["settings"])
    with open_site(data_dir, settings) as site:
        tls = site.tls_context() if settings.tls.enabled else None
        admission = RemoteAdmission(link)
        server = DicomServer(settings.dicom, site.archive, site.policy, tls=tls,
                             tls_port=settings.tls.port, admission=admission)  # fmt: skip
        site.audit.begin_run(f"dicom-worker-{number}")
        link.send({"op": "ready", "pid": os.getpid()})
        ctl.settimeout(0.5)
        try:
            while not stopping.is_set():
                try:
                    msg, fd = link.receive()
                except TimeoutError:
                    continue
                if msg is None:
                    break  # the parent is gone
                op = msg.get("op")
                if op == "conn" and fd is not None:
                    sock = socket.socket(fileno=fd)
                    sock.settimeout(None)
                    server.serve_connection(int(msg["id"]), sock, str(msg["address"]),
                                            tls if msg.get("tls") else None)  # fmt: skip
                elif fd is not None:
                    os.close(fd)
                if op == "admit":
                    admission.answer(int(msg["id"]), bool(msg["ok"]))
                elif op == "drop":
                    admission.drop(int(msg["id"]))
                elif op == "stop":
                    break
        finally:
            server.stop()
    return 0


def worker_entry(data_dir: Path, ctl: socket.socket, number: int) -> int:
    try:
        return run_worker(data_dir, ctl, number)
    except Exception as exc:
        log.exception("DICOM worker %d failed: %s", number, type(exc).__name__)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry of a restarted worker: ``python -m pacsvault.cli.dicom_worker``."""
    from pacsvault.cli import configure_logging  # the package imports this module

    parser = argparse.ArgumentParser(prog="pacsvault-dicom-worker")
    parser.add_argument("--data", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--number", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    configure_logging(args.verbose)
    ctl = socket.socket(fileno=args.control_fd)
    return worker_entry(Path(args.data), ctl, args.number)


# -- the parent side --------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
