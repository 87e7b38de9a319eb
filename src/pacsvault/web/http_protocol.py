"""The HTTP/1.1 protocol of the web listeners: uvicorn's httptools one, its heads bounded.

httptools (llhttp, in C) parses a request line and headers several times faster than
h11 (h11 was ~0.5 ms of the event loop's time per request), but neither it nor uvicorn
bounds them: a header that never ends would grow in memory. :class:`BoundedHttpProtocol`
counts the bytes received while a request's head is being read and, past the limit,
answers 431 and closes the connection without parsing further.

The count starts with the connection and again with each request; the bytes of the read
in which a request begins are not counted, so a head is bounded by the limit plus one
read (uvloop reads at most 256 KiB). The application's own check (``web.middleware``)
still answers 431 for a complete head over the limit.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("pacsvault.web")


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over :attr:`max_head` bytes."""

    max_head = 16384  # a subclass per server sets its own (see :func:`bounded_protocol`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for (or reading) a request's line and headers
        self._head_room = self.max_head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_room = self.max_head

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if not self._in_head or len(data) <= self._head_room:
            if self._in_head:
                self._head_room -= len(data)
            super().data_received(data)
            return
        head, rest = data[: self._head_room], data[self._head_room :]
        self._head_room = 0
        super().data_received(head)
        if self.transport.is_closing():
            return  # the parser refused it already
        if self._in_head:
            self._refuse()
            return
        super().data_received(rest)

    def _refuse(self) -> None:
        log.warning("request head over %d bytes refused", self.max_head)
        reason = f"request headers larger than {self.max_head} bytes"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            + f"content-length: {len(reason)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + reason.encode()
        )
        self.transport.close()


def bounded_protocol(max_head: int) -> type[BoundedHttpProtocol]:
    """The protocol class for a server whose request heads are bounded by *max_head*."""
    return type("BoundedHttpProtocol", (BoundedHttpProtocol,), {"max_head": max_head})
