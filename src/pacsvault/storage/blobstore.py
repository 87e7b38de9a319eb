"""Blob stores: where the Part-10 files live, addressed by keys the Archive derives from UIDs.

The contract every implementation keeps: :meth:`BlobStore.put` returns only once the
object is durable, and a reader never sees a partial object (write elsewhere, then
publish atomically).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class BlobStore(Protocol):
    """Object storage for DICOM files."""

    def put(self, key: str, parts: Iterable[bytes]) -> None:
        """Store the concatenation of *parts* under *key*, durably and atomically."""

    def open(self, key: str) -> BinaryIO:
        """Open the object for reading; raises FileNotFoundError when absent."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path to the object, when the store has one (for zero-copy sends)."""

    def exists(self, key: str) -> bool:
        """True when the object is present."""

    def delete(self, key: str) -> None:
        """Remove the object; absent objects are ignored."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs as files under one directory; temporary files in ``tmp/`` beside the objects.

    Keys are relative paths made by the Archive from validated UIDs; anything else
    (absolute paths, ``..``) is refused so no caller can write outside the root.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()

    def create(self) -> None:
        """Create the directories and clear temporary files a crash may have left."""
        for d in (self.root, self.objects):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(mode=0o700)
        if self.fsync:
            _fsync_dir(self.root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError("invalid blob key")
        return self.objects.joinpath(*parts)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            missing = []
            d = directory
            while not d.exists():
                missing.append(d)
                d = d.parent
            for m in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    m.mkdir(mode=0o700)
                if self.fsync:
                    _fsync_dir(m.parent)
            self._known_dirs.add(directory)

    def put(self, key: str, parts: Iterable[bytes]) -> None:
        target = self._path(key)
        self._ensure_dir(target.parent)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        if self.fsync:
            _fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    # -- inventory (fsck) -----------------------------------------------------------------

    def keys(self) -> Iterator[str]:
        """Every key the store holds, sorted; temporary and quarantined objects are not keys.

        A listing of the whole store (for an object store: a paginated listing of its
        objects prefix). Anything that is not a directory is listed, so a stray link
        or special file shows up instead of hiding among the objects.
        """
        yield from self._walk(self.objects, "")

    def _walk(self, directory: Path, prefix: str) -> Iterator[str]:
        """Keys below *directory* (whose key prefix is *prefix*), sorted; links not followed."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{prefix}{entry.name}/")
            else:
                yield f"{prefix}{entry.name}"

    def size(self, key: str) -> int:
        """The object's size in bytes; raises FileNotFoundError when there is no such object."""
        st = os.stat(self._path(key))
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"not a stored object: {key}")
        return st.st_size

    def modified(self, key: str) -> float:
        """When the object was last written, in seconds since the epoch.

        Raises FileNotFoundError when there is no such object.
        """
        return os.lstat(self._path(key)).st_mtime

    def quarantine(self, key: str, batch: str) -> str:
        """Move the object out of the store into quarantine *batch*, keeping its key below it.

        Afterwards :meth:`keys`, :meth:`open` and :meth:`exists` no longer see it, and
        nothing is deleted: an operator can inspect or restore it. *batch* is one name
        (e.g. a timestamp) grouping the objects of one repair. Returns where the object
        went, for the operator (here a path, ``<root>/quarantine/<batch>/<key>``, in
        directories of mode 0700). Raises FileNotFoundError when the object is absent
        and FileExistsError when the batch already holds this key.
        """
        if batch in ("", ".", "..") or "/" in batch:
            raise ValueError("invalid quarantine batch")
        source = self._path(key)
        target = self.root.joinpath("quarantine", batch, *key.split("/"))
        self._ensure_dir(target.parent)
        if os.path.lexists(target):
            raise FileExistsError(f"already quarantined: {key}")
        os.rename(source, target)
        if self.fsync:
            _fsync_dir(target.parent)
            _fsync_dir(source.parent)
        return str(target)
