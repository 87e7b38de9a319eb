"""``pacsvault import`` and ``demo``: objects into the archive without the network."""

from __future__ import annotations

import argparse
from pathlib import Path

from pacsvault.cli.base import CommandError, Subparsers
from pacsvault.site import open_site


def cmd_import(args: argparse.Namespace) -> int:
    from pacsvault.importer import import_paths

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or directory: {missing[0]}")
    with open_site(args.data_dir) as site:
        summary = import_paths(site.archive, site.operator(), args.paths)
    for line in summary.lines():
        print(line)
    return 0 if summary.refused_total == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from pacsvault.dicom.part10 import split_part10
    from pacsvault.dicom.synthetic import Spec, data_set, to_bytes

    stored = 0
    with open_site(args.data_dir) as site:
        operator = site.operator()
        for ds in data_set(Spec(patients=args.patients, seed=args.seed)):
            data = to_bytes(ds)
            ts, offset = split_part10(data)
            if site.archive.store(operator, data[offset:], ts).status.ok:
                stored += 1
    print(f"loaded {stored} synthetic instances ({args.patients} patients)")
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("import", parents=[common], help="import DICOM files and folders")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("demo", parents=[common], help="load synthetic demo studies")
    p.add_argument("--patients", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_demo)
