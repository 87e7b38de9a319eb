"""``pacsvault migrate``: move this archive's index and objects elsewhere (PostgreSQL, S3).

The copy and its verification are in ``storage/migrate.py``. The source is only read
(but for one audit record), so the command can be run again after an interruption; it
refuses to run while a server writes to the archive. ``--switch`` then points the
settings at the new index and object store (the old ones stay as they were).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pacsvault.cli.base import CommandError, Subparsers
from pacsvault.config import SETTINGS_FILE, load_settings, redact_url
from pacsvault.security.audit import Action, Outcome
from pacsvault.site import open_site
from pacsvault.storage.blobstore import BlobStore
from pacsvault.storage.index import Index
from pacsvault.storage.migrate import MigrationError, copy_blobs, migrate_index


def _target_blobs(args: argparse.Namespace, scratch: Path) -> BlobStore:
    if not args.to_blobs.startswith("s3://"):
        raise CommandError("--to-blobs must be s3://bucket/prefix")
    from pacsvault.storage.s3blobs import S3BlobStore

    try:
        store = S3BlobStore(args.to_blobs, scratch, endpoint_url=args.to_blobs_endpoint or None,
                            region=args.to_blobs_region or None)  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        raise CommandError(f"--to-blobs: {exc}") from None
    store.create()
    try:
        store.check()
    except OSError as exc:
        raise CommandError(f"cannot reach {args.to_blobs}: {exc}") from None
    return store


def _set(text: str, section: str, key: str, value: str) -> str:
    """*text* (TOML) with ``key = "value"`` in ``[section]`` (added where missing)."""
    line = f"{key} = {_toml_string(value)}"
    match = re.search(rf"^\[{section}\]\s*$", text, re.M)
    if match is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{line}\n"
    end = re.search(r"^\[", text[match.end():], re.M)
    stop = match.end() + end.start() if end else len(text)
    body = text[match.end():stop]
    found = re.search(rf"^{key}\s*=.*$", body, re.M)
    body = body[: found.start()] + line + body[found.end():] if found else f"\n{line}" + body
    return text[: match.end()] + body + text[stop:]


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _switch(data_dir: Path, args: argparse.Namespace) -> None:
    """Point the settings at the targets (atomically; the file stays 0600)."""
    path = data_dir / SETTINGS_FILE
    text = path.read_text(encoding="utf-8")
    if args.to_index:
        text = _set(text, "index", "url", args.to_index)
        text = re.sub(r'^index_url\s*=.*$', 'index_url = ""', text, flags=re.M)
    if args.to_blobs:
        text = _set(text, "blobs", "url", args.to_blobs)
        if args.to_blobs_endpoint:
            text = _set(text, "blobs", "endpoint", args.to_blobs_endpoint)
        if args.to_blobs_region:
            text = _set(text, "blobs", "region", args.to_blobs_region)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    load_settings(data_dir)  # still valid


def cmd_migrate(args: argparse.Namespace) -> int:
    if not args.to_index and not args.to_blobs:
        raise CommandError("nothing to do: give --to-index URL and/or --to-blobs URL")
    target_index = None
    if args.to_index:
        try:
            target_index = Index(args.to_index)
        except ValueError as exc:
            raise CommandError(f"--to-index: {exc}") from None
    where = ", ".join(
        f"{what} {shown}" for what, shown in (("index", redact_url(args.to_index or "")),
                                              ("objects", args.to_blobs or "")) if shown
    )  # fmt: skip
    try:
        with open_site(args.data_dir) as site:
            log = site.audit.log
            if log is not None and log.writers_alive():
                raise CommandError("a pacsvault process is writing to this archive (serve?): "
                                   "stop it first")  # fmt: skip
            operator = site.operator()

            def audit_and_sign() -> None:
                site.audit.record(Action.SETTINGS_CHANGE, Outcome.SUCCESS, operator.actor,
                                  detail=f"migrate to {where}")  # fmt: skip
                site.audit.close()  # the final checkpoint goes with the copy

            index_for_blobs = site.index
            if target_index is not None:
                report = migrate_index(site.index.engine, target_index, audit_and_sign)
                state = "copied" if report.copied else "already copied"
                print(f"index: {report.rows} rows in {len(report.tables)} tables {state} to "
                      f"{redact_url(args.to_index)}; every table compared equal")  # fmt: skip
                index_for_blobs = target_index
            else:
                audit_and_sign()
            if args.to_blobs:
                scratch = args.data_dir / site.settings.storage.blob_dir / "tmp"
                target = _target_blobs(args, scratch)
                done = copy_blobs(index_for_blobs, site.blobs, target)
                print(f"objects: {done.objects} verified in {args.to_blobs} ({done.copied} "
                      f"copied, {done.already} already there, {done.recopied} copied again; "
                      f"{done.bytes} bytes)")  # fmt: skip
    except MigrationError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if target_index is not None:
            target_index.close()
    if args.switch:
        _switch(args.data_dir, args)
        print(f"settings now use {where}; the previous index and objects are left as they were")
    else:
        print("to use them: run again with --switch, or set index.url / blobs.url")
    return 0


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("migrate", parents=[common],
                       help="copy the index and objects elsewhere (PostgreSQL, S3), verified")
    p.add_argument("--to-index", metavar="URL", help="postgresql://USER@HOST/DATABASE (empty)")
    p.add_argument("--to-blobs", metavar="URL", help="s3://bucket/prefix")
    p.add_argument("--to-blobs-endpoint", metavar="URL",
                   help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)")  # fmt: skip
    p.add_argument("--to-blobs-region", metavar="NAME", help="S3 region")
    p.add_argument("--switch", action="store_true",
                   help="then point the settings at them (index.url, blobs.url)")  # fmt: skip
    p.set_defaults(func=cmd_migrate)
