"""Pixel data of a stored object: where its frames are, and one frame rendered as an image.

Frames are found by reading element headers only. The dataset is read up to the
pixel data (values over 64 KiB skipped, as for indexing); native pixel data is then
addressed arithmetically (frame *n* starts ``(n - 1) * frame size`` into the value);
encapsulated pixel data is walked item by item, with seeks, to learn where each
fragment is, and fragments are grouped into frames by the Basic Offset Table, else
one fragment per frame when there are as many as frames, else by the codec's end
of image marker (PS3.5 A.4). No frame is read but the ones asked for, and a frame
is read in chunks. Rendering holds one decoded frame.

A deflated dataset is inflated as a stream: forward reads only, reopened from the
start when a read goes backwards (:class:`DatasetReader`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsvault.dicom import codecs
from pacsvault.dicom.part10 import inflating, meta_length, read_index_dataset

codecs.register()  # permissive JPEG decoders for pydicom (once, whoever imports first)

PIXEL_DATA = 0x7FE00010
CHUNK = 1024 * 1024
#: The most samples (rows x columns x samples per pixel) a frame may have to be rendered.
MAX_RENDER_SAMPLES = 1 << 27
#: The largest rendered image side, in pixels.
MAX_VIEWPORT = 8192

_ITEM, _SEQ_END = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Bytes per value of the binary VRs, for swapping big endian values to little endian.
_VR_WIDTH = {"OW": 2, "US": 2, "SS": 2, "AT": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4,
             "OD": 8, "OV": 8, "FD": 8, "SV": 8, "UV": 8}  # fmt: skip
_EOI = b"\xff\xd9"


class PixelError(ValueError):
    """The pixel data cannot be located, read or rendered (the message says why)."""


class Unsupported(PixelError):
    """The pixel data may be fine, but this cannot decode or render it (no decoder, a
    photometric interpretation it does not show, a frame too large)."""


# -- reading a stored dataset ---------------------------------------------------------------


class DatasetReader:
    """Seekable reads of the dataset of a stored Part-10 object, opened by *opener*.

    Positions are those pydicom reports while reading the dataset (file offsets for a
    plain object, offsets into the inflated stream for a deflated one). A deflated
    object is inflated forwards under *limit* bytes and reopened for a backward seek.
    Use as a context manager; it closes what it opened.
    """

    def __init__(self, opener: Callable[[], BinaryIO], transfer_syntax: str, limit: int) -> None:
        self._opener = opener
        self.transfer_syntax = UID(transfer_syntax)
        self._limit = limit
        self._file: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self.start = 0

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the stored object (safe to call twice)."""
        if self._file is not None:
            self._file.close()
        self._file = self._stream = None

    def _reopen(self) -> BinaryIO:
        self.close()
        f = self._opener()
        self._file = f
        offset = meta_length(f.read(144))
        f.seek(offset)
        if self.transfer_syntax.is_deflated:
            self._stream, self.start = inflating(f, self._limit), 0
        else:
            self._stream, self.start = f, offset
        return self._stream

    def seek(self, position: int | None = None) -> BinaryIO:
        """The stream, positioned at *position* (None: the dataset's first byte)."""
        stream = self._stream
        if stream is None:
            stream = self._reopen()
        target = self.start if position is None else position
        if self.transfer_syntax.is_deflated and stream.tell() > target:
            stream = self._reopen()
        stream.seek(target)
        return stream

    def read(self, position: int, length: int) -> bytes:
        """*length* bytes from *position*; raises PixelError when the object is shorter."""
        data = self.seek(position).read(length)
        if len(data) != length:
            raise PixelError("the stored object is shorter than its elements say")
        return data

    def chunks(self, position: int, length: int, size: int = CHUNK) -> Iterator[bytes]:
        """*length* bytes from *position*, in chunks of at most *size* bytes."""
        stream = self.seek(position)
        left = length
        while left > 0:
            data = stream.read(min(size, left))
            if not data:
                raise PixelError("the stored object is shorter than its elements say")
            left -= len(data)
            yield data


@dataclass(frozen=True)
class Element:
    """Where a top-level element's value is: its position, length (None: undefined), VR,
    and whether the header left the value unread (over 64 KiB)."""

    tag: int
    vr: str
    position: int
    length: int | None
    deferred: bool = False


@dataclass(frozen=True)
class Header:
    """The elements before the pixel data (values over 64 KiB not read) and where the
    pixel data is (None: the object has none)."""

    dataset: Dataset
    pixel_data: Element | None
    transfer_syntax: UID

    @property
    def big_endian(self) -> bool:
        return not self.transfer_syntax.is_little_endian

    @property
    def encapsulated(self) -> bool:
        """Whether the pixel data is encapsulated (compressed frames in items)."""
        return self.pixel_data is not None and self.pixel_data.length is None


def read_header(reader: DatasetReader) -> Header:
    """The header of the object *reader* reads. Raises NotDicom for an unreadable one."""
    stream = reader.seek()
    ds = read_index_dataset(stream, str(reader.transfer_syntax))
    return Header(ds, _pixel_element(stream, reader.transfer_syntax), reader.transfer_syntax)


def _pixel_element(fp: BinaryIO, ts: UID) -> Element | None:
    """The pixel data element at *fp*'s position, if that is where it is."""
    position = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    endian = "<" if ts.is_little_endian else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16) | elem != PIXEL_DATA:
        return None
    vr = head[4:6].decode("latin-1")
    if vr in ("OB", "OW", "UN") and head[6:8] == b"\0\0" and len(head) == 12:
        length, start = struct.unpack(endian + "L", head[8:12])[0], position + 12
    else:  # implicit VR, whatever the transfer syntax says (as pydicom reads it)
        vr = "OW"
        length, start = struct.unpack(endian + "L", head[4:8])[0], position + 8
    return Element(PIXEL_DATA, vr, start, None if length == _UNDEFINED else length)


def top_level_element(header: Header, tag: int) -> Element | None:
    """Where the value of the top-level element *tag* is, for one before the pixel data
    (or the pixel data itself); None when the object has no such element or it is a
    sequence."""
    if tag == PIXEL_DATA:
        return header.pixel_data
    raw = header.dataset.get_item(tag, keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED:
        return None
    vr = raw.VR or _dictionary_vr(tag)
    if vr == "SQ":
        return None
    return Element(tag, vr, raw.value_tell, raw.length, raw.value is None)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" ")[0]
    except KeyError:
        return "UN"


def value_chunks(reader: DatasetReader, header: Header, element: Element) -> Iterator[bytes]:
    """The value of a defined-length element, in little endian byte order, in chunks."""
    assert element.length is not None
    width = _VR_WIDTH.get(element.vr, 1) if header.big_endian else 1
    if element.tag == PIXEL_DATA and header.big_endian:
        width = _pixel_width(header.dataset)
    for chunk in reader.chunks(element.position, element.length, CHUNK - CHUNK % 8):
        yield swap_bytes(chunk, width)


def swap_bytes(data: bytes, width: int) -> bytes:
    """*data* with each *width*-byte word reversed (width 1: unchanged)."""
    if width <= 1 or len(data) % width:
        return data
    return np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def _pixel_width(ds: Dataset) -> int:
    """Bytes per pixel sample of native pixel data (what a big endian value swaps by)."""
    bits = _int(ds, "BitsAllocated", 8)
    return bits // 8 if bits in (16, 32, 64) else 1


# -- the image -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePixel:
    """The Image Pixel module values that say how frames are laid out."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    frames: int

    @classmethod
    def of(cls, ds: Dataset) -> ImagePixel:
        """The values of *ds*; raises PixelError when one is missing or impossible."""
        try:
            out = cls(
                rows=_int(ds, "Rows", 0),
                columns=_int(ds, "Columns", 0),
                samples=_int(ds, "SamplesPerPixel", 1),
                bits_allocated=_int(ds, "BitsAllocated", 0),
                bits_stored=_int(ds, "BitsStored", 0) or _int(ds, "BitsAllocated", 0),
                pixel_representation=_int(ds, "PixelRepresentation", 0),
                photometric=str(ds.get("PhotometricInterpretation", "") or "").strip(),
                planar_configuration=_int(ds, "PlanarConfiguration", 0),
                frames=_int(ds, "NumberOfFrames", 1) or 1,
            )
        except (TypeError, ValueError):
            raise PixelError("the image pixel description is unreadable") from None
        if min(out.rows, out.columns, out.samples) < 1 or out.bits_allocated not in (
            1, 8, 16, 32, 64
        ):  # fmt: skip
            raise PixelError("the image pixel description is incomplete or invalid")
        if out.frames < 1:
            raise PixelError("the number of frames is invalid")
        return out

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame (YBR_FULL_422 holds two samples per pixel)."""
        bits = self.rows * self.columns * self.samples * self.bits_allocated
        return bits * 2 // 3 if self.photometric == "YBR_FULL_422" else bits

    def decode_options(self) -> dict[str, int | str]:
        """The keyword options pydicom's decoders need for one frame of this image."""
        options: dict[str, int | str] = {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
        }
        if self.samples > 1:
            options["planar_configuration"] = self.planar_configuration
        return options


def _int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer element's (first) value; *default* when absent or empty."""
    value = ds.get(keyword)
    if _is_multi(value):
        value = value[0] if len(value) else None  # type: ignore[arg-type,index]
    if value is None or value == "":
        return default
    return int(value)


# -- locating frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """*length* bytes at *position* of the dataset stream."""

    position: int
    length: int


@dataclass(frozen=True)
class Frame:
    """Where one frame is: its spans (fragments, or one native span) and, for a native
    1-bit frame that does not start on a byte, the bit it starts at in the first byte."""

    number: int
    spans: tuple[Span, ...]
    bit_offset: int = 0
    bits: int = 0


def native_frame(image: ImagePixel, element: Element, number: int) -> Frame:
    """Where frame *number* (1-based) of native pixel data is.

    Raises PixelError when the value is shorter than the frames it should hold.
    """
    assert element.length is not None
    bits = image.frame_bits
    first_bit = (number - 1) * bits
    start, end = first_bit // 8, -(-(first_bit + bits) // 8)
    if end > element.length:
        raise PixelError(f"the pixel data is shorter than frame {number} needs")
    shift = first_bit % 8 if bits % 8 else 0
    return Frame(number, (Span(element.position + start, end - start),), shift, bits)


def read_frame(reader: DatasetReader, header: Header, frame: Frame) -> Iterator[bytes]:
    """The bytes of *frame* as the pixel data holds them, in chunks.

    Native frames come in little endian byte order, and a 1-bit frame realigned to
    start on a byte; encapsulated frames are their fragments' bytes, concatenated.
    """
    if frame.bits and frame.bits % 8:
        data = b"".join(reader.chunks(frame.spans[0].position, frame.spans[0].length))
        yield realign_bits(data, frame.bit_offset, frame.bits)
        return
    width = 1
    if header.big_endian and not header.encapsulated:
        width = _pixel_width(header.dataset)
    for span in frame.spans:
        for chunk in reader.chunks(span.position, span.length, CHUNK - CHUNK % 8):
            yield swap_bytes(chunk, width)


def realign_bits(data: bytes, offset: int, bits: int) -> bytes:
    """*bits* bits of packed 1-bit pixels starting at bit *offset* of *data* (the least
    significant bit first, as DICOM packs them), packed again from bit 0."""
    unpacked = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return np.packbits(unpacked[offset : offset + bits], bitorder="little").tobytes()


@dataclass(frozen=True)
class _Fragments:
    """The Basic Offset Table and the fragments of encapsulated pixel data."""

    offsets: list[int]
    spans: list[Span]
    first_item: int  # position of the first fragment's item tag


def encapsulated_frames(reader: DatasetReader, header: Header, frames: int) -> list[Frame]:
    """Where each frame of encapsulated pixel data is, by PS3.5 A.4's rules.

    Reads the item headers (and, when frames must be told apart by their end of
    image marker, the last bytes of each fragment); raises PixelError when the
    fragments cannot be grouped into *frames* frames.
    """
    assert header.pixel_data is not None
    walked = _walk_fragments(reader, header)
    spans = walked.spans
    if not spans:
        raise PixelError("the encapsulated pixel data has no fragments")
    groups = _by_offset_table(walked, frames)
    if groups is None:
        if len(spans) == frames:
            groups = [[s] for s in spans]
        elif frames == 1:
            groups = [spans]
        elif len(spans) > frames:
            groups = _by_end_marker(reader, spans)
        else:
            raise PixelError("the pixel data has fewer fragments than frames")
    if len(groups) != frames:
        raise PixelError(f"found {len(groups)} frames in the pixel data, expected {frames}")
    return [Frame(n, tuple(g)) for n, g in enumerate(groups, start=1)]


def _walk_fragments(reader: DatasetReader, header: Header) -> _Fragments:
    """The offset table and fragment positions of encapsulated pixel data (values unread)."""
    assert header.pixel_data is not None
    endian = "<" if header.transfer_syntax.is_little_endian else ">"
    item = struct.Struct(endian + "HHL")
    position = header.pixel_data.position
    offsets: list[int] = []
    spans: list[Span] = []
    first_item = -1
    stream = reader.seek(position)
    while True:
        head = stream.read(8)
        if len(head) != 8:
            raise PixelError("the encapsulated pixel data is truncated")
        group, elem, length = item.unpack(head)
        tag = (group << 16) | elem
        if tag == _SEQ_END:
            break
        if tag != _ITEM or length == _UNDEFINED:
            raise PixelError("the encapsulated pixel data is malformed")
        if position == header.pixel_data.position:  # the Basic Offset Table
            table = stream.read(length)
            if len(table) != length or length % 4:
                raise PixelError("the basic offset table is malformed")
            offsets = list(struct.unpack(f"{endian}{length // 4}L", table))
        else:
            if first_item < 0:
                first_item = position
            spans.append(Span(position + 8, length))
            stream.seek(position + 8 + length)
        position += 8 + length
    return _Fragments(offsets, spans, first_item)


def _by_offset_table(walked: _Fragments, frames: int) -> list[list[Span]] | None:
    """Fragments grouped by the Basic Offset Table; None when it is empty or does not
    match the fragments (then the other rules apply)."""
    if len(walked.offsets) != frames or walked.offsets[0] != 0:
        return None
    starts = {s.position - 8 - walked.first_item: i for i, s in enumerate(walked.spans)}
    indexes = [starts.get(offset) for offset in walked.offsets]
    if any(i is None for i in indexes) or indexes != sorted(set(indexes)):  # type: ignore[type-var]
        return None
    bounds = [*indexes, len(walked.spans)]
    return [walked.spans[bounds[i] : bounds[i + 1]] for i in range(frames)]  # type: ignore[misc]


def _by_end_marker(reader: DatasetReader, spans: list[Span]) -> list[list[Span]]:
    """Fragments grouped into frames, each ending with a fragment that holds the JPEG
    end of image marker (FFD9, also JPEG 2000's end of codestream) in its last bytes."""
    groups: list[list[Span]] = []
    current: list[Span] = []
    for span in spans:
        current.append(span)
        tail = min(span.length, 10)
        if _EOI in reader.read(span.position + span.length - tail, tail):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def locate_frames(reader: DatasetReader, header: Header) -> tuple[ImagePixel, list[Frame] | None]:
    """The image description and, for encapsulated pixel data, every frame's place
    (None for native data, whose frames :func:`native_frame` computes)."""
    if header.pixel_data is None:
        raise PixelError("the object has no pixel data")
    image = ImagePixel.of(header.dataset)
    if not header.encapsulated:
        return image, None
    return image, encapsulated_frames(reader, header, image.frames)


# -- decoding and rendering --------------------------------------------------------------------


def decoder_available(transfer_syntax: str) -> bool:
    """Whether a frame in *transfer_syntax* can be decoded here."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def decode_frame(
    image: ImagePixel, transfer_syntax: str, frame: bytes, *, encapsulated: bool
) -> tuple[np.ndarray, str]:
    """One frame decoded to an array (rows, columns[, samples]) and its photometric
    interpretation after decoding (YBR is converted to RGB).

    *frame* is what :func:`read_frame` gives: native frames are little endian whatever
    the stored syntax. Raises PixelError when there is no decoder or it fails.
    """
    if image.rows * image.columns * image.samples > MAX_RENDER_SAMPLES:
        raise Unsupported("the frame is too large to decode here")
    syntax = UID(transfer_syntax) if encapsulated else ExplicitVRLittleEndian
    try:
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            raise Unsupported(f"no decoder here for {syntax.name or syntax}")
        src = encapsulate([frame]) if encapsulated else frame
        arr, meta = decoder.as_array(src, index=0, **image.decode_options())  # type: ignore[arg-type]
    except PixelError:
        raise
    except Exception as exc:
        raise PixelError(f"the frame could not be decoded ({type(exc).__name__})") from None
    return arr, str(meta.get("photometric_interpretation", image.photometric))


def little_endian_bytes(arr: np.ndarray) -> bytes:
    """A decoded frame as native (uncompressed, little endian, interleaved) pixel data."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center and width in modality values."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID

    def __post_init__(self) -> None:
        if self.function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise ValueError("the window function must be linear, linear-exact or sigmoid")
        if self.width <= 0 or (self.function == "LINEAR" and self.width < 1):
            raise ValueError("the window width must be at least 1 (above 0 when not linear)")


@dataclass(frozen=True)
class Crop:
    """A region of the frame: left, top, width, height, in pixels or (when *relative*)
    as fractions of the frame's columns and rows."""

    left: float
    top: float
    width: float
    height: float
    relative: bool = False

    def box(self, columns: int, rows: int) -> tuple[int, int, int, int]:
        """(left, upper, right, lower) in pixels, within the frame; ValueError if empty."""
        sx, sy = (columns, rows) if self.relative else (1, 1)
        left, top = round(self.left * sx), round(self.top * sy)
        right, lower = round((self.left + self.width) * sx), round((self.top + self.height) * sy)
        left, right = max(0, left), min(columns, right)
        top, lower = max(0, top), min(rows, lower)
        if right <= left or lower <= top:
            raise ValueError("the region lies outside the image")
        return left, top, right, lower


@dataclass(frozen=True)
class Rendering:
    """How to render a frame: a window (else the object's, else its value range), a
    region, and the largest width and height to scale to (keeping the aspect)."""

    window: Window | None = None
    crop: Crop | None = None
    max_width: int | None = None
    max_height: int | None = None


def render(arr: np.ndarray, photometric: str, ds: Dataset, how: Rendering) -> Image.Image:
    """A decoded frame as an 8-bit greyscale or RGB image.

    Greyscale: Modality LUT (rescale slope and intercept, or the Modality LUT
    Sequence), then the VOI window (*how*'s, else the object's first, else its VOI
    LUT Sequence, else the frame's range), MONOCHROME1 inverted. Colour: RGB as is
    (scaled to 8 bits), PALETTE COLOR through its lookup tables. Then cropped and
    scaled to fit. Raises Unsupported for a photometric interpretation it cannot
    show, PixelError when the object's values cannot be applied.
    """
    try:
        img = _image(arr, photometric, ds, how.window)
    except PixelError:
        raise
    except Exception as exc:
        raise PixelError(f"the frame could not be rendered ({type(exc).__name__})") from None
    return _fit(img, how)


def _image(arr: np.ndarray, photometric: str, ds: Dataset, window: Window | None) -> Image.Image:
    """The decoded frame as a PIL image, before cropping and scaling."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _grey(arr, ds, window)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        return Image.fromarray(grey, mode="L")
    if photometric == "PALETTE COLOR":
        return Image.fromarray(_palette(arr, ds), mode="RGB")
    if photometric == "RGB" or photometric.startswith("YBR_"):
        return Image.fromarray(_to_8bit(arr, ds), mode="RGB")
    raise Unsupported(f"cannot render photometric interpretation {photometric[:16]}")


def _grey(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """Greyscale values through the modality LUT and a VOI window, as uint8."""
    if arr.ndim == 3:  # a greyscale image should not have samples; show the first
        arr = arr[..., 0]
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float32)
    else:
        slope = _float(ds, "RescaleSlope", 1.0)
        intercept = _float(ds, "RescaleIntercept", 0.0)
        values = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    window = window or _stored_window(ds)
    if window is not None:
        return _apply_window(values, window)
    if "VOILUTSequence" in ds:
        return _stretch(apply_voi_lut(values, ds).astype(np.float32))
    return _stretch(values)


def _stored_window(ds: Dataset) -> Window | None:
    """The object's first window, if it has a usable one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    try:
        first = [float(v[0] if _is_multi(v) else v) for v in (center, width)]
        return Window(first[0], first[1], function)
    except (TypeError, ValueError, IndexError):
        return None


def _is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _apply_window(values: np.ndarray, w: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (linear, linear exact) and C.11.2.1.3.1 (sigmoid), to 0..255."""
    if w.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - w.center) / w.width))
    elif w.function == "LINEAR_EXACT":
        out = ((values - w.center) / w.width + 0.5) * 255.0
    else:
        out = ((values - (w.center - 0.5)) / max(w.width - 1.0, 1e-6) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """The frame's own value range mapped onto 0..255 (a flat frame is black)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR indexes through the object's lookup tables, as 8-bit RGB."""
    try:
        rgb = apply_color_lut(arr, ds)
    except Exception as exc:
        raise PixelError(f"the palette cannot be applied ({type(exc).__name__})") from None
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    return np.ascontiguousarray(rgb[..., :3])


def _to_8bit(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour samples scaled to 8 bits by their bits stored."""
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    bits = _int(ds, "BitsStored", 8) or 8
    shift = max(bits - 8, 0)
    return np.ascontiguousarray((arr.astype(np.uint64) >> shift).clip(0, 255).astype(np.uint8))


def _fit(img: Image.Image, how: Rendering) -> Image.Image:
    """*img* cropped to the region and scaled to fit the largest width and height."""
    if how.crop is not None:
        try:
            img = img.crop(how.crop.box(img.width, img.height))
        except ValueError as exc:
            raise PixelError(str(exc)) from None
    if how.max_width is None and how.max_height is None:
        return img
    scale = min(
        (how.max_width or MAX_VIEWPORT) / img.width, (how.max_height or MAX_VIEWPORT) / img.height
    )
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS)


def encode_image(img: Image.Image, media_type: str, quality: int | None) -> bytes:
    """*img* as ``image/jpeg`` (at *quality*, default 90) or ``image/png``."""
    out = io.BytesIO()
    if media_type == "image/png":
        img.save(out, format="PNG")
    else:
        img.save(out, format="JPEG", quality=quality or 90)
    return out.getvalue()


def _float(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return float(value[0] if _is_multi(value) else value)
    except (TypeError, ValueError, IndexError):
        return default


# -- deferred values ------------------------------------------------------------------------


#: The elements rendering reads, which a header may have left unread (over 64 KiB).
RENDER_KEYWORDS = (
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "ModalityLUTSequence",
    "VOILUTSequence",
)


def load_deferred(reader: DatasetReader, header: Header, keywords: tuple[str, ...]) -> None:
    """Read the values of the *keywords* elements the header skipped (at most a few
    hundred KiB each: palette tables), so that pydicom can use them."""
    ds = header.dataset
    for keyword in keywords:
        tag = _tag_of(keyword)
        raw = ds.get_item(tag, keep_deferred=True) if tag in ds else None
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length <= 4 << 20:
            value = reader.read(raw.value_tell, raw.length)
            ds[tag] = convert_raw_data_element(raw._replace(value=value), ds=ds)


def _tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return int(tag)
