"""``pacsvault scan``: probe PACS targets the way the 2019 investigators did, counts only."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import SEVERITIES, Finding, severity_rank
from pacsvault.scan.report import terminal, write_html, write_json
from pacsvault.scan.targets import Target, TargetError, is_local, parse_target

TLS_PORTS = (2761, 2762)


def probe_dicom(t: Target, args: argparse.Namespace) -> list[Finding]:
    """DICOM-TLS first on the TLS ports, cleartext DICOM first elsewhere; a port that
    speaks neither is tried as HTTPS, then as HTTP.

    A TLS ClientHello sent to a cleartext DICOM port reads as a huge PDU and can keep a
    single-process server (dcmqrscp) busy, so TLS is tried there only when the port did
    not speak cleartext DICOM.
    """
    from pacsvault.scan.dimse_probe import probe

    if t.port in TLS_PORTS and (found := probe_tls_port(t, args)):
        return found
    found = probe(t, timeout=args.timeout, budget=args.budget, intrusive=args.intrusive)
    if any(f.id == "NET-NOT-DICOM" for f in found):
        return probe_tls_port(t, args) or probe_web(t, args, tls=False) or found
    return found


def probe_tls_port(t: Target, args: argparse.Namespace) -> list[Finding]:
    """A port that speaks TLS: DICOM-TLS checks, then the DIMSE checks over TLS without a
    client certificate (unless the handshake already demanded one). [] when no TLS.

    When the port turns out to serve HTTPS rather than DICOM, its web checks are returned
    instead.
    """
    from pacsvault.scan.dimse_probe import probe
    from pacsvault.scan.tls_probe import probe_tls

    found = probe_tls(t.host, t.port, args.timeout, str(t))
    if not found or any(f.id == "TLS-CLIENT-CERT-REQUIRED" for f in found):
        return found
    over_tls = probe(t, timeout=args.timeout, budget=args.budget, intrusive=args.intrusive,
                     tls=True)  # fmt: skip
    if any(f.id == "NET-NOT-DICOM" for f in over_tls):
        return probe_web(t, args, tls=True) or found + over_tls
    return found + over_tls


def probe_web(
    t: Target, args: argparse.Namespace, tls: bool, guessing: bool = True
) -> list[Finding]:
    """The web checks on *t*; [] when no web server answers there."""
    from pacsvault.scan.web_probe import probe_http

    return probe_http(t.host, t.port, tls, args.timeout, args.try_default_credentials,
                      budget=args.budget, intrusive=args.intrusive, guessing=guessing)  # fmt: skip


def cmd_scan(args: argparse.Namespace) -> int:
    ports = tuple(int(p) for p in args.ports.split(",")) if args.ports else None
    targets: list[Target] = []
    try:
        for text in args.targets:
            targets += parse_target(text, ports) if ports else parse_target(text)
    except TargetError as exc:
        print(f"pacsvault scan: {exc}", file=sys.stderr)
        return 2
    foreign = sorted({t.host for t in targets if not is_local(t.host)})
    if foreign and not args.authorized:
        print("pacsvault scan: scanning hosts other than this machine needs --authorized "
              f"(you assert permission to test them): {', '.join(foreign)}",
              file=sys.stderr)  # fmt: skip
        return 2

    import logging

    # pynetdicom logs every refused association as an error; here refusals are results.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

    started = time.time()
    findings: list[Finding] = []
    hosts: dict[str, list[Target]] = {}
    for t in targets:
        hosts.setdefault(t.host, []).append(t)

    def scan_host(host_targets: list[Target]) -> list[Finding]:
        out: list[Finding] = []
        for t in host_targets:  # one association at a time per host
            try:
                if t.scheme == "dicom":
                    found = probe_dicom(t, args)
                else:
                    found = probe_web(t, args, t.scheme == "https", guessing=False)
                if not t.explicit:  # default-port sweep: closed ports are not news
                    found = [f for f in found if f.id != "NET-UNREACHABLE"]
                out += found
            except Exception as exc:  # a misbehaving target must never end the run
                out.append(finding("NET-NOT-DICOM", str(t),
                                   f"probe ended early ({type(exc).__name__})"))  # fmt: skip
        return out

    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    futures = [pool.submit(scan_host, ts) for ts in hosts.values()]
    done, not_done = wait(futures, timeout=args.time_limit)
    for fut in done:
        findings += fut.result()
    pool.shutdown(wait=False, cancel_futures=True)
    if not_done:
        findings.append(finding("SCAN-TIME-LIMIT", "-", f"{len(not_done)} hosts not finished"))
    finished = time.time()
    print(terminal(findings, colour=sys.stdout.isatty()))
    if args.json:
        write_json(args.json, findings, started, finished)
    if args.html:
        write_html(args.html, findings, started, finished)
    worst = max((severity_rank(f.severity) for f in findings), default=0)
    code = 1 if worst >= severity_rank(args.fail_on) else 0
    if not_done:  # the time limit is hard: probes still running are abandoned
        sys.stdout.flush()
        os._exit(code)
    return code


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``pacsvault scan``."""
    p = sub.add_parser("scan", parents=[common], help="show what a stranger could see on a PACS")
    p.add_argument(
        "targets",
        nargs="+",
        help="host, host:port (DICOM, DICOM-TLS, HTTP or HTTPS: found out), AET@host:port, "
        "http(s):// or dicom:// URL, or CIDR",
    )
    p.add_argument("--ports", help="comma-separated DICOM ports (default 104,11112,4242,2761,2762)")
    p.add_argument(
        "--authorized",
        action="store_true",
        help="you have permission to test these hosts (needed beyond this machine)",
    )
    p.add_argument(
        "--try-default-credentials",
        action="store_true",
        help="try at most five well-known default web logins",
    )
    p.add_argument(
        "--intrusive",
        action="store_true",
        help="also test writing: C-STORE and STOW-RS one obviously synthetic object "
        "(patient ZZZ^EXPAUDIT; its UIDs are reported so the owner can delete it)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the JSON report")
    p.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    p.add_argument(
        "--fail-on",
        default="high",
        choices=SEVERITIES,
        help="exit 1 when a finding has at least this severity (default high)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per probe step")
    p.add_argument(
        "--budget",
        type=int,
        default=100_000,
        help="C-FIND / QIDO-RS answers read per target before stopping (C-CANCEL); counts "
        "become lower bounds",
    )
    p.add_argument("--concurrency", type=int, default=8, help="hosts probed at once")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole run")
    p.set_defaults(func=cmd_scan)
