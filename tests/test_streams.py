"""Streamed answers are written in large pieces and still end their body's clean-up."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from conftest import dataset_bytes, write_data_set
from pacsvault.dicom.part10 import split_part10
from pacsvault.dicom.synthetic import Spec
from pacsvault.importer import import_paths
from pacsvault.site import Site, init_site
from pacsvault.web.dicomweb import wado
from pacsvault.web.streams import WRITE_SIZE, Pieces, coalesce, streamed


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


def test_pieces_are_filled_in_place_and_an_object_read_whole() -> None:
    out = Pieces(size=8)
    got = [bytes(p) for p in out.add(b"abc")]
    got += [bytes(p) for p in out.read(io.BytesIO(b"0123456789xyz"), 10)]
    kept = list(out.rest())
    assert got == [b"abc01234"] and [bytes(p) for p in kept] == [b"56789"]
    assert bytes(kept[0]) == b"56789"  # a piece handed out is never written again
    with pytest.raises(EOFError):
        list(out.read(io.BytesIO(b"short"), 6))


# -- WADO-RS instances as stored: the answer's length is announced -------------------------


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, list]]:
    """A site holding one series of three 512 KiB instances (more than one piece)."""
    tmp = tmp_path_factory.mktemp("parts")
    shape = Spec(patients=1, studies_per_patient=1, series_per_study=1, instances_per_series=3,
                 rows=512, columns=512)  # fmt: skip
    files = write_data_set(tmp / "f", shape)
    with init_site(tmp / "d", "PACSVAULT") as site:
        assert import_paths(site.archive, site.operator(), [p for p, _ in files]).stored == 3
        yield site, files


def _series_parts(site: Site, files: list) -> Response:
    ds = files[0][1]
    who = site.operator()
    level, conds = wado.conditions_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, None)
    return wado.instance_parts(site.archive, who, wado.locate(site.archive, who, level, conds), "*")


def _ended(site: Site) -> str:
    """The detail of the last retrieve's end record (queued: the writer is waited for)."""
    site.writer.submit(lambda _conn: None)
    details = [r["detail"] or "" for r in site.audit.records_after(0, 10_000)]
    return [d for d in details if d.startswith("ended")][-1]


def test_a_series_announces_its_length_and_sends_the_objects_as_stored(ct_series) -> None:
    site, files = ct_series
    response = _series_parts(site, files)
    assert isinstance(response, StreamingResponse)
    body = b"".join(iterate(response.body_iterator))
    assert int(response.headers["content-length"]) == len(body) > WRITE_SIZE
    assert "transfer-encoding" not in response.headers
    boundary = response.media_type.split("boundary=")[1].encode()
    parts = body.split(b"--" + boundary)[1:-1]
    objects = [p.split(b"\r\n\r\n", 1)[1][:-2] for p in parts]
    datasets = sorted(obj[split_part10(obj)[1] :] for obj in objects)
    assert datasets == sorted(dataset_bytes(Path(p)) for p, _ in files)  # as received
    assert _ended(site).startswith("ended: completed 3, failed 0")


def test_an_object_lost_from_the_store_cuts_the_answer_short(ct_series) -> None:
    site, files = ct_series
    ds = files[0][1]
    who = site.operator()
    level, conds = wado.conditions_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, None)
    instances = wado.locate(site.archive, who, level, conds)
    first, last = (next(site.data_dir.rglob(f"{i.sop_instance_uid}.dcm"))
                   for i in (instances[0], instances[-1]))  # fmt: skip
    aside = first.with_suffix(".aside")
    last.rename(aside)
    try:
        response = wado.instance_parts(site.archive, who, instances, "*")
        with pytest.raises(wado.PartUnreadable):  # the server then closes the connection
            b"".join(iterate(response.body_iterator))
        assert _ended(site).startswith("ended: completed 2, failed 1")
        aside.rename(last)
        first.rename(aside)
        with pytest.raises(HTTPException) as refused:  # nothing sent yet: a clear 500
            wado.instance_parts(site.archive, who, instances, "*")
        assert refused.value.status_code == 500
        assert "cannot be read" in refused.value.detail
        assert _ended(site).startswith("ended: completed 0, failed 1")
    finally:
        if aside.exists():
            aside.rename(last if not last.exists() else first)

