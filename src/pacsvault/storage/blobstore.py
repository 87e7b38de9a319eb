"""Blob stores: where the Part-10 files live, addressed by keys the Archive derives from UIDs.

The contract every implementation keeps: :meth:`BlobStore.put` returns only once the
object is durable, and a reader never sees a partial object (write elsewhere, then
publish atomically).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol


def remove_if_abandoned(path: str) -> bool:
    """Remove the staged file at *path* unless a writer holds it locked (flock); True if
    removed. Every writer locks its staged file for as long as the file exists."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # in use
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class StagedBlob(Protocol):
    """An object being written into a store's own staging area, not yet visible."""

    @property
    def size(self) -> int:
        """Bytes written so far."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data*."""

    def reader(self) -> BinaryIO:
        """A new binary stream over everything written so far, from the start."""

    def discard(self) -> None:
        """Drop the staged object (idempotent)."""


class BlobStore(Protocol):
    """Object storage for DICOM files, addressed by keys; no caller sees a local path."""

    def stage(self) -> StagedBlob:
        """A new, empty staged object in the store's own temporary area."""

    def commit(self, staged: StagedBlob, key: str) -> None:
        """Publish *staged* under *key*, durably and atomically (replacing any object)."""

    def put(self, key: str, parts: Iterable[bytes]) -> None:
        """Store the concatenation of *parts* under *key*, durably and atomically."""

    def open(self, key: str) -> BinaryIO:
        """Open the object for reading; raises FileNotFoundError when absent."""

    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        """A stream of *length* bytes of the object from offset *start*."""

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


#: Threads that fsync directories while the committing thread fsyncs the object itself.
#: fsync releases the GIL; concurrent fsyncs share one journal commit on ext4/xfs, where
#: the same calls one after the other cost one device flush each.
_FSYNC_THREADS = 8
_fsync_pool: ThreadPoolExecutor | None = None
_fsync_pool_lock = threading.Lock()


def _fsync_dirs_async(paths: list[Path]) -> list[Future[None]]:
    global _fsync_pool
    if _fsync_pool is None:
        with _fsync_pool_lock:
            if _fsync_pool is None:
                _fsync_pool = ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="fsync")
    return [_fsync_pool.submit(_fsync_dir, p) for p in paths]


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
        self._known_dirs: set[Path] = {root, self.objects, self.tmp}
        self._dirs_lock = threading.Lock()

    def create(self) -> None:
        """Create the directories (every command opens the store; nothing is removed)."""
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.fsync:
            _fsync_dir(self.root)

    def clean_staging(self) -> int:
        """Remove staged objects nobody is writing any more (a crash's leftovers).

        Every staged file is locked (flock) by its writer for as long as it exists, so
        one that can be locked here belongs to a process that has ended; uploads of
        other running processes (an import beside ``serve``) are left alone. (A file
        created in the microseconds before its writer locks it could be taken; that
        writer's store then fails cleanly with "storage unavailable".) Returns how many
        were removed.
        """
        with os.scandir(self.tmp) as it:
            return sum(remove_if_abandoned(entry.path) for entry in it)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError("invalid blob key")
        return self.objects.joinpath(*parts)

    def _ensure_dir(self, directory: Path) -> list[Path]:
        """Create *directory* and its missing parents; the directories to fsync.

        Every level this process has not yet seen durable is listed (its parent is what
        must be fsynced), whether this call created it or found it: another thread or
        process may have created it and not yet fsynced its parent. The caller fsyncs the
        list, then :meth:`_durable` remembers the levels, so the common case costs no
        system call.
        """
        if directory in self._known_dirs:
            return []
        levels = []
        d = directory
        while d not in self._known_dirs and d != d.parent:
            levels.append(d)
            d = d.parent
        for level in reversed(levels):
            with contextlib.suppress(FileExistsError):
                level.mkdir(mode=0o700)
        return [level.parent for level in levels]

    def _durable(self, directory: Path) -> None:
        """Remember that *directory* and its parents are durable (their entries fsynced)."""
        with self._dirs_lock:
            d = directory
            while d not in self._known_dirs and d != d.parent:
                self._known_dirs.add(d)
                d = d.parent

    def stage(self) -> StagedFile:
        return StagedFile(self.tmp / f"{uuid.uuid4().hex}.part")

    def commit(self, staged: StagedBlob, key: str) -> None:
        """Publish *staged* under *key*; durable (file, its directory and any directory
        created for it, each fsynced) when this returns.

        The file is renamed into place first and the fsyncs then run together (the
        object's in this thread, the directories' in the fsync pool), so they share one
        journal commit instead of paying a device flush each. Nothing refers to the key
        before this returns (the index row commits afterwards), so a crash in between
        leaves at most an orphan, which ``fsck`` reports, never an indexed object that is
        incomplete. When an fsync fails the object is removed again and OSError raised.
        """
        assert isinstance(staged, StagedFile)
        target = self._path(key)
        try:
            created = self._ensure_dir(target.parent)
            staged.publish(target)
        except BaseException:
            staged.discard()
            raise
        if not self.fsync:
            staged.close()
            self._durable(target.parent)
            return
        dirs = _fsync_dirs_async([*created, target.parent])
        try:
            staged.sync_and_close()
        except OSError:
            with contextlib.suppress(OSError):
                target.unlink()
            raise
        finally:
            errors = [f.exception() for f in dirs]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            with contextlib.suppress(OSError):
                target.unlink()
            raise failed
        self._durable(target.parent)

    def put(self, key: str, parts: Iterable[bytes]) -> None:
        staged = self.stage()
        try:
            for part in parts:
                staged.write(part)
        except BaseException:
            staged.discard()
            raise
        self.commit(staged, key)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        f = open(self._path(key), "rb")  # noqa: SIM115
        f.seek(start)
        return _Window(f, length)

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
        created = self._ensure_dir(target.parent)
        if os.path.lexists(target):
            raise FileExistsError(f"already quarantined: {key}")
        if self.fsync:
            for d in created:
                _fsync_dir(d)
        self._durable(target.parent)
        os.rename(source, target)
        if self.fsync:
            _fsync_dir(target.parent)
            _fsync_dir(source.parent)
        return str(target)


class StagedFile:
    """A staged object: a file in the store's ``tmp/`` directory (see :class:`StagedBlob`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = open(path, "xb")  # noqa: SIM115
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # "in use" (see clean_staging)
        self._size = 0
        self._published = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._file is not None, "staged object already finished"
        self._file.write(data)
        self._size += len(data)

    def reader(self) -> BinaryIO:
        if self._file is not None:
            self._file.flush()
        return open(self.path, "rb")

    def publish(self, target: Path) -> None:
        """Flush the file and move it to *target*; it stays open (and locked) until
        :meth:`sync_and_close` or :meth:`close`."""
        assert self._file is not None, "staged object already finished"
        self._file.flush()
        os.replace(self.path, target)
        self.path = target
        self._published = True

    def sync_and_close(self) -> None:
        """fsync the (published) file, then close and unlock it."""
        assert self._file is not None, "staged object already finished"
        try:
            os.fsync(self._file.fileno())
        finally:
            self.close()

    def close(self) -> None:
        """Close (and unlock) the file without removing it."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._published:
            return  # it is the store's object now
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _Window(io.RawIOBase):
    """A read-only view of *length* bytes of an open file from its current position."""

    def __init__(self, f: BinaryIO, length: int) -> None:
        self._f = f
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(b)[: self._left]
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        self._left -= n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()
