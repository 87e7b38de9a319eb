"""Streamed answers are written in large pieces and still end their body's clean-up."""

from __future__ import annotations

from pacsvault.web.streams import coalesce


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
