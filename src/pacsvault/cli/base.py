"""What every subcommand shares: the common options and the errors shown as one line."""

from __future__ import annotations

import argparse

from pacsvault.config import SettingsError
from pacsvault.security.audit import AuditUnavailable
from pacsvault.security.peers import PeerError
from pacsvault.security.policy import NotPermitted
from pacsvault.security.users import UserError
from pacsvault.site import SiteError
from pacsvault.storage.migrations import SchemaError


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


#: Errors a user can cause or fix: printed as ``pacsvault: message``, exit status 2.
USER_ERRORS = (
    CommandError,
    SettingsError,
    SiteError,
    SchemaError,
    PeerError,
    UserError,
    NotPermitted,
    AuditUnavailable,
)

Subparsers = argparse._SubParsersAction


def common_parser() -> argparse.ArgumentParser:
    """The options every command (and subcommand) takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (default: $PACSVAULT_DATA or ./pacsvault-data)",
    )
    return common
