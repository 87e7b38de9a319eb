"""``pacsvault scan`` and ``pacsvault doctor`` sub-commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the scanner's sub-commands to the main parser."""
