"""Streamed answers written in large pieces.

A synchronous body runs in the thread pool, one hop per piece it yields, and each
piece becomes one HTTP chunk and one pass through TLS. Bodies here yield small
pieces (a part's headers, a CRLF, a closing boundary) between large ones (file
chunks), so :func:`streamed` joins them into writes of at least :data:`WRITE_SIZE`
bytes: memory per answer stays bounded by about twice that, whatever the answer's
size, and a 300-instance series costs ~150 hops instead of ~900.

An answer that fits in one piece (one instance, one frame, a short search) is sent
as a plain response with a Content-Length: no chunked encoding and no hop per piece.
A larger one whose length is known beforehand (objects sent as stored) announces it
too, and fills its pieces with :class:`Pieces`, reading objects straight into them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from fastapi.responses import Response, StreamingResponse

WRITE_SIZE = 1024 * 1024

#: What an answer's body yields; a memoryview is sent without a copy.
Piece = bytes | memoryview


def coalesce(pieces: Iterator[Piece], size: int = WRITE_SIZE) -> Iterator[Piece]:
    """The bytes of *pieces*, in pieces of at least *size* bytes (the last may be
    shorter); a piece already that large passes through uncopied."""
    pending: list[Piece] = []
    held = 0
    try:
        for piece in pieces:
            if not piece:
                continue
            if not pending and len(piece) >= size:
                yield piece
                continue
            pending.append(piece)
            held += len(piece)
            if held >= size:
                yield b"".join(pending)
                pending, held = [], 0
        if pending:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # a body's own clean-up (its audit record) runs when the client goes


class Pieces:
    """Fills answer pieces of *size* bytes in place: small bytes are copied in, an
    object is read from its file straight into the piece. Each byte is copied once
    after the kernel's read (by TLS), where joining would copy it twice more.

    Each method yields the pieces it filled, as views of fresh buffers the caller
    may keep; :meth:`rest` yields the last, partly filled one. A buffer is made when
    there is something to put in it.
    """

    def __init__(self, size: int = WRITE_SIZE) -> None:
        self._size = size
        self._view: memoryview | None = None
        self._at = 0

    def _room(self) -> tuple[memoryview, int]:
        """The piece being filled, and how many bytes it still takes."""
        if self._view is None:
            self._view = memoryview(bytearray(self._size))
            self._at = 0
        return self._view, self._size - self._at

    def _filled(self, n: int) -> memoryview | None:
        """Count *n* bytes put in; the piece when that fills it."""
        self._at += n
        if self._at < self._size:
            return None
        full, self._view = self._view, None
        return full

    def add(self, data: bytes) -> Iterator[memoryview]:
        """Copy *data* in."""
        source = memoryview(data)
        done = 0
        while done < len(source):
            view, room = self._room()
            n = min(room, len(source) - done)
            view[self._at : self._at + n] = source[done : done + n]
            done += n
            if (full := self._filled(n)) is not None:
                yield full

    def read(self, f: BinaryIO, length: int) -> Iterator[memoryview]:
        """Read exactly *length* bytes of *f* in; raises EOFError when it ends first."""
        left = length
        while left:
            view, room = self._room()
            n = f.readinto(view[self._at : self._at + min(room, left)])
            if not n:
                raise EOFError(f"object ended {left} bytes before its indexed size")
            left -= n
            if (full := self._filled(n)) is not None:
                yield full

    def rest(self) -> Iterator[memoryview]:
        """The piece being filled, as far as it is."""
        if self._view is not None and self._at:
            yield self._view[: self._at]
        self._view = None


def streamed(
    pieces: Iterator[Piece],
    media_type: str,
    headers: Mapping[str, str] | None = None,
    length: int | None = None,
) -> Response:
    """A response of *pieces*, coalesced (see the module docstring).

    Reads the first piece here, so it must be called where blocking is allowed (a
    synchronous endpoint, which runs in the thread pool). When that piece is the whole
    answer the body generator has run to its end, clean-up included, before the
    response is returned; else the rest streams, chunked unless *length* (the exact
    number of bytes *pieces* holds) is given.
    """
    out = coalesce(pieces)
    first = next(out, b"")
    if len(first) < WRITE_SIZE:  # coalesce yields a short piece only as its last
        for _ in out:  # runs the body's clean-up (its audit record); yields nothing
            pass
        return Response(first, media_type=media_type, headers=headers)
    if length is not None:
        headers = {**(headers or {}), "Content-Length": str(length)}
    return StreamingResponse(itertools.chain((first,), out), media_type=media_type,
                             headers=headers)  # fmt: skip
