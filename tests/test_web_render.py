"""WADO-RS pixel resources (frames, bulk data, rendered, thumbnails) and WADO-URI.

Acceptance, against a real ``pacsvault serve`` over HTTPS with a bearer token:
frames (native, big endian, deflated, 1-bit, compressed with and without a Basic
Offset Table, several fragments a frame) equal what pydicom extracts from the file
that was stored; compressed frames come in their own media type, or decompressed
when asked; rendered images decode, have the asked size and plausible values
(windowing, MONOCHROME1 inversion, colour, palette); 400, 404 and 406 where PS3.18
says so; a referrer who sees nothing gets 404; WADO-URI gives the object and a JPEG;
every read is in the audit trail as a retrieve that started and ended.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pack_bits
from pydicom.pixels.processing import apply_color_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import SERVER_AET, Server, add_user, api_token, cli, free_port
from pacsvault.dicom import pixels as px

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTET = "application/octet-stream"

#: The bundled files stored for these tests (each under fresh UIDs).
BUNDLED = (
    "CT_small.dcm",  # native, signed 16-bit, rescale
    "MR_small.dcm",  # native, a stored window
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "rtdose.dcm",  # native multi-frame, 32-bit, implicit VR
    "rtdose_expb.dcm",  # the same, big endian
    "examples_ybr_color.dcm",  # JPEG baseline, 30 frames, YBR_FULL_422
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_rle_2frame.dcm",  # RLE, 2 frames, RGB
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
    "examples_rgb_color.dcm",  # native RGB
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
    "examples_palette.dcm",  # PALETTE COLOR
    "image_dfl.dcm",  # deflated
    "liver_1frame.dcm",  # 1-bit
)


@dataclass(frozen=True)
class Stored:
    """A file stored for the tests: its path and UIDs."""

    path: Path
    study: str
    series: str
    instance: str

    def dataset(self) -> Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(self.path)

    def url(self, base: str) -> str:
        return f"{base}/studies/{self.study}/series/{self.series}/instances/{self.instance}"


def _fresh(ds: Dataset, path: Path) -> Stored:
    """*ds* saved at *path* under new study, series and instance UIDs."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = ds.get("PatientID") or "PX1"
    ds.save_as(path, enforce_file_format=True)
    return Stored(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _monochrome1(folder: Path) -> Stored:
    """CT_small as MONOCHROME1: the same values, shown inverted."""
    ds = _read(TEST_FILES / "CT_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    return _fresh(ds, folder / "ct_mono1.dcm")


def _one_bit_frames(folder: Path) -> Stored:
    """Three 5x5 1-bit frames: 25 bits each, so frames 2 and 3 start inside a byte."""
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 2, size=(3, 5, 5), dtype=np.uint8)
    ds = _read(TEST_FILES / "liver_1frame.dcm")
    ds.Rows, ds.Columns, ds.NumberOfFrames = 5, 5, 3
    ds.PixelData = pack_bits(frames)
    return _fresh(ds, folder / "one_bit.dcm")


def _refragmented(folder: Path, *, bot: bool) -> Stored:
    """The 30 JPEG frames of examples_ybr_color in two fragments each, with or without
    a Basic Offset Table (without: frames are told apart by their end marker)."""
    ds = _read(TEST_FILES / "examples_ybr_color.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=30))
    ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=bot)
    return _fresh(ds, folder / f"ybr_2frag_{'bot' if bot else 'nobot'}.dcm")


def _bulky(folder: Path) -> Stored:
    """CT_small with two private binary values: 4 KiB and 100 KiB (the index skips it)."""
    ds = _read(TEST_FILES / "CT_small.dcm")
    block = ds.private_block(0x0041, "PACSVAULT TEST", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 16)
    block.add_new(0x11, "OB", bytes(range(256)) * 400)
    return _fresh(ds, folder / "bulky.dcm")


def _no_pixels(folder: Path) -> Stored:
    """An instance without pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.PatientID, ds.PatientName, ds.Modality = "PX2", "Doc^Text", "SR"
    return _fresh(ds, folder / "sr.dcm")


@dataclass
class Site:
    """The server, its stored files, and sessions for a radiologist and a referrer."""

    server: Server
    files: dict[str, Stored]
    token: str
    referrer_token: str

    @property
    def root(self) -> str:
        return f"https://127.0.0.1:{self.server.https_port}"

    @property
    def base(self) -> str:
        return self.root + "/dicom-web"

    def session(self, token: str | None = None) -> requests.Session:
        s = requests.Session()
        s.verify = str(self.server.data / "tls" / "ca.crt")
        s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        s.headers["Authorization"] = f"Bearer {token or self.token}"
        return s

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.base, session=self.session())

    def url(self, name: str) -> str:
        return self.files[name].url(self.base)


def _token(data: Path, user: str, role: str) -> str:
    add_user(data, user, role)
    return api_token(data, user, "read")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("render")
    folder = tmp / "files"
    folder.mkdir()
    files = {name: _fresh(_read(TEST_FILES / name), folder / name) for name in BUNDLED}
    files["mono1"] = _monochrome1(folder)
    files["one_bit"] = _one_bit_frames(folder)
    files["bot"] = _refragmented(folder, bot=True)
    files["no_bot"] = _refragmented(folder, bot=False)
    files["sr"] = _no_pixels(folder)
    files["bulky"] = _bulky(folder)
    files["audited"] = _fresh(_read(TEST_FILES / "SC_rgb_rle_2frame.dcm"), folder / "audited.dcm")
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET)
    out = cli(data, "import", str(folder)).stdout
    assert f"stored: {len(files)}" in out, out
    token = _token(data, "rad", "radiologist")
    referrer = _token(data, "ref", "referrer")
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    try:
        yield Site(server, files, token, referrer)
    finally:
        server.stop()


# -- what pydicom says the frames are -------------------------------------------------------------


def expected_frames(ds: Dataset) -> list[bytes]:
    """The frames of *ds* as PS3.18 sends them: encapsulated ones as their fragments,
    native ones as stored but little endian (1-bit frames packed from their first bit)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    if ds.BitsAllocated == 1:
        return [pack_bits(frame) for frame in ds.pixel_array.reshape(n, -1)]
    if syntax.is_little_endian:
        size = len(ds.PixelData) // n
        return [ds.PixelData[i * size : (i + 1) * size] for i in range(n)]
    arr = ds.pixel_array.reshape(n, -1)
    return [np.ascontiguousarray(f, dtype=f.dtype.newbyteorder("<")).tobytes() for f in arr]


def png(content: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(content))
    assert img.format == "PNG"
    return np.asarray(img)


# -- frames ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "rtdose.dcm",
        "rtdose_expb.dcm",
        "image_dfl.dcm",
        "liver_1frame.dcm",
        "one_bit",
        "examples_rgb_color.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
    ],
)
def test_native_frames_equal_the_stored_frames(site: Site, name: str) -> None:
    stored = site.files[name]
    want = expected_frames(stored.dataset())
    numbers = list(range(1, len(want) + 1))
    got = site.client().retrieve_instance_frames(
        stored.study, stored.series, stored.instance, numbers, media_types=(OCTET,)
    )
    assert got == want


def test_big_endian_frames_come_little_endian(site: Site) -> None:
    client = site.client()
    le, be = site.files["rtdose.dcm"], site.files["rtdose_expb.dcm"]
    frames = [3, 1, 15]
    assert client.retrieve_instance_frames(le.study, le.series, le.instance, frames) == (
        client.retrieve_instance_frames(be.study, be.series, be.instance, frames)
    )


@pytest.mark.parametrize(
    ("name", "media"),
    [
        ("examples_ybr_color.dcm", "image/jpeg"),
        ("JPEG2000.dcm", "image/jp2"),
        ("MR_small_RLE.dcm", "image/dicom-rle"),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle"),
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls"),
        ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg"),
        ("bot", "image/jpeg"),
        ("no_bot", "image/jpeg"),
    ],
)
def test_compressed_frames_come_as_stored(site: Site, name: str, media: str) -> None:
    stored = site.files[name]
    ds = stored.dataset()
    want = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    numbers = [len(want), 1] if len(want) > 1 else [1]
    client = site.client()
    got = client.retrieve_instance_frames(stored.study, stored.series, stored.instance, numbers)
    assert got == [want[n - 1] for n in numbers]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    typed = client.retrieve_instance_frames(
        stored.study, stored.series, stored.instance, [1], media_types=((media, syntax),)
    )
    assert typed == [want[0]]
    r = site.session().get(stored.url(site.base) + "/frames/1")
    assert r.headers["content-type"].startswith(f'multipart/related; type="{media}"')
    assert f"Content-Type: {media}; transfer-syntax={syntax}".encode() in r.content[:200]


def test_offset_table_and_end_markers_locate_the_same_frames(site: Site) -> None:
    """Two fragments a frame, with a Basic Offset Table or without (frames told apart by
    their end of image marker): the same bytes for the same frame."""
    client = site.client()
    a, b = site.files["bot"], site.files["no_bot"]
    assert client.retrieve_instance_frames(a.study, a.series, a.instance, [17, 2]) == (
        client.retrieve_instance_frames(b.study, b.series, b.instance, [17, 2])
    )


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_compressed_frames_decompressed_when_asked(site: Site, name: str) -> None:
    stored = site.files[name]
    ds = stored.dataset()
    index = 1 if int(ds.get("NumberOfFrames", 1)) > 1 else 0
    arr = ds.pixel_array[index] if index else ds.pixel_array
    got = site.client().retrieve_instance_frames(
        stored.study,
        stored.series,
        stored.instance,
        [index + 1],
        media_types=((OCTET, EXPLICIT_LE),),
    )
    assert got == [np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()]


def test_frame_numbers_out_of_range_are_404(site: Site) -> None:
    s = site.session()
    url = site.url("rtdose.dcm")
    for frames in ("0", "16", "1,16"):
        r = s.get(f"{url}/frames/{frames}")
        assert r.status_code == 404, frames
        assert "15 frame" in r.json()["detail"]
    assert s.get(f"{url}/frames/15").status_code == 200


@pytest.mark.parametrize("frames", ["x", "1,", ",1", "1;2", "-1", "1.5", "1,,2"])
def test_malformed_frame_lists_are_400(site: Site, frames: str) -> None:
    assert site.session().get(f"{site.url('rtdose.dcm')}/frames/{frames}").status_code == 400


def test_frames_406_for_media_types_not_served(site: Site) -> None:
    s = site.session()
    cases = [
        ("CT_small.dcm", 'multipart/related; type="image/jpeg"'),
        ("CT_small.dcm", "application/dicom"),
        ("examples_ybr_color.dcm", 'multipart/related; type="image/jp2"'),
        ("examples_ybr_color.dcm", f'multipart/related; type="{OCTET}"; transfer-syntax=1.2.3'),
    ]
    for name, accept in cases:
        r = s.get(f"{site.url(name)}/frames/1", headers={"Accept": accept})
        assert r.status_code == 406, (name, accept)
        assert "served as" in r.json()["detail"]


def test_frames_of_an_instance_without_pixel_data_are_404(site: Site) -> None:
    r = site.session().get(f"{site.url('sr')}/frames/1")
    assert r.status_code == 404
    assert "no pixel data" in r.json()["detail"]


# -- bulk data ------------------------------------------------------------------------------------


def test_bulk_data_uris_of_the_metadata_give_the_values(site: Site) -> None:
    client, s = site.client(), site.session()
    stored = site.files["CT_small.dcm"]
    # The metadata is read with requests: dicomweb-client sends a Host header without
    # the port, so the BulkDataURIs it would be given lack it.
    meta = s.get(stored.url(site.base) + "/metadata").json()[0]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(uri) == [expected_frames(stored.dataset())[0]]
    bulky = site.files["bulky"]
    url = bulky.url(site.base)
    small, large = bulky.dataset()[0x00411010].value, bulky.dataset()[0x00411011].value
    assert client.retrieve_bulkdata(url + "/bulk/00411010") == [small]
    assert client.retrieve_bulkdata(url + "/bulk/00411011") == [large]
    # the metadata of an object with a value the index skipped (over 64 KiB) points to it
    r = s.get(url + "/metadata")
    assert r.status_code == 200, r.text
    bulky_meta = r.json()[0]
    assert bulky_meta["00411011"]["BulkDataURI"] == url + "/bulk/00411011"
    assert bulky_meta["00411010"]["BulkDataURI"] == url + "/bulk/00411010"
    assert bulky_meta["00100010"]["Value"] == [{"Alphabetic": str(bulky.dataset().PatientName)}]


def test_bulk_pixel_data_of_compressed_objects_is_its_frames(site: Site) -> None:
    stored = site.files["SC_rgb_rle_2frame.dcm"]
    got = site.client().retrieve_bulkdata(stored.url(site.base) + "/bulk/7FE00010")
    assert got == expected_frames(stored.dataset())


def test_bulk_data_refusals(site: Site) -> None:
    s = site.session()
    url = site.url("CT_small.dcm")
    assert s.get(f"{url}/bulk/00100010").status_code == 404  # not bulk data: in the metadata
    assert s.get(f"{url}/bulk/00020010").status_code == 404
    assert s.get(f"{url}/bulk/7FE0").status_code == 400
    r = s.get(f"{url}/bulk/7FE00010", headers={"Accept": "application/dicom"})
    assert r.status_code == 406


# -- rendered -------------------------------------------------------------------------------------


def test_rendered_instances_decode_at_the_asked_size(site: Site) -> None:
    client = site.client()
    for name in (
        "CT_small.dcm",
        "examples_ybr_color.dcm",
        "JPEG2000.dcm",
        "examples_palette.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "image_dfl.dcm",
        "liver_1frame.dcm",
    ):
        stored = site.files[name]
        ds = stored.dataset()
        jpeg = client.retrieve_instance_rendered(
            stored.study,
            stored.series,
            stored.instance,
            media_types=("image/jpeg",),
            params={"viewport": "100,100", "quality": "80"},
        )
        img = Image.open(io.BytesIO(jpeg))
        assert img.format == "JPEG", name
        scale = 100 / max(ds.Rows, ds.Columns)
        assert img.size == (round(ds.Columns * scale), round(ds.Rows * scale)), name


def test_rendered_png_of_native_images_is_exact(site: Site) -> None:
    client = site.client()
    rgb = site.files["examples_rgb_color.dcm"]
    got = png(
        client.retrieve_instance_rendered(
            rgb.study, rgb.series, rgb.instance, media_types=("image/png",)
        )
    )
    assert np.array_equal(got, rgb.dataset().pixel_array)
    ybr = site.files["SC_ybr_full_422_uncompressed.dcm"]
    got = png(
        client.retrieve_instance_rendered(
            ybr.study, ybr.series, ybr.instance, media_types=("image/png",)
        )
    )
    assert np.array_equal(got, ybr.dataset().pixel_array)  # pydicom converts to RGB too
    pal = site.files["examples_palette.dcm"]
    ds = pal.dataset()
    want = apply_color_lut(ds.pixel_array, ds)
    want = (want >> 8).astype(np.uint8) if want.dtype != np.uint8 else want
    got = png(
        client.retrieve_instance_rendered(
            pal.study, pal.series, pal.instance, media_types=("image/png",)
        )
    )
    assert np.array_equal(got, want)


def test_windowing_changes_the_rendered_values(site: Site) -> None:
    s = site.session()
    url = site.url("CT_small.dcm") + "/rendered"
    accept = {"Accept": "image/png"}
    all_white = png(s.get(url, params={"window": "-20000,10,linear"}, headers=accept).content)
    all_black = png(s.get(url, params={"window": "20000,10,linear"}, headers=accept).content)
    assert (all_white == 255).all() and (all_black == 0).all()
    ds = site.files["CT_small.dcm"].dataset()
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    soft = png(s.get(url, params={"window": "40,400"}, headers=accept).content).astype(float)
    want = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(soft - want).max() <= 1


def test_the_stored_window_is_the_default(site: Site) -> None:
    s = site.session()
    url = site.url("MR_small.dcm") + "/rendered"
    ds = site.files["MR_small.dcm"].dataset()
    window = f"{float(ds.WindowCenter)},{float(ds.WindowWidth)},linear"
    accept = {"Accept": "image/png"}
    default = png(s.get(url, headers=accept).content)
    explicit = png(s.get(url, params={"window": window}, headers=accept).content)
    other = png(s.get(url, params={"window": "100,50"}, headers=accept).content)
    assert np.array_equal(default, explicit)
    assert not np.array_equal(default, other)


def test_monochrome1_is_inverted(site: Site) -> None:
    s = site.session()
    params, accept = {"window": "40,400"}, {"Accept": "image/png"}
    mono2 = png(
        s.get(site.url("CT_small.dcm") + "/rendered", params=params, headers=accept).content
    )
    mono1 = png(s.get(site.url("mono1") + "/rendered", params=params, headers=accept).content)
    assert np.array_equal(mono1, 255 - mono2)
    assert mono2.std() > 10  # not a flat image


def test_rendered_frames_of_a_multi_frame_instance(site: Site) -> None:
    client = site.client()
    stored = site.files["rtdose.dcm"]
    ids = (stored.study, stored.series, stored.instance)
    first = client.retrieve_instance_rendered(*ids, media_types=("image/png",))
    frame1 = client.retrieve_instance_frames_rendered(*ids, [1], media_types=("image/png",))
    frame9 = client.retrieve_instance_frames_rendered(*ids, [9], media_types=("image/png",))
    assert np.array_equal(png(first), png(frame1))  # the instance renders its first frame
    assert not np.array_equal(png(frame1), png(frame9))
    s = site.session()
    assert s.get(stored.url(site.base) + "/frames/16/rendered").status_code == 404
    assert s.get(stored.url(site.base) + "/frames/0/rendered").status_code == 404
    assert s.get(stored.url(site.base) + "/frames/1,2/rendered").status_code == 400


def test_rendered_406_and_400(site: Site) -> None:
    s = site.session()
    url = site.url("CT_small.dcm") + "/rendered"
    for accept in ("image/gif", "application/dicom", 'multipart/related; type="image/jpeg"'):
        r = s.get(url, headers={"Accept": accept})
        assert r.status_code == 406, accept
        assert "image/jpeg or image/png" in r.json()["detail"]
    assert s.get(url, headers={"Accept": "image/webp, */*;q=0.8"}).status_code == 200
    for params in (
        {"window": "40"},
        {"window": "40,0"},
        {"window": "40,400,cubic"},
        {"viewport": "0,10"},
        {"viewport": "a,b"},
        {"quality": "0"},
    ):
        assert s.get(url, params=params).status_code == 400, params
    r = s.get(site.url("sr") + "/rendered")
    assert r.status_code == 406
    assert "no pixel data" in r.json()["detail"]


def test_thumbnails(site: Site) -> None:
    s = site.session()
    stored = site.files["examples_ybr_color.dcm"]
    for url in (
        stored.url(site.base) + "/thumbnail",
        f"{site.base}/studies/{stored.study}/series/{stored.series}/thumbnail",
        f"{site.base}/studies/{stored.study}/thumbnail",
    ):
        r = s.get(url)
        assert r.status_code == 200, url
        assert Image.open(io.BytesIO(r.content)).size == (128, 96)
    r = s.get(f"{site.base}/studies/{stored.study}/thumbnail", params={"viewport": "64,64"})
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)


# -- access and audit -----------------------------------------------------------------------------


def test_a_referrer_who_sees_nothing_gets_404(site: Site) -> None:
    s = site.session(site.referrer_token)
    url = site.url("CT_small.dcm")
    stored = site.files["CT_small.dcm"]
    for path in ("/frames/1", "/rendered", "/frames/1/rendered", "/thumbnail", "/bulk/7FE00010"):
        assert s.get(url + path).status_code == 404, path
    r = s.get(
        site.root + "/wado",
        params={
            "requestType": "WADO",
            "studyUID": stored.study,
            "seriesUID": stored.series,
            "objectUID": stored.instance,
        },
    )
    assert r.status_code == 404
    assert site.session().get(url + "/rendered").status_code == 200  # the instance is there


def test_without_credentials_401(site: Site) -> None:
    s = site.session()
    del s.headers["Authorization"]
    assert s.get(site.url("CT_small.dcm") + "/frames/1").status_code == 401
    assert s.get(site.root + "/wado", params={"requestType": "WADO"}).status_code == 401
    # On record, once a minute per address (a scan is seen; a flood does not fill the trail).
    out = cli(site.server.data, "audit", "search", "--action", "login", "--outcome",
              "refused").stdout  # fmt: skip
    assert out.count("no credentials for GET /dicom-web") == 1, out


def test_anonymous_records_once_per_address_and_window() -> None:
    from pacsvault.web.auth import AnonymousRecords

    records = AnonymousRecords(window=0.2, addresses=2)
    assert records.should_record("10.0.0.1") and not records.should_record("10.0.0.1")
    assert records.should_record("10.0.0.2")
    assert not records.should_record("10.0.0.3")  # table full of recent addresses: none
    time.sleep(0.25)
    assert records.should_record("10.0.0.3") and records.should_record("10.0.0.1")


def test_pixel_reads_are_audited_retrieves(site: Site) -> None:
    stored = site.files["audited"]  # read by this test only
    s = site.session()
    assert s.get(stored.url(site.base) + "/frames/2").status_code == 200
    assert s.get(stored.url(site.base) + "/rendered").status_code == 200
    assert s.get(stored.url(site.base) + "/frames/3").status_code == 404
    out = cli(
        site.server.data, "audit", "search", "--action", "retrieve", "--study", stored.study
    ).stdout
    lines = [line for line in out.splitlines() if stored.study in line]
    assert sum("started: 1 instances" in line for line in lines) == 3
    assert sum("ended: completed 1, failed 0" in line for line in lines) == 2
    assert sum("ended: completed 0, failed 1" in line for line in lines) == 1
    assert all("user:rad" in line for line in lines)


# -- WADO-URI -------------------------------------------------------------------------------------


def _wado(site: Site, name: str, **params: str) -> requests.Response:
    stored = site.files[name]
    query = {
        "requestType": "WADO",
        "studyUID": stored.study,
        "seriesUID": stored.series,
        "objectUID": stored.instance,
        **params,
    }
    return site.session().get(site.root + "/wado", params=query)


def test_wado_uri_gives_the_object(site: Site) -> None:
    r = _wado(site, "CT_small.dcm", contentType="application/dicom")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom")
    got = pydicom.dcmread(io.BytesIO(r.content))
    want = site.files["CT_small.dcm"].dataset()
    assert got.SOPInstanceUID == want.SOPInstanceUID
    assert got.PixelData == want.PixelData
    r = _wado(site, "sr")  # no contentType, no pixel data: the object
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom")


def test_wado_uri_gives_a_jpeg(site: Site) -> None:
    r = _wado(site, "CT_small.dcm", contentType="image/jpeg", rows="64", columns="64")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    r = _wado(site, "rtdose.dcm", frameNumber="9", contentType="image/png")
    ds = site.files["rtdose.dcm"]
    frame9 = site.client().retrieve_instance_frames_rendered(
        ds.study, ds.series, ds.instance, [9], media_types=("image/png",)
    )
    assert np.array_equal(png(r.content), png(frame9))
    white = _wado(
        site, "CT_small.dcm", contentType="image/png", windowCenter="-20000", windowWidth="10"
    )
    assert (png(white.content) == 255).all()
    default = _wado(site, "CT_small.dcm")
    assert default.headers["content-type"] == "image/jpeg"


def test_wado_uri_refusals(site: Site) -> None:
    assert _wado(site, "CT_small.dcm", contentType="image/gif").status_code == 406
    assert _wado(site, "CT_small.dcm", requestType="WADO-RS").status_code == 400
    assert _wado(site, "CT_small.dcm", windowCenter="40").status_code == 400
    assert _wado(site, "CT_small.dcm", frameNumber="x").status_code == 400
    assert _wado(site, "CT_small.dcm", contentType="application/dicom", rows="5").status_code == 400
    assert _wado(site, "CT_small.dcm", region="0.5,0.5,0.2,0.2").status_code == 400
    assert _wado(site, "CT_small.dcm", frameNumber="2").status_code == 404
    r = site.session().get(site.root + "/wado", params={"requestType": "WADO", "studyUID": "1.2"})
    assert r.status_code == 400


# -- transcoding a compressed object on retrieve --------------------------------------------------


def test_compressed_instances_retrieved_uncompressed_when_asked(site: Site) -> None:
    client = site.client()
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm"):
        stored = site.files[name]
        got = client.retrieve_instance(
            stored.study,
            stored.series,
            stored.instance,
            media_types=(("application/dicom", EXPLICIT_LE),),
        )
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE, name
        want = stored.dataset().pixel_array
        assert np.array_equal(got.pixel_array, want), name


# -- locating frames, without a server ------------------------------------------------------------


def test_locating_frames_reads_only_headers_and_the_frame(tmp_path: Path) -> None:
    """A counting opener: locating frame 20 of 30 reads item headers and fragment tails,
    never the other frames."""
    stored = _refragmented(tmp_path, bot=False)
    size = stored.path.stat().st_size
    counted: list[int] = []

    class Counting(io.FileIO):
        def read(self, n: int = -1) -> bytes:  # type: ignore[override]
            data = super().read(n)
            counted.append(len(data))
            return data

    ds = _read(stored.path)
    reader = px.DatasetReader(
        lambda: Counting(stored.path, "rb"), ds.file_meta.TransferSyntaxUID, 1 << 30
    )
    with reader:
        header = px.read_header(reader)
        _image, frames = px.locate_frames(reader, header)
        assert frames is not None and len(frames) == 30
        before = sum(counted)
        frame = b"".join(px.read_frame(reader, header, frames[19]))
    want = list(generate_frames(ds.PixelData, number_of_frames=30))[19]
    assert frame == want
    assert sum(counted) - before == len(want)
    assert before < size / 4  # headers, item headers and tails only


def test_realigned_bits() -> None:
    bits = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    assert px.realign_bits(packed, 3, 5) == np.packbits(bits[3:8], bitorder="little").tobytes()


def test_windows() -> None:
    with pytest.raises(ValueError):
        px.Window(40, 0.5)
    assert px.Window(40, 0.5, "LINEAR_EXACT").width == 0.5
    with pytest.raises(ValueError):
        px.Window(40, 400, "CUBIC")
