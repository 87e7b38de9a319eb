"""The parsed headers, and frame tables, of the stored objects read last.

A viewer asks for the frames of a multi-frame object one request at a time. Each
request would parse the object's header again and, for encapsulated pixel data, walk
every fragment (reading each one's tail when only end markers tell frames apart):
O(frames) per request, O(frames²) for the object. :class:`HeaderCache` keeps what was
parsed for the objects read last, keyed by blob key and digest (the bytes under both
never change), within a budget of estimated memory.

Only *where* things are is kept: each request is still located, scoped and audited
before it is served, and every value or frame is read from the store again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from pacsvault.dicom.pixels import (
    DatasetReader,
    Frame,
    Header,
    ImagePixel,
    PixelError,
    encapsulated_frames,
    native_frame,
)

#: Memory per header byte parsed into a pydicom Dataset (measured: 13-14), rounded up.
_BYTES_PER_HEADER_BYTE = 16
_BYTES_PER_FRAME = 128
_ENTRY_BYTES = 2048


@dataclass
class Parsed:
    """One object's header and, once asked for, its image description and where its
    encapsulated frames are.

    The header's dataset is shared by every request for the object: read it, never
    change it (no :func:`~pacsvault.dicom.pixels.load_deferred` on it).
    """

    header: Header
    _table: list[Frame] | None = field(default=None, repr=False)

    @cached_property
    def image(self) -> ImagePixel:
        """The image description; raises PixelError when it is invalid."""
        return ImagePixel.of(self.header.dataset)

    @cached_property
    def cost(self) -> int:
        """Estimated bytes held, the frame table included."""
        pixels = self.header.pixel_data
        if pixels is None:
            return _ENTRY_BYTES + _BYTES_PER_HEADER_BYTE * 64 * 1024  # its length unknown
        try:
            frames = self.image.frames
        except PixelError:
            frames = 0
        return _ENTRY_BYTES + _BYTES_PER_HEADER_BYTE * pixels.position + _BYTES_PER_FRAME * frames

    def frames(self, reader: Callable[[], DatasetReader], numbers: list[int]) -> list[Frame]:
        """Where the frames *numbers* of its pixel data are (in that order; each between
        1 and the number of frames); *reader* opens the object, to walk encapsulated
        fragments once."""
        pixels = self.header.pixel_data
        assert pixels is not None
        if not self.header.encapsulated:
            return [native_frame(self.image, pixels, n) for n in numbers]
        if self._table is None:
            with reader() as opened:
                self._table = encapsulated_frames(opened, self.header, self.image.frames)
        return [self._table[n - 1] for n in numbers]


class HeaderCache:
    """:class:`Parsed` objects by (blob key, digest), the least recently used dropped
    past *budget* estimated bytes. Safe to share between threads."""

    def __init__(self, budget: int = 16 * 1024 * 1024) -> None:
        self._budget = budget
        self._held = 0
        self._entries: OrderedDict[tuple[str, str], Parsed] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], parse: Callable[[], Parsed]) -> Parsed:
        """The object's parsed header, from *parse* unless held (not locked meanwhile:
        two first reads may both parse; the result is the same)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        parsed = parse()
        cost = parsed.cost
        if cost > self._budget // 8:  # an unusually large header is not kept
            return parsed
        with self._lock:
            if key not in self._entries:
                self._entries[key] = parsed
                self._held += cost
            while self._held > self._budget:
                _key, dropped = self._entries.popitem(last=False)
                self._held -= dropped.cost
        return parsed

    def __len__(self) -> int:
        return len(self._entries)
