"""``pacsvault init``, ``serve``, ``status`` and ``tls export-ca``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from pacsvault import __version__
from pacsvault.cli.base import CommandError, Subparsers
from pacsvault.config import Settings, is_loopback, load_settings, redact_url
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.tls import expiry_note
from pacsvault.site import Site, init_site, open_site

log = logging.getLogger("pacsvault")


def cmd_init(args: argparse.Namespace) -> int:
    with init_site(args.data_dir, args.aet, index_url=args.index_url or "",
                   blob_url=args.blob_url or "") as site:  # fmt: skip
        s = site.settings.dicom
        site.audit.record(Action.SETTINGS_CHANGE, Outcome.SUCCESS, site.operator().actor,
                          detail="init")  # fmt: skip
    print(f"Initialised {args.data_dir}")
    print(f"  index: {_where_index(site)}; objects: {_where_blobs(site)}")
    print(f"  AE title {s.ae_title}, DICOM on {s.bind}:{s.port} (loopback until you change 'bind')")
    print("  No peers are registered: nobody can connect until you run 'pacsvault peer add'.")
    return 0


def _serve_settings(args: argparse.Namespace) -> Settings:
    """The settings file with the command line's overrides, validated for exposure."""
    settings = load_settings(args.data_dir)
    dicom = settings.dicom
    if args.bind is not None:
        dicom.bind = args.bind
    if args.dicom_port is not None:
        dicom.port = args.dicom_port
    if args.tls_port is not None:
        settings.tls.port = args.tls_port
    if args.https_port is not None:
        settings.web.port = args.https_port
    settings.dicom = dicom = type(dicom).model_validate(dicom.model_dump())  # re-validate
    if dicom.cleartext and not is_loopback(dicom.bind):
        if not dicom.cleartext_networks:
            raise CommandError(
                f"refusing to serve cleartext DICOM on non-loopback address {dicom.bind}: use "
                "DICOM-TLS only (dicom.cleartext = false) or list the networks allowed to use "
                "cleartext in dicom.cleartext_networks"
            )
        log.warning("cleartext DICOM on %s, allowed from %s only", dicom.bind,
                    ", ".join(dicom.cleartext_networks))  # fmt: skip
    return settings


def _tls_context(site: Site):  # type: ignore[no-untyped-def]
    if not site.settings.tls.enabled:
        return None
    try:
        note = expiry_note(site.tls_files()[0])
        if "WARNING" in note or "EXPIRED" in note:
            log.warning("DICOM-TLS server certificate %s", note)
        return site.tls_context()
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot load the TLS certificate and key: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from pacsvault.dimse.workers import WorkerPool, worker_count

    settings = _serve_settings(args)
    count = worker_count(settings.dicom.workers)
    pool = None
    if count > 1:
        from pacsvault.cli import dicom_worker

        pool = WorkerPool(args.data_dir, settings, count, entry=dicom_worker.worker_entry,
                          module=dicom_worker.MODULE, verbose=bool(args.verbose))  # fmt: skip
        pool.fork()  # before the data directory is opened or any thread is started
    try:
        return _serve(args, settings, pool)
    finally:
        if pool is not None:
            pool.stop()


def _serve(args: argparse.Namespace, settings: Settings, pool) -> int:  # type: ignore[no-untyped-def]
    """Serve DICOM in this process (*pool* None) or through the worker processes of *pool*."""
    from pacsvault.cli.fsck import check_at_startup
    from pacsvault.dimse.server import DicomServer

    stop = _stop_on_signal()  # from now on SIGTERM and SIGINT stop cleanly
    with open_site(args.data_dir, settings) as site, _node_lease(site):
        tls = _tls_context(site)
        if not settings.dicom.cleartext and tls is None:
            raise CommandError("no listener: both cleartext DICOM and TLS are disabled")
        operator = site.operator()
        site.audit.begin_run("serve")  # the start marker of this run in the checkpoint log
        site.blobs.clean_staging()  # what a crash left half-written
        check_at_startup(site, operator)  # warns (never refuses) when blobs and index disagree
        server = None
        if pool is None:
            server = DicomServer(settings.dicom, site.archive, site.policy, tls=tls,
                                 tls_port=settings.tls.port if tls else None)  # fmt: skip
        else:
            pool.on_worker_exit = site.blobs.clean_staging  # what a dead worker left
        web = _web_server(site)
        try:
            if server is not None:
                server.start()
            else:
                pool.start(tls is not None)
            if web is not None:
                web.start()
        except (OSError, RuntimeError) as exc:
            if server is not None:
                server.stop()
            if web is not None:
                web.stop()
            if isinstance(exc, RuntimeError):
                raise CommandError(str(exc)) from None
            raise CommandError(f"cannot listen on {settings.dicom.bind}: {exc.strerror}") from None
        forwarder = None
        if settings.audit.syslog_host:
            from pacsvault.security.audit_forward import AuditForwarder

            forwarder = AuditForwarder(site.audit, settings.audit, settings.dicom.ae_title,
                                       site.audit.log)  # fmt: skip
            forwarder.start()
        labels = {"dicom": "cleartext", "dicom-tls": "TLS", "https": "HTTPS",
                  "http-redirect": "HTTP redirect"}  # fmt: skip
        dicom = server.listeners if server is not None else pool.listeners
        everything = dicom + (web.listeners if web is not None else [])
        listeners = ", ".join(f"{host}:{port} ({labels[kind]})" for kind, host, port in everything)
        site.audit.record(Action.APPLICATION_START, Outcome.SUCCESS, operator.actor,
                          detail=f"listening on {listeners}")  # fmt: skip
        ae = settings.dicom.ae_title
        processes = f" ({pool.count} DICOM worker processes)" if pool is not None else ""
        print(f"pacsvault {__version__}: DICOM AE '{ae}' listening on {listeners}{processes}",
              flush=True)  # fmt: skip
        if pool is not None:
            pool.run(stop)
        else:
            _wait_for_signal(stop)
        if web is not None:
            web.stop()
        if server is not None:
            server.stop()
        else:
            pool.stop()  # each worker signs its own final checkpoint
        site.audit.record(Action.APPLICATION_STOP, Outcome.SUCCESS, operator.actor)
        site.audit.close()  # the final checkpoint: this shutdown was clean
        if forwarder is not None:
            forwarder.stop()
    print("pacsvault stopped", flush=True)
    return 0


@contextlib.contextmanager
def _node_lease(site: Site) -> Iterator[None]:
    """This node's name, held on a shared index while serving (see storage.nodes)."""
    from pacsvault.storage.nodes import NodeLease

    lease = NodeLease(site.index.engine, site.settings.index.node)
    taken = lease.acquire()
    if taken is not None:
        log.warning("%s", taken)
        print(f"pacsvault: warning: {taken}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        lease.release()


def _web_server(site: Site):  # type: ignore[no-untyped-def]
    """The HTTPS server of *site*, or None when it is disabled."""
    if not site.settings.web.enabled:
        return None
    from pacsvault.security.tls import https_context
    from pacsvault.web.server import WebServer

    cert, key = site.tls_files()
    try:
        context = https_context(cert, key)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise CommandError(f"cannot load the TLS certificate and key for HTTPS: {exc}") from None
    return WebServer(site, context, cert, key, site.settings.dicom.bind, site.settings.web.port)


def _stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def _wait_for_signal(stop: threading.Event) -> None:
    """Block until *stop* is set (by SIGTERM or SIGINT: see :func:`_stop_on_signal`)."""
    while not stop.wait(0.5):
        pass


def _where_index(site: Site) -> str:
    """Where the index is, for people: never with its password."""
    if not site.settings.index_url:
        return "SQLite (index.sqlite)"
    return f"{site.index.engine.dialect.name} {redact_url(site.settings.index_url)}"


def _where_blobs(site: Site) -> str:
    if not site.settings.blobs.url:
        return f"files ({site.settings.storage.blob_dir}/)"
    return f"S3 {site.settings.blobs.url}"


def cmd_status(args: argparse.Namespace) -> int:
    """Print counts, listeners, peers and lockouts; never a patient's name or ID."""
    with open_site(args.data_dir) as site:
        status = site.status()
        d = site.settings.dicom
        where = (_where_index(site), _where_blobs(site))
    listener = {x.kind: x for x in status.listeners}
    print(f"data directory: {args.data_dir}")
    print(f"index: {where[0]}")
    print(f"objects: {where[1]}")
    for key in ("patients", "studies", "series", "instances", "bytes"):
        print(f"{key}: {status.counts[key]}")
    # Studies whose patient name or birth date differs from their PatientID's first study.
    print(f"patient identity conflicts: {status.identity_conflicts}")
    dicom, tls, https = listener["dicom"], listener["dicom-tls"], listener["https"]
    if dicom.enabled:
        exposure = (
            "loopback only"
            if is_loopback(dicom.address)
            else f"cleartext allowed from {', '.join(d.cleartext_networks)}"
        )
        print(f"DICOM listener: AE {d.ae_title} on {dicom.address}:{dicom.port} ({exposure})")
    else:
        print("DICOM listener: cleartext disabled")
    from pacsvault.dimse.workers import worker_count

    n = worker_count(d.workers)
    print(f"DICOM processes: {n} worker{'s' if n > 1 else ''}" if n > 1
          else "DICOM processes: 1 (the main process)")  # fmt: skip
    if tls.enabled:
        print(f"DICOM-TLS listener: AE {d.ae_title} on {tls.address}:{tls.port}; "
              f"certificate {status.certificate}")  # fmt: skip
    else:
        print("DICOM-TLS listener: disabled")
    if https.enabled:
        redirect = listener["http-redirect"]
        more = f", HTTP redirect on port {redirect.port}" if redirect.enabled else ""
        print(f"HTTPS listener: {https.address}:{https.port} (DICOMweb at /dicom-web){more}")
    else:
        print("HTTPS listener: disabled")
    print(f"peers: {status.peers}, users: {status.users}")
    if status.lockouts:
        print(f"locked out: {', '.join(status.lockouts)}")
    return 0


def cmd_export_ca(args: argparse.Namespace) -> int:
    with open_site(args.data_dir) as site:
        if not site.ca.exists():
            raise CommandError("this site has no local CA")
        data = site.ca.cert_path.read_bytes()
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"CA certificate written to {args.out}")
    else:
        sys.stdout.write(data.decode())
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common], help="create a data directory")
    p.add_argument("--aet", default="PACSVAULT", help="our AE title (default PACSVAULT)")
    p.add_argument("--index-url", metavar="URL",
                   help="index database (index.url), e.g. postgresql://pacs@db/pacs "
                        "(default: SQLite in the data directory)")  # fmt: skip
    p.add_argument("--blob-url", metavar="URL",
                   help="object storage (blobs.url), e.g. s3://bucket/prefix "
                        "(default: files in the data directory)")  # fmt: skip
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the DICOM listeners")
    p.add_argument("--bind", metavar="ADDRESS", help="listen address (overrides settings)")
    p.add_argument("--dicom-port", type=int, metavar="N", help="DICOM port (overrides settings)")
    p.add_argument("--tls-port", type=int, metavar="N", help="DICOM-TLS port (overrides settings)")
    p.add_argument("--https-port", type=int, metavar="N", help="HTTPS port (overrides settings)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", parents=[common], help="show counts and listeners")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("tls", parents=[common], help="TLS material")
    tls_sub = p.add_subparsers(dest="tls_cmd", required=True)
    e = tls_sub.add_parser("export-ca", parents=[common], help="print or write the CA certificate")
    e.add_argument("--out", metavar="FILE")
    e.set_defaults(func=cmd_export_ca)
