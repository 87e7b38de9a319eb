"""Pixel resources of WADO-RS (PS3.18 8.6, 10.4) and the WADO-URI service (PS3.18 9).

- Frames: ``.../instances/{i}/frames/{list}``, each frame one part of a
  ``multipart/related`` response: native frames as ``application/octet-stream``
  (Explicit VR Little Endian), compressed frames as stored, in their own media type
  (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/jphc``,
  ``image/dicom-rle``), or decompressed to ``application/octet-stream`` when asked
  and a decoder exists.
- Bulk data: ``.../instances/{i}/bulk/{tag}``, the BulkDataURIs the metadata gives:
  the pixel data (encapsulated: its frames) and top-level values, streamed.
- Rendered and thumbnail: an instance (its first frame), a frame, and the thumbnail
  of a series or study (its middle instance), as ``image/jpeg`` or ``image/png``.
- WADO-URI: ``/wado?requestType=WADO&...`` for older viewers.

Every read is a retrieve: located through :func:`wado.locate` (scoped, its start
audited), read through ``Archive.open``, and its end recorded with what was sent
through ``Archive.retrieved``. Frames and bulk data stream in chunks; rendering holds
one decoded frame.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import QueryParams

from pacsvault.dicom.part10 import NotDicom
from pacsvault.dicom.pixels import (
    MAX_VIEWPORT,
    PIXEL_DATA,
    RENDER_KEYWORDS,
    Crop,
    DatasetReader,
    Element,
    Frame,
    Header,
    ImagePixel,
    PixelError,
    Rendering,
    Unsupported,
    Window,
    decode_frame,
    decoder_available,
    encapsulated_frames,
    encode_image,
    little_endian_bytes,
    load_deferred,
    native_frame,
    read_frame,
    read_header,
    render,
    top_level_element,
    value_chunks,
)
from pacsvault.dicom.transcode import EXPLICIT_VR_LITTLE_ENDIAN, TranscodeError
from pacsvault.security.identity import Permission, Principal
from pacsvault.storage.archive import Archive
from pacsvault.storage.index import StoredInstance
from pacsvault.web.deps import DICOMWEB, Caller, require, site_of
from pacsvault.web.dicomweb import wado
from pacsvault.web.dicomweb.headers import HeaderCache, Parsed
from pacsvault.web.dicomweb.qido import check_uid
from pacsvault.web.streams import streamed

log = logging.getLogger("pacsvault.web")

router = APIRouter()

STUDY = DICOMWEB + "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"

OCTET = "application/octet-stream"
RENDERED_TYPES = ("image/jpeg", "image/png")
#: The media type of a compressed frame, by transfer syntax (PS3.18 table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}
#: Video transfer syntaxes: an MPEG or HEVC stream has no separately retrievable frames.
_VIDEO_PREFIX = "1.2.840.10008.1.2.4.10"
THUMBNAIL_SIZE = 128
_MAX_FRAME_LIST = 4096
_FRAME_LIST = re.compile(r"\d{1,9}(,\d{1,9})*")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
#: How many instances a series or study thumbnail tries before giving up on finding pixels.
_THUMBNAIL_TRIES = 16


# -- one audited read ------------------------------------------------------------------------


@dataclass
class Read:
    """One retrieve of pixel data: the instances located for it (its start is audited)
    and the one being read. :meth:`end` records, once, what was sent."""

    archive: Archive
    who: Principal
    found: list[StoredInstance]
    inst: StoredInstance
    limit: int
    ended: bool = field(default=False)

    def reader(self) -> DatasetReader:
        """A reader of the instance's stored object, opened through the Archive."""
        return DatasetReader(
            lambda: self.archive.open(self.who, self.inst),
            self.inst.transfer_syntax_uid,
            self.limit,
        )

    def end(self, sent: bool) -> None:
        """Record the end of the retrieve: the instance sent (or failed), per study."""
        if self.ended:
            return
        self.ended = True
        outcome: dict[tuple[str, str], tuple[int, int, int]] = {}
        for inst in self.found:
            outcome.setdefault((inst.study_instance_uid, inst.patient_id), (0, 0, 0))
        key = (self.inst.study_instance_uid, self.inst.patient_id)
        outcome[key] = (1, 0, 0) if sent else (0, 1, 0)
        self.archive.retrieved(self.who, outcome)

    @contextmanager
    def failing(self) -> Iterator[None]:
        """End the retrieve as failed when the block raises (a refusal after its start);
        stored objects that cannot be read become a 500 with the reason."""
        try:
            yield
        except Unsupported as exc:
            self.end(False)
            raise HTTPException(406, f"cannot be served: {exc}") from None
        except (PixelError, NotDicom, OSError) as exc:
            self.end(False)
            log.error("stored pixel data could not be read: %s", type(exc).__name__)
            why = "" if isinstance(exc, OSError) else f": {exc}"  # no file names to callers
            raise HTTPException(500, f"the stored object cannot be read{why}") from None
        except BaseException:
            self.end(False)
            raise


def start_read(
    request: Request, who: Principal, study: str, series: str | None, instance: str | None
) -> Read:
    """Locate (scoped, audited) what a path names; 404 when the caller sees none of it.

    The read is of the first instance found (a thumbnail chooses another later).
    """
    require(request, who, Permission.RETRIEVE)
    level, conds = wado.conditions_for(
        check_uid(study, "the study UID"),
        check_uid(series, "the series UID") if series else None,
        check_uid(instance, "the instance UID") if instance else None,
    )
    site = site_of(request)
    found = wado.locate(site.archive, who, level, conds)
    return Read(site.archive, who, found, found[0], site.settings.storage.max_object_size)


#: Parsed headers of the objects read last, shared by every site this process serves
#: (keyed by content: blob key and digest).
HEADERS = HeaderCache()


def parsed(read: Read) -> Parsed:
    """The parsed header of the instance read (kept for the objects read last)."""

    def parse() -> Parsed:
        with read.reader() as reader:
            return Parsed(read_header(reader))

    return HEADERS.get((read.inst.blob_key, read.inst.sha256), parse)


# -- frames -------------------------------------------------------------------------------------


def frame_numbers(text: str) -> list[int]:
    """The frame numbers of a ``frames/{list}`` path segment; 400 when malformed."""
    if not _FRAME_LIST.fullmatch(text):
        raise HTTPException(400, "the frame list must be frame numbers separated by commas")
    numbers = [int(n) for n in text.split(",")]
    if len(numbers) > _MAX_FRAME_LIST:
        raise HTTPException(400, f"at most {_MAX_FRAME_LIST} frames at once")
    return numbers


def check_frames(numbers: list[int], image: ImagePixel) -> None:
    """404 unless every frame number is between 1 and the number of frames."""
    for n in numbers:
        if not 1 <= n <= image.frames:
            raise HTTPException(404, f"no frame {n}: the instance has {image.frames} frame(s)")


@dataclass(frozen=True)
class Offer:
    """How frames go out: the part media type, its transfer syntax, whether decoded."""

    media: str
    transfer_syntax: str
    decompress: bool = False

    @property
    def content_type(self) -> str:
        return f"{self.media}; transfer-syntax={self.transfer_syntax}"


def frame_offer(ranges: list[wado.Wanted], syntax: str, encapsulated: bool) -> Offer:
    """The first acceptable way to send frames stored in *syntax*; 406 when none is.

    Native frames are ``application/octet-stream`` in Explicit VR Little Endian;
    compressed ones go as stored (their media type, or octet-stream with
    ``transfer-syntax=*`` or the stored syntax), or decompressed when
    octet-stream in Explicit VR Little Endian is asked for and a decoder exists.
    """
    if encapsulated and syntax.startswith(_VIDEO_PREFIX):
        raise HTTPException(
            406, "a video has no separately retrievable frames: retrieve the instance"
        )
    for w in ranges:
        if w.media == "*/*":
            part = "*/*"
        elif w.media in ("multipart/related", "multipart/*"):
            part = _ALIASES.get(w.part_type or "*/*", w.part_type or "*/*")
        else:
            continue  # frames are always sent as multipart/related
        offer = _offer(part, w.transfer_syntax, syntax, encapsulated)
        if offer is not None:
            return offer
    raise HTTPException(
        406, "the frames of this instance are served as " + _served(syntax, encapsulated)
    )


def _offer(part: str, ts: str | None, syntax: str, encapsulated: bool) -> Offer | None:
    """The offer for one accepted part type and transfer syntax, if it can be met."""
    if not encapsulated:
        ok = part in ("*/*", "application/*", OCTET) and ts in (
            None,
            "*",
            EXPLICIT_VR_LITTLE_ENDIAN,
        )
        return Offer(OCTET, EXPLICIT_VR_LITTLE_ENDIAN) if ok else None
    stored_media = FRAME_MEDIA.get(syntax, OCTET)
    as_stored = ts in (None, "*", syntax)
    if part == "*/*" and as_stored:
        return Offer(stored_media, syntax)
    if part in ("image/*", stored_media) and stored_media != OCTET and as_stored:
        return Offer(stored_media, syntax)
    if part in (OCTET, "*/*", "application/*"):
        if ts in ("*", syntax):
            return Offer(OCTET, syntax)
        if ts in (None, EXPLICIT_VR_LITTLE_ENDIAN) and decoder_available(syntax):
            return Offer(OCTET, EXPLICIT_VR_LITTLE_ENDIAN, decompress=True)
    return None


def _served(syntax: str, encapsulated: bool) -> str:
    """What frames stored in *syntax* can be had as, for a 406's reason."""
    native = 'multipart/related; type="application/octet-stream"'
    if not encapsulated:
        return native
    media = FRAME_MEDIA.get(syntax, OCTET)
    out = f'multipart/related; type="{media}"; transfer-syntax={syntax}'
    if decoder_available(syntax):
        out += f" or {native} (decompressed)"
    return out


def frames_response(
    read: Read, header: Header, image: ImagePixel, frames: list[Frame], offer: Offer
) -> Response:
    """The frames, one part each, streamed; the retrieve's end is recorded when done."""
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: {offer.content_type}\r\n\r\n".encode()

    def body() -> Iterator[bytes]:
        sent = False
        try:
            with read.reader() as reader:
                for frame in frames:
                    yield head
                    if offer.decompress:
                        yield _decompressed(reader, header, image, frame)
                    else:
                        yield from read_frame(reader, header, frame)
                    yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()
            sent = True
        except (OSError, PixelError, NotDicom) as exc:  # the response is cut short
            log.error("frames could not be sent: %s", type(exc).__name__)
        finally:
            read.end(sent)

    media = f'multipart/related; type="{offer.media}"; boundary={boundary}'
    return streamed(body(), media)


def _decompressed(reader: DatasetReader, header: Header, image: ImagePixel, frame: Frame) -> bytes:
    """One compressed frame decoded to native little endian pixel data."""
    data = b"".join(read_frame(reader, header, frame))
    arr, _photometric = decode_frame(image, str(header.transfer_syntax), data, encapsulated=True)
    return little_endian_bytes(arr)


@router.get(INSTANCE + "/frames/{frames}", tags=["WADO-RS"])
def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str, who: Caller
) -> Response:
    """Frames of an instance (``frames/1`` or ``frames/1,3,5``), one part each."""
    numbers = frame_numbers(frames)
    ranges = wado.parse_accept(request.headers.get("accept"))
    read = start_read(request, who, study, series, instance)
    with read.failing():
        found = parsed(read)
        header = found.header
        if header.pixel_data is None:
            raise HTTPException(404, "the instance has no pixel data")
        check_frames(numbers, found.image)
        offer = frame_offer(ranges, str(header.transfer_syntax), header.encapsulated)
        where = found.frames(read.reader, numbers)
    return frames_response(read, header, found.image, where, offer)


# -- bulk data ------------------------------------------------------------------------------


def bulk_offer(ranges: list[wado.Wanted]) -> None:
    """406 unless an uncompressed octet-stream part is acceptable."""
    for w in ranges:
        multipart = w.media in ("multipart/related", "multipart/*")
        octet = w.media == "*/*" or (multipart and w.part_type in (None, "*/*", OCTET))
        if octet and w.transfer_syntax in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
            return
    raise HTTPException(406, f'bulk data is served as multipart/related; type="{OCTET}"')


@router.get(INSTANCE + "/bulk/{tag}", tags=["WADO-RS"])
def retrieve_bulk(
    request: Request, study: str, series: str, instance: str, tag: str, who: Caller
) -> Response:
    """A bulk data value the metadata refers to (BulkDataURI): top-level binary values
    and the pixel data (encapsulated pixel data: its frames, one part each)."""
    if not _TAG.fullmatch(tag):
        raise HTTPException(400, "the bulk data tag must be 8 hexadecimal digits")
    number = int(tag, 16)
    ranges = wado.parse_accept(request.headers.get("accept"))
    read = start_read(request, who, study, series, instance)
    with read.failing():
        found = parsed(read)
        header = found.header
        element = top_level_element(header, number)
        if element is None or not is_bulk(element):
            raise HTTPException(404, f"the instance has no bulk data {tag.upper()}")
        if number == PIXEL_DATA and header.encapsulated:
            image = found.image
            offer = frame_offer(ranges, str(header.transfer_syntax), True)
            where = found.frames(read.reader, list(range(1, image.frames + 1)))
            return frames_response(read, header, image, where, offer)
        bulk_offer(ranges)
    return _bulk_response(read, header, element)


def is_bulk(element: Element) -> bool:
    """Whether the metadata refers to *element* by a BulkDataURI (as wado's metadata
    decides: the pixel data, binary values over 1 KiB, values the header left unread)."""
    if element.tag == PIXEL_DATA or element.deferred:
        return True
    size = element.length or 0
    return element.vr in wado._BULK_VRS and size > wado.BULK_THRESHOLD


def _bulk_response(read: Read, header: Header, element: Element) -> Response:
    """One element's value as the one part of a multipart response, streamed."""
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        sent = False
        try:
            yield (
                f"--{boundary}\r\nContent-Type: {OCTET}; transfer-syntax="
                f"{EXPLICIT_VR_LITTLE_ENDIAN}\r\n\r\n"
            ).encode()
            with read.reader() as reader:
                yield from value_chunks(reader, header, element)
            yield f"\r\n--{boundary}--\r\n".encode()
            sent = True
        except (OSError, PixelError, NotDicom) as exc:
            log.error("bulk data could not be sent: %s", type(exc).__name__)
        finally:
            read.end(sent)

    media = f'multipart/related; type="{OCTET}"; boundary={boundary}'
    return streamed(body(), media)


# -- rendered and thumbnails --------------------------------------------------------------------


def rendered_type(header: str | None) -> str:
    """The image type an Accept header asks a rendered resource in (default JPEG); 406."""
    for w in wado.parse_accept(header):
        if w.media in ("*/*", "image/*"):
            return "image/jpeg"
        if w.media in RENDERED_TYPES:
            return w.media
    raise HTTPException(406, "rendered resources are served as image/jpeg or image/png")


@dataclass(frozen=True)
class Asked:
    """A rendering asked for: how to render, the image type, the JPEG quality."""

    how: Rendering
    media: str
    quality: int | None = None


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPException(400, f"{what} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise HTTPException(400, f"{what} must be a finite number")
    return value


def _size(text: str, what: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_VIEWPORT:
        raise HTTPException(400, f"{what} must be a whole number from 1 to {MAX_VIEWPORT}")
    return int(text)


def _quality(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise HTTPException(400, "quality must be a whole number from 1 to 100")
    return int(text)


def window_param(text: str | None) -> Window | None:
    """``window=center,width[,function]`` (linear, linear-exact, sigmoid); 400 if bad."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise HTTPException(400, "window must be center,width,function")
    function = (parts[2].strip() if len(parts) == 3 else "linear").upper().replace("-", "_")
    try:
        return Window(
            _number(parts[0], "the window center"), _number(parts[1], "the window width"), function
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def viewport_param(text: str | None, default: int | None = None) -> Rendering:
    """``viewport=vw,vh[,sx,sy,sw,sh]``: the size to fit and the source region; 400."""
    if text is None:
        return Rendering(max_width=default, max_height=default)
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise HTTPException(400, "viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = _size(parts[0], "the viewport width"), _size(parts[1], "the viewport height")
    crop = None
    if len(parts) == 6:
        sx, sy, sw, sh = (_number(p, "the viewport region") for p in parts[2:])
        if sw <= 0 or sh <= 0:
            raise HTTPException(400, "the viewport region must have a positive width and height")
        crop = Crop(sx, sy, sw, sh)
    return Rendering(crop=crop, max_width=width, max_height=height)


def rendering_params(request: Request, thumbnail: bool) -> Asked:
    """What a rendered (or thumbnail) request asks for; 400 or 406 before anything is read.

    Thumbnails take only a viewport (default 128 by 128).
    """
    media = rendered_type(request.headers.get("accept"))
    q = request.query_params
    sized = viewport_param(q.get("viewport"), THUMBNAIL_SIZE if thumbnail else None)
    if thumbnail:
        return Asked(sized, media)
    how = Rendering(window_param(q.get("window")), sized.crop, sized.max_width, sized.max_height)
    return Asked(how, media, _quality(q.get("quality")))


def rendered_image(read: Read, number: int, asked: Asked) -> bytes:
    """Frame *number* of the instance read, rendered and encoded (406: cannot render)."""
    with read.reader() as reader:
        header = read_header(reader)
        if header.pixel_data is None:
            raise Unsupported("the instance has no pixel data to render")
        image = ImagePixel.of(header.dataset)
        check_frames([number], image)
        syntax = str(header.transfer_syntax)
        if header.encapsulated:
            if not decoder_available(syntax):
                raise Unsupported(f"no decoder here for transfer syntax {syntax}")
            frame = encapsulated_frames(reader, header, image.frames)[number - 1]
        else:
            frame = native_frame(image, header.pixel_data, number)
        data = b"".join(read_frame(reader, header, frame))
        load_deferred(reader, header, RENDER_KEYWORDS)
    arr, photometric = decode_frame(image, syntax, data, encapsulated=header.encapsulated)
    del data
    img = render(arr, photometric, header.dataset, asked.how)
    return encode_image(img, asked.media, asked.quality)


def rendered(read: Read, number: int, asked: Asked) -> Response:
    """The rendered frame as the response; the retrieve's end recorded either way."""
    with read.failing():
        body = rendered_image(read, number, asked)
    read.end(True)
    return Response(body, media_type=asked.media)


@router.get(INSTANCE + "/rendered", tags=["WADO-RS"])
def instance_rendered(
    request: Request, study: str, series: str, instance: str, who: Caller
) -> Response:
    """An instance rendered (a multi-frame instance: its first frame).

    Parameters: ``window=center,width,function``, ``viewport=vw,vh[,sx,sy,sw,sh]``,
    ``quality`` (JPEG). Accept: image/jpeg (default) or image/png.
    """
    asked = rendering_params(request, thumbnail=False)
    return rendered(start_read(request, who, study, series, instance), 1, asked)


@router.get(INSTANCE + "/frames/{frame}/rendered", tags=["WADO-RS"])
def frame_rendered(
    request: Request, study: str, series: str, instance: str, frame: str, who: Caller
) -> Response:
    """One frame rendered (parameters as for the rendered instance)."""
    number = _one_frame(frame)
    asked = rendering_params(request, thumbnail=False)
    return rendered(start_read(request, who, study, series, instance), number, asked)


@router.get(INSTANCE + "/thumbnail", tags=["WADO-RS"])
def instance_thumbnail(
    request: Request, study: str, series: str, instance: str, who: Caller
) -> Response:
    """A small rendering of an instance (``viewport=vw,vh``; default 128 by 128)."""
    asked = rendering_params(request, thumbnail=True)
    return rendered(start_read(request, who, study, series, instance), 1, asked)


@router.get(INSTANCE + "/frames/{frame}/thumbnail", tags=["WADO-RS"])
def frame_thumbnail(
    request: Request, study: str, series: str, instance: str, frame: str, who: Caller
) -> Response:
    """A small rendering of one frame."""
    number = _one_frame(frame)
    asked = rendering_params(request, thumbnail=True)
    return rendered(start_read(request, who, study, series, instance), number, asked)


@router.get(SERIES + "/thumbnail", tags=["WADO-RS"])
def series_thumbnail(request: Request, study: str, series: str, who: Caller) -> Response:
    """A small rendering of a series: its middle instance (in the order stored)."""
    asked = rendering_params(request, thumbnail=True)
    return middle_thumbnail(start_read(request, who, study, series, None), asked)


@router.get(STUDY + "/thumbnail", tags=["WADO-RS"])
def study_thumbnail(request: Request, study: str, who: Caller) -> Response:
    """A small rendering of a study: its middle instance (in the order stored)."""
    asked = rendering_params(request, thumbnail=True)
    return middle_thumbnail(start_read(request, who, study, None, None), asked)


def middle_thumbnail(read: Read, asked: Asked) -> Response:
    """The thumbnail of the middle instance found, or of the nearest one with pixel data
    (an SR or a presentation state has none); 406 when none of the first few has."""
    middle = len(read.found) // 2
    order = sorted(range(len(read.found)), key=lambda i: (abs(i - middle), i))
    for i in order[:_THUMBNAIL_TRIES]:
        read.inst = read.found[i]
        with read.failing():
            try:
                body = rendered_image(read, 1, asked)
            except Unsupported:
                continue
        read.end(True)
        return Response(body, media_type=asked.media)
    read.end(False)
    raise HTTPException(406, "no instance of these has pixel data this can render")


def _one_frame(text: str) -> int:
    """A single frame number from a path; 400 when it is not one."""
    if not text.isdigit() or len(text) > 9:
        raise HTTPException(400, "the frame must be one frame number")
    return int(text)


# -- WADO-URI -----------------------------------------------------------------------------------

_URI_TYPES = ("application/dicom", *RENDERED_TYPES)
_URI_RENDER_PARAMS = (
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "frameNumber",
    "imageQuality",
    "annotation",
)


def uri_content_type(text: str | None) -> str | None:
    """The first served type of a ``contentType`` list (None: absent); 406 for none."""
    if text is None:
        return None
    for item in text.split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in ("*/*", "image/*"):
            return "image/jpeg"
        if media in _URI_TYPES:
            return media
    raise HTTPException(406, "WADO-URI serves application/dicom, image/jpeg and image/png")


def uri_rendering(q: QueryParams, media: str) -> Asked:
    """The rendering WADO-URI parameters ask for; 400 when one is invalid."""
    center, width = q.get("windowCenter"), q.get("windowWidth")
    if (center is None) != (width is None):
        raise HTTPException(400, "windowCenter and windowWidth go together")
    window = None
    if center is not None and width is not None:
        try:
            window = Window(_number(center, "windowCenter"), _number(width, "windowWidth"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
    rows, columns = q.get("rows"), q.get("columns")
    how = Rendering(
        window,
        _region(q.get("region")),
        _size(columns, "columns") if columns is not None else None,
        _size(rows, "rows") if rows is not None else None,
    )
    return Asked(how, media, _quality(q.get("imageQuality")))


def _region(text: str | None) -> Crop | None:
    """``region=x1,y1,x2,y2`` as fractions of the image (0.0 to 1.0); 400 when invalid."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise HTTPException(400, "region must be x1,y1,x2,y2")
    x1, y1, x2, y2 = (_number(p, "region") for p in parts)
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise HTTPException(400, "region values must be fractions with x1 < x2 and y1 < y2")
    return Crop(x1, y1, x2 - x1, y2 - y1, relative=True)


@router.get("/wado", tags=["WADO-URI"])
def wado_uri(request: Request, who: Caller) -> Response:
    """WADO-URI (PS3.18 9): ``requestType=WADO&studyUID=&seriesUID=&objectUID=`` with
    ``contentType`` application/dicom, image/jpeg or image/png (default: image/jpeg for
    an image, else application/dicom), ``frameNumber``, ``windowCenter`` and
    ``windowWidth``, ``rows`` and ``columns``, ``region``, ``imageQuality``,
    ``transferSyntax`` (application/dicom)."""
    q = request.query_params
    if q.get("requestType") != "WADO":
        raise HTTPException(400, "requestType must be WADO")
    uids = [q.get(name) for name in ("studyUID", "seriesUID", "objectUID")]
    if not all(uids):
        raise HTTPException(400, "studyUID, seriesUID and objectUID are required")
    if q.get("presentationUID") or q.get("anonymize", "").lower() == "yes":
        raise HTTPException(400, "presentationUID and anonymize are not supported")
    media = uri_content_type(q.get("contentType"))
    if media == "application/dicom":
        if any(name in q for name in _URI_RENDER_PARAMS):
            raise HTTPException(400, "rendering parameters do not apply to application/dicom")
        syntax = q.get("transferSyntax", "")
        if syntax:
            check_uid(syntax, "transferSyntax")
        read = start_read(request, who, *uids)  # type: ignore[arg-type]
        return uri_object(read, syntax)
    asked = uri_rendering(q, media or "image/jpeg")
    number = _one_frame(q.get("frameNumber", "1"))
    read = start_read(request, who, *uids)  # type: ignore[arg-type]
    if media is None and not _has_pixels(read):
        return uri_object(read, q.get("transferSyntax", ""))
    return rendered(read, number, asked)


def _has_pixels(read: Read) -> bool:
    """Whether the instance read has pixel data (for WADO-URI's default content type)."""
    with read.failing(), read.reader() as reader:
        return read_header(reader).pixel_data is not None


def uri_object(read: Read, syntax: str) -> Response:
    """The stored object as ``application/dicom``, streamed (converted only when a
    transfer syntax is asked that it is not in, as WADO-RS does)."""
    with read.failing():
        target, convert = wado._part_syntax(read.inst, syntax)

    def body() -> Iterator[bytes]:
        sent = False
        try:
            yield from wado._object(read.archive, read.who, read.inst, target if convert else None)
            sent = True
        except (OSError, TranscodeError, ValueError) as exc:
            log.error("stored object could not be sent: %s", type(exc).__name__)
        finally:
            read.end(sent)

    return streamed(body(), f"application/dicom; transfer-syntax={target}")
