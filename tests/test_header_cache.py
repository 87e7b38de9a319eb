"""Parsed headers are kept for the objects read last: parsed once, walked once,
bounded, and never confused between two objects."""

from __future__ import annotations

from collections.abc import Callable

import pydicom
from pydicom.data import get_testdata_file

from pacsvault.dicom.pixels import DatasetReader, encapsulated_frames, read_header
from pacsvault.web.dicomweb.headers import HeaderCache, Parsed

RLE_TWO_FRAMES = str(get_testdata_file("SC_rgb_rle_2frame.dcm"))
NATIVE = str(get_testdata_file("CT_small.dcm"))


def opener(path: str, opened: list[str]) -> Callable[[], DatasetReader]:
    """A reader factory for *path* that notes each time the object is opened."""
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)

    def reader() -> DatasetReader:
        opened.append(path)
        return DatasetReader(lambda: open(path, "rb"), syntax, 1 << 30)

    return reader


def parser(reader: Callable[[], DatasetReader]) -> Callable[[], Parsed]:
    def parse() -> Parsed:
        with reader() as r:
            return Parsed(read_header(r))

    return parse


def test_a_multi_frame_object_is_parsed_and_its_fragments_walked_once() -> None:
    opened: list[str] = []
    reader = opener(RLE_TWO_FRAMES, opened)
    cache = HeaderCache()
    first = cache.get(("blob", "digest"), parser(reader))
    assert [f.number for f in first.frames(reader, [2])] == [2]
    again = cache.get(("blob", "digest"), parser(reader))
    assert again is first
    frames = again.frames(reader, [1, 2])
    assert len(opened) == 2  # one parse, one walk of the fragments, for three frames
    with reader() as r:  # what the object itself says
        assert frames == encapsulated_frames(r, read_header(r), 2)


def test_another_digest_is_another_object() -> None:
    opened: list[str] = []
    cache = HeaderCache()
    native = cache.get(("blob", "one"), parser(opener(NATIVE, opened)))
    rle = cache.get(("blob", "two"), parser(opener(RLE_TWO_FRAMES, opened)))
    assert native is not rle and rle.image.frames == 2 and not native.header.encapsulated
    assert len(opened) == 2 and len(cache) == 2


def test_the_least_recently_used_are_dropped_past_the_budget() -> None:
    opened: list[str] = []
    parse = parser(opener(NATIVE, opened))
    cost = parse().cost
    cache = HeaderCache(budget=cost * 8 + cost // 2)  # eight fit
    for n in range(8):
        cache.get((f"b{n}", "d"), parse)
    cache.get(("b0", "d"), parse)  # used again: now the most recent
    cache.get(("b8", "d"), parse)  # a ninth: the least recently used goes
    assert len(cache) == 8
    before = len(opened)
    cache.get(("b0", "d"), parse)
    assert len(opened) == before  # still held
    cache.get(("b1", "d"), parse)
    assert len(opened) == before + 1  # dropped, parsed again
    small = HeaderCache(budget=cost * 4)  # one header over an eighth of it is not kept
    small.get(("big", "d"), parse)
    assert len(small) == 0
