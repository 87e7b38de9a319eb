"""The ``pacsvault`` command: one subcommand module each, registered below.

Each module's ``register(sub, common)`` adds its parser(s) and binds the handler
with ``set_defaults(func=...)``; :func:`main` parses, sets up logging and calls it.
Handlers open the data directory as one :class:`~pacsvault.site.Site` and call the
same services the admin API will.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from pacsvault import __version__
from pacsvault.cli import (
    admin,
    audit,
    data,
    doctor,
    fsck,
    lifecycle,
    migrate,
)
from pacsvault.cli.base import USER_ERRORS, common_parser
from pacsvault.config import resolve_data_dir
from pacsvault.logsafe import install as install_log_filter

COMMAND_MODULES = (lifecycle, admin, data, audit, doctor, fsck, migrate)


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="pacsvault", description="A secure-by-default PACS.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"pacsvault {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub, common)
    from pacsvault.scan.cli import register as register_scan

    register_scan(sub, common)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom's warnings about invalid values quote the values, which may be patient
    # data (DESIGN invariant 8); a refusal is reported by our own messages instead.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom")


def configure_logging(verbose: bool) -> None:
    """Logging of every pacsvault process: stderr, PHI filter, quiet libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_filter()
    _quiet_libraries(verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.data_dir = resolve_data_dir(getattr(args, "data", None))
    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except USER_ERRORS as exc:
        print(f"pacsvault: {exc}", file=sys.stderr)
        return 2
