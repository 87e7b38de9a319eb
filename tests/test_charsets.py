"""Names in any character set match in C-FIND and come back intact.

Acceptance: C-FIND responses carry RetrieveAETitle and the stored object's
SpecificCharacterSet, so names in any character set (ISO 2022 Japanese and Korean,
GB18030, UTF-8, Greek, Cyrillic, Hebrew, Arabic...) match and come back intact; the
pydicom wheel's character-set test files show it.

Each file of pydicom/data/charset_files is stored as received (raw bytes). Files
without UIDs, files reusing an earlier file's SOP Instance UID (the archive would keep
the first copy) and files whose file meta names another SOP instance than their
dataset (the C-STORE would be refused as a mismatch) are stored as copies with fresh
UIDs. Queries are sent in UTF-8
(ISO_IR 192) whatever the stored character set.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from conftest import CLIENT_AET, SERVER_AET, Server, dcmtk, start_server
from pacsvault.dicom.uids import is_valid_uid

CHARSET_FILES = Path(pydicom.__file__).parent / "data" / "charset_files"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UID_KEYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Files that must be among those stored and queried, by what they show.
REQUIRED = {
    "chrH31.dcm": "Japanese, ISO 2022 IR 87",
    "chrH32.dcm": "Japanese, ISO 2022 IR 13 + IR 87",
    "chrJapMulti.dcm": "Japanese, ISO 2022 IR 87 only",
    "chrI2.dcm": "Korean, ISO 2022 IR 149",
    "chrKoreanMulti.dcm": "Korean, ISO 2022 IR 149 only",
    "chrX2.dcm": "Chinese, GB18030",
    "chrX1.dcm": "UTF-8, ISO_IR 192",
    "chrGreek.dcm": "Greek, ISO_IR 126",
    "chrRuss.dcm": "Cyrillic, ISO_IR 144",
    "chrHbrw.dcm": "Hebrew, ISO_IR 138",
    "chrArab.dcm": "Arabic, ISO_IR 127",
    "chrGerm.dcm": "Latin-1, ISO_IR 100",
}


def charset_values(value: object) -> list[str]:
    """SpecificCharacterSet as a list of strings, whatever form pydicom gave it."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Stored:
    """One charset file as stored: the original, the file actually sent, its keys."""

    original: Path
    sent: Path
    copied: bool  # sent as a copy with fresh UIDs
    charset: list[str]
    name: str | None  # the decoded PatientName, None when the file has none
    study: str
    patient_id: str


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def prepare(out: Path) -> list[Stored]:
    """Every charset file, ready to send; copies get fresh, deterministic UIDs."""
    out.mkdir(parents=True, exist_ok=True)
    prepared: list[Stored] = []
    seen: set[str] = set()
    for path in sorted(CHARSET_FILES.glob("*.dcm")):
        ds = _read(path)
        uids = [str(ds.get(k, "") or "") for k in UID_KEYS]
        meta = ds.file_meta
        copy = (
            not all(is_valid_uid(u) for u in uids)
            or uids[1] in seen  # the archive would keep the earlier file's copy
            or meta.get("MediaStorageSOPInstanceUID") != uids[1]  # refused as a mismatch
            or meta.get("MediaStorageSOPClassUID") != uids[0]
        )
        sent = path
        if copy:
            # Elements not touched stay raw, so the names keep their original bytes.
            if not is_valid_uid(uids[0]):
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[path.name, "instance"])
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[path.name, "study"])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[path.name, "series"])
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            sent = out / path.name
            ds.save_as(sent)
            ds = _read(sent)
        seen.add(str(ds.SOPInstanceUID))
        name = _read(path).get("PatientName")
        prepared.append(
            Stored(
                original=path,
                sent=sent,
                copied=copy,
                charset=charset_values(ds.get("SpecificCharacterSet")),
                name=str(name) if name else None,
                study=str(ds.StudyInstanceUID),
                patient_id=str(ds.get("PatientID", "") or ""),
            )
        )
    return prepared


@dataclass
class Loaded:
    server: Server
    files: list[Stored]
    tmp: Path


def associate(server: Server, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
    assert assoc.is_established, server.log_text()[-3000:]
    return assoc


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("charsets")
    server = start_server(tmp, allow="echo,store,find")
    files = prepare(tmp / "copies")
    contexts = set()
    for f in files:
        meta = _read(f.sent).file_meta
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the names go on the wire as in the files
    try:
        assoc = associate(server, sorted(contexts))
        try:
            statuses = [assoc.send_c_store(f.sent, msg_id=n + 1) for n, f in enumerate(files)]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    refused = [
        (f.original.name, s.get("Status"), s.get("ErrorComment"))
        for f, s in zip(files, statuses, strict=True)
        if s.get("Status") != 0x0000
    ]
    assert not refused, (refused, server.log_text()[-3000:])
    yield Loaded(server, files, tmp)
    server.stop()


def named(loaded: Loaded) -> list[Stored]:
    return [f for f in loaded.files if f.name]


def find(server: Server, identifier: Dataset) -> list[tuple[int, Dataset | None]]:
    """Every response of one C-FIND (Study Root): (status, identifier)."""
    assoc = associate(server, [(StudyRootQueryRetrieveInformationModelFind, EXPLICIT_LE)])
    try:
        out = []
        for status, ident in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            assert status, "no response: the association was aborted or timed out"
            out.append((int(status.Status), ident))
        return out
    finally:
        assoc.release()


def matches(server: Server, identifier: Dataset) -> list[Dataset]:
    responses = find(server, identifier)
    assert responses[-1][0] == 0x0000, responses[-1]
    assert all(code in (0xFF00, 0xFF01) for code, _ in responses[:-1]), responses
    return [ident for code, ident in responses[:-1] if ident is not None]


def utf8_query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def file_id(f: Stored) -> str:
    return f.original.name


def test_the_charset_files_used(loaded: Loaded) -> None:
    files = loaded.files
    used = {f.original.name for f in files}
    copies = sorted(f.original.name for f in files if f.copied)
    print(f"\n{len(files)} charset files stored, {len(named(loaded))} with a PatientName")
    print("stored as copies with fresh UIDs:", copies)
    assert len(files) == len(list(CHARSET_FILES.glob("*.dcm")))
    assert set(REQUIRED) <= used
    assert all(f.name for f in files if f.original.name in REQUIRED)
    with loaded.server.index() as conn:
        count = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
    assert count == len(files)


@pytest.mark.parametrize("level", ["STUDY", "IMAGE"])
def test_name_matches_and_comes_back_intact(loaded: Loaded, level: str) -> None:
    wrong = []
    for f in named(loaded):
        assert f.name is not None
        query = utf8_query(level, StudyInstanceUID=f.study, PatientName=f.name, PatientID="")
        found = matches(loaded.server, query)
        if len(found) != 1:
            wrong.append((file_id(f), f"{len(found)} matches"))
            continue
        rsp = found[0]
        got_charset = charset_values(rsp.get("SpecificCharacterSet"))
        if got_charset != f.charset:
            wrong.append((file_id(f), "charset", got_charset, f.charset))
        if str(rsp.PatientName) != f.name:
            wrong.append((file_id(f), "name", str(rsp.PatientName), f.name))
        if rsp.get("RetrieveAETitle") != SERVER_AET:
            wrong.append((file_id(f), "RetrieveAETitle", rsp.get("RetrieveAETitle")))
        if str(rsp.get("PatientID", "")) != f.patient_id:
            wrong.append((file_id(f), "PatientID", rsp.get("PatientID"), f.patient_id))
        if str(rsp.StudyInstanceUID) != f.study:
            wrong.append((file_id(f), "StudyInstanceUID", rsp.StudyInstanceUID))
    assert not wrong, wrong


def test_wrong_name_does_not_match(loaded: Loaded) -> None:
    for f in named(loaded):
        assert f.name is not None
        query = utf8_query("STUDY", StudyInstanceUID=f.study, PatientName=f.name + "X")
        assert matches(loaded.server, query) == [], file_id(f)


def test_nameless_files_keep_their_charset(loaded: Loaded) -> None:
    """chrSQEncoding*.dcm have no PatientName and no UIDs: stored as copies with UIDs."""
    nameless = [f for f in loaded.files if not f.name]
    assert nameless, "pydicom ships files without a top-level PatientName"
    for f in nameless:
        found = matches(loaded.server, utf8_query("STUDY", StudyInstanceUID=f.study))
        assert len(found) == 1, file_id(f)
        assert charset_values(found[0].get("SpecificCharacterSet")) == f.charset
        assert found[0].RetrieveAETitle == SERVER_AET


def _family(name: str) -> str:
    """The family name of the first component group."""
    return name.split("=")[0].split("^")[0]


def _fold(text: str) -> str:
    return text.casefold()


def _expected_studies(loaded: Loaded, pattern: str) -> set[str]:
    return {
        f.study
        for f in named(loaded)
        if f.name is not None and fnmatch.fnmatchcase(_fold(f.name), _fold(pattern))
    }


def test_wildcard_on_the_family_name(loaded: Loaded) -> None:
    wrong = []
    for f in named(loaded):
        assert f.name is not None
        pattern = _family(f.name) + "*"
        query = utf8_query("STUDY", PatientName=pattern, StudyInstanceUID="")
        found = matches(loaded.server, query)
        studies = {str(r.StudyInstanceUID) for r in found}
        expected = _expected_studies(loaded, pattern)
        assert f.study in expected  # the second implementation agrees the pattern fits
        if studies != expected or len(found) != len(expected):
            wrong.append((file_id(f), pattern, sorted(studies), sorted(expected)))
            continue
        rsp = next(r for r in found if str(r.StudyInstanceUID) == f.study)
        if str(rsp.PatientName) != f.name:
            wrong.append((file_id(f), "name", str(rsp.PatientName), f.name))
    assert not wrong, wrong


def test_wildcard_on_an_ideographic_component(loaded: Loaded) -> None:
    """'*山田*' style patterns: the wildcard matches inside the ideographic group."""
    grouped = [f for f in named(loaded) if f.name and "=" in f.name and f.name.split("=")[1]]
    assert len(grouped) >= 4  # Japanese, Korean, Chinese (UTF-8 and GB18030)
    for f in grouped:
        assert f.name is not None
        pattern = "*=" + f.name.split("=")[1].split("^")[0] + "*"
        query = utf8_query("STUDY", PatientName=pattern, StudyInstanceUID="")
        found = matches(loaded.server, query)
        assert {str(r.StudyInstanceUID) for r in found} == _expected_studies(loaded, pattern)
        assert f.study in {str(r.StudyInstanceUID) for r in found}, (file_id(f), pattern)


def _raw_name(path: Path) -> bytes:
    """The PatientName value bytes as written in a file, without trailing padding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    raw = ds.get_item(0x00100010)
    assert raw is not None, path
    return bytes(raw.value).rstrip(b" \x00")


def test_findscu_gets_the_japanese_name_intact(loaded: Loaded, tmp_path: Path) -> None:
    f = next(f for f in loaded.files if f.original.name == "chrH31.dcm")
    assert f.name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    proc = dcmtk(
        "findscu",
        "-aet",
        CLIENT_AET,
        "-aec",
        SERVER_AET,
        "-S",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "SpecificCharacterSet=ISO_IR 192",
        "-k",
        f"PatientName={f.name}",  # UTF-8 on the command line, as the query declares
        "-k",
        "StudyInstanceUID",
        "-k",
        "RetrieveAETitle",
        "127.0.0.1",
        str(loaded.server.port),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    responses = sorted(tmp_path.glob("rsp*.dcm"))
    assert len(responses) == 1, proc.stdout + proc.stderr
    rsp = pydicom.dcmread(responses[0])
    assert str(rsp.StudyInstanceUID) == f.study
    assert charset_values(rsp.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(rsp.PatientName) == f.name
    assert rsp.RetrieveAETitle == SERVER_AET
    # Byte for byte the ISO 2022 encoding of the stored file, escape sequences included.
    assert _raw_name(responses[0]) == _raw_name(f.original)


def test_patient_name_stays_intact_across_studies_in_other_charsets(
    server: Server, tmp_path: Path
) -> None:
    """One patient, two studies: the first in UTF-8 with an ideographic name, the second
    without SpecificCharacterSet (default repertoire) and the name in ASCII only.

    Querying the second study must not send the patient's indexed name under a character
    set that cannot represent it (it would come back as 'Wang^XiaoDong=?^??')."""
    first = CHARSET_FILES / "chrX1.dcm"
    ds = _read(first)
    del ds.SpecificCharacterSet
    ds.PatientName = "Wang^XiaoDong"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["ascii copy", "instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["ascii copy", "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["ascii copy", "series"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    second = tmp_path / "ascii.dcm"
    ds.save_as(second)

    contexts = [(str(ds.SOPClassUID), EXPLICIT_LE)]
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = associate(server, contexts)
        try:
            statuses = [assoc.send_c_store(p).get("Status") for p in (first, second)]
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert statuses == [0x0000, 0x0000]

    names = {"Wang^XiaoDong=王^小東", "Wang^XiaoDong"}
    for study in (str(_read(first).StudyInstanceUID), str(ds.StudyInstanceUID)):
        for level in ("STUDY", "IMAGE"):
            found = matches(server, utf8_query(level, StudyInstanceUID=study, PatientName=""))
            assert len(found) == 1
            got = str(found[0].PatientName)
            charset = charset_values(found[0].get("SpecificCharacterSet"))
            assert got in names, (level, study, got, charset)
