"""Unit tests of the pure DICOM rules: UID validation and C-FIND matching conditions."""

from __future__ import annotations

import pytest

from pacsvault.dicom.attributes import BY_KEYWORD, normalize_time
from pacsvault.dicom.matching import AnyOf, Exact, InvalidQuery, Range, Wildcard, parse_condition
from pacsvault.dicom.uids import is_valid_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.0.2", "2.25." + "9" * 59])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "1..2", "1.02.3", ".1", "1.", "1.2.a", "1/2", "../etc", "1.2 ", "9" * 65, None]
)
def test_invalid_uids(uid: str | None) -> None:
    assert not is_valid_uid(uid)


def cond(keyword: str, value: str | None):
    return parse_condition(BY_KEYWORD[keyword], value)


def test_universal_matching() -> None:
    assert cond("PatientName", None) is None
    assert cond("PatientName", "") is None
    assert cond("PatientName", "*") is None
    assert cond("StudyDate", "") is None


def test_single_value_and_wildcards() -> None:
    assert cond("PatientID", "ABC") == Exact("ABC")
    assert cond("PatientName", "DOE^JOHN^^^") == Exact("DOE^JOHN", fold=True)
    assert cond("PatientName", "DO?*") == Wildcard("DO?*", fold=True)
    assert cond("AccessionNumber", "A1*") == Wildcard("A1*", fold=False)


def test_uid_lists() -> None:
    assert cond("StudyInstanceUID", "1.2.3\\1.2.4") == AnyOf(("1.2.3", "1.2.4"))
    assert cond("StudyInstanceUID", "1.2.3") == Exact("1.2.3")
    # Leading zeros are not conformant, but safe: stored objects may carry them.
    assert cond("StudyInstanceUID", "1.2.3\\1.02") == AnyOf(("1.2.3", "1.02"))
    with pytest.raises(InvalidQuery):
        cond("StudyInstanceUID", "1.2.3\\1.2.a")


def test_date_ranges() -> None:
    assert cond("StudyDate", "20200101-20201231") == Range("20200101", "20201231")
    assert cond("StudyDate", "-20201231") == Range(None, "20201231")
    assert cond("StudyDate", "20200101-") == Range("20200101", None)
    assert cond("StudyDate", "20200101") == Exact("20200101")
    for bad in ("2020-13", "20201301x", "-"):
        with pytest.raises(InvalidQuery):
            cond("StudyDate", bad)


def test_time_ranges_pad_their_bounds() -> None:
    assert cond("StudyTime", "09-1130") == Range("090000", "113059.999999")
    assert cond("StudyTime", "101010.5-") == Range("101010.5", None)
    assert normalize_time("10:12") == "101200"
    with pytest.raises(InvalidQuery):
        cond("StudyTime", "1x-12")


def test_modalities_in_study_is_a_value_list() -> None:
    assert cond("ModalitiesInStudy", "CT\\MR") == AnyOf(("CT", "MR"))


@pytest.mark.parametrize("source_aet", ["STORESCU", "ODD", None])
def test_file_header_equals_pydicoms(source_aet: str | None) -> None:
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    from pacsvault.dicom.part10 import (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
        CutOff,
        file_header,
        split_part10,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.44"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_aet:
        meta.SourceApplicationEntityTitle = source_aet
    expected = BytesIO()
    expected.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    ours = file_header(
        "1.2.840.10008.5.1.4.1.1.2", "1.2.3.44", "1.2.840.10008.1.2.4.50", source_aet
    )
    assert ours == expected.getvalue()
    first_element = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    assert split_part10(ours + first_element) == ("1.2.840.10008.1.2.4.50", len(ours))
    with pytest.raises(CutOff):  # a header alone may be a stream's first bytes: wait for more
        split_part10(ours)


# -- C-FIND responses: the hand encoder gives pydicom's bytes ---------------------------------

CHARSET_ROWS = [
    (None, "SMITH^JOHN"),
    (None, "MÜLLER^JÖRG"),  # non-ASCII without a declared set: answered in UTF-8
    ("ISO_IR 100", "MÜLLER^JÖRG"),
    ("ISO_IR 100", "ΔΗΜΗΤΡΗΣ"),  # not Latin-1: UTF-8
    ("ISO_IR 192", "山田^太郎"),
    ("ISO_IR 144", "ИВАНОВ^ИВАН"),
]


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
@pytest.mark.parametrize(("charset", "name"), CHARSET_ROWS)
@pytest.mark.parametrize("model", ["patient", "study"])
def test_hand_encoded_responses_equal_pydicoms(ts: str, charset, name: str, model: str) -> None:
    from pydicom.dataset import Dataset

    from pacsvault.dicom.query import ResponseEncoder, find_response, parse_identifier
    from pacsvault.dicom.transcode import encode_dataset

    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.PatientName = "*"
    ident.StudyDate = ""
    ident.ModalitiesInStudy = ""
    ident.NumberOfStudyRelatedInstances = ""
    ident.SeriesNumber = ""
    ident.Modality = ""
    ident.add_new(0x00081111, "SQ", [])  # a sequence key we do not index
    ident.add_new(0x00280010, "US", None)  # Rows: a binary VR, not at this level
    row = {
        "patient_name": name, "patient_id": "PV1", "study_date": "20240102",
        "modalities_in_study": "CT\\MR", "number_of_study_related_instances": 12,
        "series_number": "3", "modality": "CT", "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4", "charset": charset,
    }  # fmt: skip
    query = parse_identifier(ident, model)
    expected = encode_dataset(find_response(ident, query, row, "PACSVAULT", model), ts)
    ours = ResponseEncoder(ident, query, "PACSVAULT", model, ts).encode(row)
    assert ours == expected
    # and both read back as the name that was stored, whatever the label says
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    back = read_dataset(DicomBytesIO(ours), ts == "1.2.840.10008.1.2", True)
    back.decode()
    assert str(back.PatientName) == name
    if not name.isascii():  # non-ASCII bytes always carry their label (PS3.5 6.1.2.3)
        assert back.get("SpecificCharacterSet") in (charset, "ISO_IR 192")


def test_iso_2022_and_big_endian_take_the_pydicom_path() -> None:
    from pydicom.dataset import Dataset

    from pacsvault.dicom.query import ResponseEncoder, parse_identifier

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = ""
    query = parse_identifier(ident, "study")
    row = {"patient_name": "ヤマダ", "charset": "\\ISO 2022 IR 87"}
    assert ResponseEncoder(ident, query, "P", "study", "1.2.840.10008.1.2").encode(row) is None
    big = ResponseEncoder(ident, query, "P", "study", "1.2.840.10008.1.2.2")
    assert big.encode({"patient_name": "A"}) is None
