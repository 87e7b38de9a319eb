"""Streamed answers are written in large pieces and still end their body's clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from fastapi.responses import StreamingResponse

from pacsvault.web.streams import WRITE_SIZE, coalesce, streamed


def iterate(body: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The pieces of a response's asynchronous body, as the server would take them."""

    async def take() -> list[bytes]:
        return [piece async for piece in body]

    return iter(asyncio.run(take()))


def test_small_pieces_are_joined_and_large_ones_pass_through() -> None:
    big = b"x" * 100
    out = list(coalesce(iter([b"ab", b"", b"cd", big, b"e" * 7, b"f"]), size=8))
    assert b"".join(out) == b"abcd" + big + b"e" * 7 + b"f"
    assert out[0] == b"abcd" + big  # joined until the size is reached
    assert out[1] == b"e" * 7 + b"f"
    assert next(coalesce(iter([big]), size=8)) is big  # not copied


def test_a_client_that_goes_away_still_ends_the_body() -> None:
    ended: list[str] = []

    def body():
        try:
            yield b"a" * 10
            yield b"b" * 10
        finally:
            ended.append("audited")

    out = coalesce(body(), size=8)
    assert next(out) == b"a" * 10
    out.close()  # what the server does when the client disconnects
    assert ended == ["audited"]


def _body(ended: list[str], *pieces: bytes):
    try:
        yield from pieces
    finally:
        ended.append("audited")


def test_an_answer_in_one_piece_is_sent_whole_with_its_length() -> None:
    ended: list[str] = []
    response = streamed(_body(ended, b"head", b"x" * 1000, b"--end--"), "multipart/related")
    assert not isinstance(response, StreamingResponse)
    assert response.body == b"head" + b"x" * 1000 + b"--end--"
    assert response.headers["content-length"] == "1011"
    assert ended == ["audited"]  # the body ran to its end before the answer left


def test_a_larger_answer_streams_and_ends_its_body_once_sent() -> None:
    ended: list[str] = []
    big = b"y" * WRITE_SIZE
    response = streamed(_body(ended, b"head", big, b"tail"), "multipart/related")
    assert isinstance(response, StreamingResponse)
    assert ended == []  # nothing past the first piece was read yet
    sent = b"".join(iterate(response.body_iterator))
    assert sent == b"head" + big + b"tail"
    assert ended == ["audited"]
