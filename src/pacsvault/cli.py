"""The ``pacsvault`` command: init, serve, status, peer, import, demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pacsvault import __version__
from pacsvault.config import SettingsError, is_loopback, load_settings, resolve_data_dir
from pacsvault.security.audit import Action, AuditUnavailable, Outcome
from pacsvault.security.identity import Actor, local_operator
from pacsvault.security.peers import PeerError, parse_services
from pacsvault.security.tls import expiry_note
from pacsvault.security.users import Role, UserError
from pacsvault.site import Site, SiteError, init_site, open_site
from pacsvault.storage.migrations import SchemaError

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
    if args.tls_port is not None:
        settings.tls.port = args.tls_port
    settings.dicom = dicom = type(dicom).model_validate(dicom.model_dump())  # re-validate
    if dicom.cleartext and not is_loopback(dicom.bind):
        if not dicom.cleartext_networks:
            raise CommandError(
                f"refusing to serve cleartext DICOM on non-loopback address {dicom.bind}: use "
                "DICOM-TLS only (dicom.cleartext = false) or list the networks allowed to use "
                "cleartext in dicom.cleartext_networks"
            )
        log.warning(
            "cleartext DICOM on %s, allowed from %s only",
            dicom.bind,
            ", ".join(dicom.cleartext_networks),
        )

    from pacsvault.dimse.server import DicomServer

    site = open_site(args.data_dir, settings)
    tls = None
    if settings.tls.enabled:
        try:
            note = expiry_note(site.tls_files()[0])
            if "WARNING" in note or "EXPIRED" in note:
                log.warning("DICOM-TLS server certificate %s", note)
            tls = site.tls_context()
        except (OSError, ValueError) as exc:
            site.close()
            raise CommandError(f"cannot load the TLS certificate and key: {exc}") from None
    if not dicom.cleartext and tls is None:
        site.close()
        raise CommandError("no listener: both cleartext DICOM and TLS are disabled")
    operator = Actor("operator", "serve", "local")
    from pacsvault.fsck_cli import check_at_startup

    site.archive.audit.begin_run("serve")  # the start marker of this run in the checkpoint log
    site.blobs.clean_staging()  # what a crash left half-written
    check_at_startup(site, operator)  # warns (never refuses) when blobs and index disagree
    server = DicomServer(
        dicom, site.archive, site.policy(), tls=tls, tls_port=settings.tls.port if tls else None
    )
    try:
        server.start()
    except OSError as exc:
        server.stop()
        site.close()
        raise CommandError(f"cannot listen on {dicom.bind}: {exc.strerror}") from None
    forwarder = None
    if settings.audit.syslog_host:
        from pacsvault.security.audit_forward import AuditForwarder

        forwarder = AuditForwarder(
            site.index, settings.audit, dicom.ae_title, site.archive.audit.log
        )
        forwarder.start()
    listeners = ", ".join(
        f"{host}:{port} ({'TLS' if kind == 'dicom-tls' else 'cleartext'})"
        for kind, host, port in server.listeners
    )
    site.archive.audit.record(
        Action.APPLICATION_START, Outcome.SUCCESS, operator, detail=f"listening on {listeners}"
    )
    print(
        f"pacsvault {__version__}: DICOM AE '{dicom.ae_title}' listening on {listeners}",
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
    site.archive.audit.close()  # the final checkpoint: this shutdown was clean
    if forwarder is not None:
        forwarder.stop()
    site.close()
    print("pacsvault stopped", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print counts, listeners, peers and lockouts; never a patient's name or ID."""
    site = _site(args)
    stats = site.archive.statistics()
    d, t = site.settings.dicom, site.settings.tls
    print(f"data directory: {args.data_dir}")
    for key in ("patients", "studies", "series", "instances"):
        print(f"{key}: {stats[key]}")
    print(f"bytes: {stats['bytes']}")
    # Studies whose patient name or birth date differs from their PatientID's first study.
    print(f"patient identity conflicts: {site.index.identity_conflicts()}")
    if d.cleartext:
        exposure = (
            "loopback only"
            if is_loopback(d.bind)
            else f"cleartext allowed from {', '.join(d.cleartext_networks)}"
        )
        print(f"DICOM listener: AE {d.ae_title} on {d.bind}:{d.port} ({exposure})")
    else:
        print("DICOM listener: cleartext disabled")
    if t.enabled:
        cert, _key = site.tls_files()
        try:
            note = expiry_note(cert)
        except (OSError, ValueError):
            note = "certificate missing or unreadable"
        print(f"DICOM-TLS listener: AE {d.ae_title} on {d.bind}:{t.port}; certificate {note}")
    else:
        print("DICOM-TLS listener: disabled")
    print(f"peers: {len(site.peers.list())}, users: {len(site.users.list())}")
    locked = site.lockout().entries()
    if locked:
        print(f"locked out: {', '.join(e.key for e in locked)}")
    site.close()
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    site = _site(args)
    actor = local_operator()
    try:
        if args.peer_cmd == "add":
            peer = site.peers.add(
                args.name,
                args.aet,
                args.host,
                args.port,
                parse_services(args.allow),
                tls=args.tls,
                client_cert=args.client_cert,
                user_identity=args.user_identity,
            )
            detail = (
                f"add {peer.name} aet={peer.ae_title} host={peer.host} allow={args.allow} "
                f"tls={peer.tls.value} client-cert={peer.client_cert} "
                f"user-identity={peer.user_identity.value}"
            )
            site.archive.audit.record(Action.PEER_CHANGE, Outcome.SUCCESS, actor, detail=detail)
            print(f"peer {peer.name} added")
        elif args.peer_cmd == "cert":
            if site.peers.get(args.name) is None:
                raise PeerError(f"no peer named '{args.name}'")
            paths = site.ca.issue_peer(args.name, args.out)
            site.archive.audit.record(
                Action.PEER_CHANGE, Outcome.SUCCESS, actor, detail=f"certificate for {args.name}"
            )
            for path in paths:
                print(path)
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
                print(
                    f"{p.name}\t{p.ae_title}\t{p.host}\tport={port}\tallow={services}"
                    f"\ttls={p.tls.value}\tclient-cert={p.client_cert}"
                    f"\tuser-identity={p.user_identity.value}"
                )
    except PeerError as exc:
        raise CommandError(str(exc)) from None
    finally:
        site.close()
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    site = _site(args)
    users, actor = site.users, local_operator()
    try:
        if args.user_cmd == "add":
            password = users.add(args.name, args.role)
            detail = f"add {args.name} role={args.role}"
            print(f"user {args.name} added with role {args.role}")
            print(f"password (shown once): {password}")
        elif args.user_cmd == "passwd":
            password = users.new_password(args.name)
            detail = f"new password for {args.name}"
            print(f"new password for {args.name} (shown once): {password}")
        elif args.user_cmd in ("disable", "enable"):
            users.set_disabled(args.name, args.user_cmd == "disable")
            detail = f"{args.user_cmd} {args.name}"
            print(f"user {args.name} {args.user_cmd}d")
        else:
            for u in users.list():
                print(f"{u.name}\t{u.role.value}\t{'disabled' if u.disabled else 'enabled'}")
            return 0
        site.archive.audit.record(Action.USER_CHANGE, Outcome.SUCCESS, actor, detail=detail)
    except UserError as exc:
        raise CommandError(str(exc)) from None
    finally:
        site.close()
    return 0


def cmd_lockout(args: argparse.Namespace) -> int:
    site = _site(args)
    lockout = site.lockout()
    try:
        if args.lockout_cmd == "clear":
            n = lockout.clear(args.key)
            site.archive.audit.record(
                Action.LOCKOUT, Outcome.SUCCESS, local_operator(),
                detail=f"cleared {args.key or 'all'}",
            )  # fmt: skip
            print(f"cleared {n} lockout(s)")
        else:
            entries = lockout.entries()
            if not entries:
                print("no lockouts")
            for e in entries:
                until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.until))
                print(f"{e.key}\tuntil {until}\t{e.reason}")
    finally:
        site.close()
    return 0


def cmd_tls(args: argparse.Namespace) -> int:
    site = _site(args)
    try:
        if not site.ca.exists():
            raise CommandError("this site has no local CA")
        data = site.ca.cert_path.read_bytes()
        if args.out:
            Path(args.out).write_bytes(data)
            print(f"CA certificate written to {args.out}")
        else:
            sys.stdout.write(data.decode())
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
    p.add_argument("--tls-port", type=int, metavar="N", help="DICOM-TLS port (overrides settings)")
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
    a.add_argument(
        "--tls",
        default="optional",
        choices=["required", "optional", "off"],
        help="DICOM over TLS for this peer (default optional: cleartext only where allowed)",
    )
    a.add_argument(
        "--client-cert",
        default="ca",
        metavar="ca|none|sha256:HEX",
        help="over TLS: a certificate from a trusted CA issued to this peer name (ca, the "
        "default), a pinned certificate fingerprint, or none",
    )
    a.add_argument(
        "--user-identity",
        default="optional",
        choices=["required", "optional"],
        help="require a DICOM user identity (username+passcode or JWT)",
    )
    c = peer_sub.add_parser("cert", parents=[common], help="issue a client certificate")
    c.add_argument("name")
    c.add_argument("--out", type=Path, required=True, metavar="DIR")
    peer_sub.add_parser("list", parents=[common], help="list peers")
    r = peer_sub.add_parser("remove", parents=[common], help="remove a peer")
    r.add_argument("name")
    p.set_defaults(func=cmd_peer)

    p = sub.add_parser("import", parents=[common], help="import DICOM files and folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("user", parents=[common], help="manage users")
    user_sub = p.add_subparsers(dest="user_cmd", required=True)
    u = user_sub.add_parser("add", parents=[common], help="add a user (password shown once)")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=[r.value for r in Role])
    user_sub.add_parser("list", parents=[common], help="list users")
    for verb in ("disable", "enable", "passwd"):
        user_sub.add_parser(verb, parents=[common], help=f"{verb} a user").add_argument("name")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("lockout", parents=[common], help="show or clear lockouts")
    lock_sub = p.add_subparsers(dest="lockout_cmd", required=True)
    lock_sub.add_parser("list", parents=[common], help="lockouts in force")
    cl = lock_sub.add_parser("clear", parents=[common], help="lift lockouts")
    cl.add_argument(
        "key", nargs="?", help="e.g. address:10.1.2.3 or account:alice (all if omitted)"
    )
    p.set_defaults(func=cmd_lockout)

    p = sub.add_parser("tls", parents=[common], help="TLS material")
    tls_sub = p.add_subparsers(dest="tls_cmd", required=True)
    e = tls_sub.add_parser("export-ca", parents=[common], help="print or write the CA certificate")
    e.add_argument("--out", metavar="FILE")
    p.set_defaults(func=cmd_tls)

    from pacsvault.doctor import register as register_doctor
    from pacsvault.fsck_cli import register as register_fsck
    from pacsvault.scan.cli import register as register_scan
    from pacsvault.security.audit_cli import register as register_audit

    register_scan(sub, common)
    register_audit(sub, common)
    register_doctor(sub, common)
    register_fsck(sub, common)

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
    from pacsvault.logsafe import install as install_log_filter

    install_log_filter()
    if not args.verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom's warnings about invalid values quote the values, which may be patient
    # data (DESIGN invariant 8); a refusal is reported by our own messages instead.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except (
        CommandError,
        SettingsError,
        SiteError,
        SchemaError,
        PeerError,
        UserError,
        AuditUnavailable,
    ) as exc:
        print(f"pacsvault: {exc}", file=sys.stderr)
        return 2
