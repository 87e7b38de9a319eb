"""The ``pacsvault`` command: init, serve, status, peer, import, demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from pacsvault import __version__
from pacsvault.config import SettingsError, is_loopback, load_settings, resolve_data_dir
from pacsvault.security.audit import Action, Outcome
from pacsvault.security.identity import Actor, local_operator
from pacsvault.security.peers import PeerError, parse_services
from pacsvault.site import Site, SiteError, init_site, open_site

log = logging.getLogger("pacsvault")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _site(args: argparse.Namespace) -> Site:
    return open_site(args.data_dir)


def cmd_init(args: argparse.Namespace) -> int:
    site = init_site(args.data_dir, args.aet)
    s = site.settings.dicom
    print(f"Initialised {args.data_dir}")
    print(f"  AE title {s.ae_title}, DICOM on {s.bind}:{s.port} (loopback until you change 'bind')")
    print("  No peers are registered: nobody can connect until you run 'pacsvault peer add'.")
    site.archive.audit.record(Action.PEER_CHANGE, Outcome.SUCCESS, local_operator(), detail="init")
    site.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.data_dir)
    dicom = settings.dicom
    if args.bind is not None:
        dicom.bind = args.bind
    if args.dicom_port is not None:
        dicom.port = args.dicom_port
    dicom = type(dicom).model_validate(dicom.model_dump())  # re-validate the overrides
    settings.dicom = dicom
    if not is_loopback(dicom.bind) and not dicom.cleartext_networks:
        raise CommandError(
            f"refusing to serve cleartext DICOM on non-loopback address {dicom.bind}: list the "
            "networks allowed to use it in dicom.cleartext_networks (TLS comes with issue 4)"
        )
    if not is_loopback(dicom.bind):
        log.warning(
            "cleartext DICOM on %s, allowed from %s",
            dicom.bind,
            ", ".join(dicom.cleartext_networks),
        )

    from pacsvault.dimse.server import DicomServer

    site = open_site(args.data_dir, settings)
    operator = Actor("operator", "serve", "local")
    server = DicomServer(dicom, site.archive, site.policy())
    try:
        server.start()
    except OSError as exc:
        site.close()
        raise CommandError(f"cannot listen on {dicom.bind}:{dicom.port}: {exc.strerror}") from None
    host, port = server.address
    site.archive.audit.record(Action.APPLICATION_START, Outcome.SUCCESS, operator)
    print(
        f"pacsvault {__version__}: DICOM AE '{dicom.ae_title}' listening on {host}:{port}",
        flush=True,
    )

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    site.archive.audit.record(Action.APPLICATION_STOP, Outcome.SUCCESS, operator)
    site.close()
    print("pacsvault stopped", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    site = _site(args)
    stats = site.archive.statistics()
    d = site.settings.dicom
    print(f"data directory: {args.data_dir}")
    for key in ("patients", "studies", "series", "instances"):
        print(f"{key}: {stats[key]}")
    print(f"bytes: {stats['bytes']}")
    exposure = "loopback only" if is_loopback(d.bind) else f"cleartext from {d.cleartext_networks}"
    print(f"DICOM listener: AE {d.ae_title} on {d.bind}:{d.port} ({exposure})")
    print(f"peers: {len(site.peers.list())}")
    site.close()
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    site = _site(args)
    actor = local_operator()
    try:
        if args.peer_cmd == "add":
            peer = site.peers.add(
                args.name, args.aet, args.host, args.port, parse_services(args.allow)
            )
            detail = f"add {peer.name} aet={peer.ae_title} host={peer.host} allow={args.allow}"
            site.archive.audit.record(Action.PEER_CHANGE, Outcome.SUCCESS, actor, detail=detail)
            print(f"peer {peer.name} added")
        elif args.peer_cmd == "remove":
            site.peers.remove(args.name)
            site.archive.audit.record(
                Action.PEER_CHANGE, Outcome.SUCCESS, actor, detail=f"remove {args.name}"
            )
            print(f"peer {args.name} removed")
        else:
            peers = site.peers.list()
            if not peers:
                print("no peers registered")
            for p in peers:
                services = ",".join(sorted(s.value for s in p.services))
                port = p.port if p.port is not None else "-"
                print(f"{p.name}\t{p.ae_title}\t{p.host}\tport={port}\tallow={services}")
    except PeerError as exc:
        raise CommandError(str(exc)) from None
    finally:
        site.close()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pacsvault.importer import import_paths

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or directory: {missing[0]}")
    site = _site(args)
    try:
        summary = import_paths(site.archive, local_operator(), args.paths)
    finally:
        site.close()
    for line in summary.lines():
        print(line)
    return 0 if summary.refused_total == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from pacsvault.dicom.part10 import split_part10
    from pacsvault.dicom.synthetic import Spec, data_set, to_bytes
    from pacsvault.security.identity import local_operator as operator

    site = _site(args)
    actor = operator()
    stored = 0
    try:
        for ds in data_set(Spec(patients=args.patients, seed=args.seed)):
            data = to_bytes(ds)
            ts, offset = split_part10(data)
            if site.archive.store(actor, data[offset:], ts).status.ok:
                stored += 1
    finally:
        site.close()
    print(f"loaded {stored} synthetic instances ({args.patients} patients)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (default: $PACSVAULT_DATA or ./pacsvault-data)",
    )
    parser = argparse.ArgumentParser(
        prog="pacsvault", description="A secure-by-default PACS.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"pacsvault {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create a data directory")
    p.add_argument("--aet", default="PACSVAULT", help="our AE title (default PACSVAULT)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the DICOM listener")
    p.add_argument("--bind", metavar="ADDRESS", help="listen address (overrides settings)")
    p.add_argument("--dicom-port", type=int, metavar="N", help="DICOM port (overrides settings)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", parents=[common], help="show counts and listeners")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("peer", parents=[common], help="manage registered DICOM peers")
    peer_sub = p.add_subparsers(dest="peer_cmd", required=True)
    a = peer_sub.add_parser("add", parents=[common], help="register a peer")
    a.add_argument("name")
    a.add_argument("--aet", required=True, help="the peer's AE title")
    a.add_argument("--host", required=True, help="its address, or a CIDR network")
    a.add_argument("--port", type=int, help="its port (needed to be a C-MOVE destination)")
    a.add_argument("--allow", required=True, help="services: echo,store,find,move,get")
    peer_sub.add_parser("list", parents=[common], help="list peers")
    r = peer_sub.add_parser("remove", parents=[common], help="remove a peer")
    r.add_argument("name")
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("import", parents=[common], help="import DICOM files and folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(func=cmd_import)

    from pacsvault.scan.cli import register as register_scan

    register_scan(sub, common)

    p = sub.add_parser("demo", parents=[common], help="load synthetic demo studies")
    p.add_argument("--patients", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.data_dir = resolve_data_dir(getattr(args, "data", None))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (CommandError, SettingsError, SiteError) as exc:
        print(f"pacsvault: {exc}", file=sys.stderr)
        return 2
