"""A streaming ``multipart/related`` reader: parts come out as they arrive, never whole.

Feed it the body in chunks; it yields events: a part's headers, pieces of its body,
its end. It holds at most one chunk plus a delimiter's length in memory, whatever
the size of a part, and refuses headers larger than :data:`MAX_HEADERS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_HEADERS = 16 * 1024
_BOUNDARY = re.compile(r'boundary\s*=\s*("([^"]+)"|[^;,\s]+)', re.IGNORECASE)
_TYPE = re.compile(r'type\s*=\s*("([^"]+)"|[^;,\s]+)', re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not the multipart message its Content-Type announced."""


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type; raises MultipartError."""
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/") or not match:
        raise MultipartError("expected multipart/related with a boundary")
    value = match.group(2) or match.group(1)
    if not 1 <= len(value) <= 70:
        raise MultipartError("invalid multipart boundary")
    return value


def type_of(content_type: str) -> str | None:
    """The ``type`` parameter of a multipart/related Content-Type, lower case."""
    match = _TYPE.search(content_type.split(";", 1)[1] if ";" in content_type else "")
    return (match.group(2) or match.group(1)).lower() if match else None


@dataclass
class Headers:
    values: dict[str, str]


@dataclass
class Data:
    data: bytes


@dataclass
class End:
    pass


Event = Headers | Data | End


class MultipartReader:
    """Parses one multipart body fed in chunks (see the module docstring)."""

    def __init__(self, boundary: str) -> None:
        self._first = b"--" + boundary.encode()
        self._delimiter = b"\r\n--" + boundary.encode()
        self._buf = b""
        self._state = "preamble"  # preamble, headers, body, after, done
        self.parts = 0

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buf += chunk
        while True:
            if self._state == "preamble":
                at = self._buf.find(self._first)
                if at < 0:
                    self._buf = self._buf[-len(self._first) :]
                    return
                self._buf = self._buf[at + len(self._first) :]
                self._state = "after"
            if self._state == "after":
                if len(self._buf) < 2:
                    return
                if self._buf.startswith(b"--"):
                    self._state = "done"
                    return
                line_end = self._buf.find(b"\r\n")
                if line_end < 0:
                    if len(self._buf) > 256:
                        raise MultipartError("garbage after a multipart boundary")
                    return
                if self._buf[:line_end].strip(b" \t"):
                    raise MultipartError("garbage after a multipart boundary")
                self._buf = self._buf[line_end + 2 :]
                self._state = "headers"
            if self._state == "headers":
                # A part may have no headers at all: its body follows at once.
                no_headers = self._buf.startswith(b"\r\n")
                end = -2 if no_headers else self._buf.find(b"\r\n\r\n")
                if end == -1:
                    if len(self._buf) > MAX_HEADERS:
                        raise MultipartError("multipart part headers too large")
                    return
                yield Headers(_parse_headers(self._buf[: max(end, 0)]))
                self._buf = self._buf[end + 4 :]
                self.parts += 1
                self._state = "body"
            if self._state == "body":
                at = self._buf.find(self._delimiter)
                if at < 0:
                    keep = len(self._delimiter) - 1
                    if len(self._buf) > keep:
                        yield Data(self._buf[:-keep])
                        self._buf = self._buf[-keep:]
                    return
                if at:
                    yield Data(self._buf[:at])
                yield End()
                self._buf = self._buf[at + len(self._delimiter) :]
                self._state = "after"
            if self._state == "done":
                return

    def finish(self) -> None:
        """Raise MultipartError unless the closing delimiter was seen."""
        if self._state != "done":
            raise MultipartError("the multipart body ends before its closing boundary")


def _parse_headers(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError("malformed multipart part header")
        out[name.strip().lower()] = value.strip()
    return out
