"""Permissively licensed pixel data decoders, registered with pydicom.

pacsvault is Apache-2.0, so it does not depend on pylibjpeg-libjpeg (GPL-3.0). JPEG
(baseline, extended 12-bit, lossless any predictor) is decoded here by imagecodecs'
libjpeg-turbo (BSD-3 / IJG), as a pydicom 3 decoder plugin; JPEG-LS by pydicom's own
``pyjpegls`` plugin (CharLS, BSD-3); JPEG 2000 and HTJ2K by pylibjpeg-openjpeg (MIT);
RLE by pydicom itself. :func:`register` adds the plugin (once; later calls do nothing).

The plugin follows pydicom's contract (``is_available``, ``DECODER_DEPENDENCIES``,
``_decode_frame``): a frame is returned as raw bytes, colour-by-pixel (planar
configuration 0), samples as stored (no YCbCr to RGB conversion: pydicom does that),
8-bit samples for a precision up to 8 and 16-bit ones above, signed samples sign
extended from their precision, and the runner told the container size it returns.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom import uid
from pydicom.pixels import get_decoder

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

#: The label the plugin has in pydicom's decoders.
PLUGIN = "imagecodecs"
#: The transfer syntaxes it decodes, and where pydicom should try it: before Pillow for
#: JPEG extended (Pillow cannot decode 12-bit samples), after it for baseline, where
#: it is a fallback (a mislabelled lossless or 12-bit stream, say).
PREFERRED = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
FALLBACK = (uid.JPEGBaseline8Bit,)
SYNTAXES = PREFERRED + FALLBACK
#: What pydicom reports as missing when imagecodecs is not installed.
DECODER_DEPENDENCIES = {syntax: ("numpy", "imagecodecs>=2024.6.1") for syntax in SYNTAXES}

_LOCK = threading.Lock()
_registered = False

# Start of frame markers (ITU T.81 B.1.1.3) and those of the lossless processes.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
# Markers without a length: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


def is_available(syntax: str) -> bool:
    """Whether imagecodecs can decode *syntax* here (pydicom's plugin contract)."""
    if syntax not in SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    if not getattr(imagecodecs.JPEG8, "available", False):
        return False
    if syntax in FALLBACK:
        return True
    # 12-bit and lossless samples need libjpeg-turbo 3 (imagecodecs 2024.6.1 and later).
    if getattr(imagecodecs.JPEG8, "all_precisions", False):
        return True
    found = re.search(r"turbo\D*(\d+)", str(imagecodecs.jpeg8_version()))
    return found is not None and int(found.group(1)) >= 3


def register() -> None:
    """Add the imagecodecs plugin to pydicom's JPEG decoders (idempotent, thread-safe)."""
    global _registered
    with _LOCK:
        if _registered:
            return
        for syntax in SYNTAXES:
            decoder = get_decoder(syntax)
            try:
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
            except ValueError:  # already there (this module imported under another name)
                continue
            if syntax in PREFERRED and "pillow" in decoder.available_plugins:
                decoder.remove_plugin("pillow")  # re-added after ours, so tried after it
                decoder.add_plugin("pillow", ("pydicom.pixels.decoders.pillow", "_decode_frame"))
        _registered = True


@dataclass(frozen=True)
class FrameInfo:
    """What a JPEG frame header (SOFn) says: lossless or not, precision, size, components."""

    lossless: bool
    precision: int
    rows: int
    columns: int
    components: int


def frame_info(src: bytes) -> FrameInfo:
    """The frame header of the JPEG stream *src*; ValueError when it has none."""
    if src[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no start of image marker)")
    i, end = 2, len(src)
    while i + 4 <= end:
        if src[i] != 0xFF:
            raise ValueError("a JPEG marker was expected")
        marker = src[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = int.from_bytes(src[i + 2 : i + 4], "big")
        if marker in _SOF:
            if length < 8 or i + 10 > end:
                break
            return FrameInfo(
                lossless=marker in _LOSSLESS_SOF,
                precision=src[i + 4],
                rows=int.from_bytes(src[i + 5 : i + 7], "big"),
                columns=int.from_bytes(src[i + 7 : i + 9], "big"),
                components=src[i + 9],
            )
        if marker == 0xDA:  # a scan before any frame header
            break
        i += 2 + length
    raise ValueError("the JPEG stream has no frame header")


def decode(src: bytes, info: FrameInfo) -> np.ndarray:
    """The samples of JPEG stream *src* as (rows, columns[, components]), uint8 for a
    precision up to 8 and uint16 above, with no colour conversion.

    libjpeg-turbo decodes every process DICOM uses; a lossless stream it refuses is
    tried again with the jpegsof3 decoder (more lenient with old encoders' streams).
    """
    import imagecodecs

    # Declaring the stream RGB and asking for RGB turns libjpeg's colour conversion off.
    colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if info.components == 3 else {}
    try:
        return imagecodecs.jpeg8_decode(src, **colour)
    except Exception:
        if not info.lossless:
            raise
        return imagecodecs.jpegsof3_decode(src)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame of JPEG pixel data as raw bytes, for pydicom's decode runner."""
    info = frame_info(src)
    if info.components not in (1, 3) or info.components != runner.samples_per_pixel:
        raise ValueError(
            f"the JPEG stream has {info.components} components, the dataset "
            f"{runner.samples_per_pixel} samples per pixel"
        )
    if not 2 <= info.precision <= 16:
        raise ValueError(f"unsupported JPEG sample precision {info.precision}")
    arr = decode(src, info)
    expected = (runner.rows, runner.columns) + ((3,) if info.components == 3 else ())
    if arr.shape != expected:
        raise ValueError(f"the JPEG stream decodes to {arr.shape}, the dataset says {expected}")
    arr = np.ascontiguousarray(arr, dtype=np.uint8 if info.precision <= 8 else np.uint16)
    bits = arr.dtype.itemsize * 8
    if runner.pixel_representation == 1:
        # Signed samples are their two's complement in *precision* bits: sign extend
        # (pydicom also does, by Bits Stored, unless told correct_unused_bits=False).
        signed = arr.view(f"i{arr.dtype.itemsize}")
        if info.precision < bits:
            shift = bits - info.precision
            np.left_shift(signed, shift, out=signed)
            np.right_shift(signed, shift, out=signed)
    runner.set_option("bits_allocated", bits)
    if info.components > 1:
        runner.set_option("planar_configuration", 0)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
