"""DICOMweb without credentials (EXP-WEB-04 to -06): what a stranger can search, fetch, store.

Counts, never values. QIDO-RS answers are counted like C-FIND answers (scan/tally.py:
identifiers hashed in memory, then dropped); when the server's native counters were
readable (Orthanc ``/statistics``) they are used instead of paging. The retrieve tests
read a response to its end and count its parts and bytes chunk by chunk, keeping none.
One StudyInstanceUID, and for WADO-URI one series and instance UID, stay in memory for
those tests and are never reported. STOW-RS is tried only with ``--intrusive``, with the
synthetic object of scan/synthetic.py, whose UIDs are reported so it can be deleted.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Count, Finding
from pacsvault.scan.http import Reply, drain, fetch
from pacsvault.scan.synthetic import PATIENT_NAME, part10_bytes, synthetic_object, uids_of
from pacsvault.scan.tally import Tally

#: DICOMweb roots of common products and proxies, tried in this order.
ROOTS = ("/dicom-web", "/dicomweb", "/wado-rs", "/rs", "/orthanc/dicom-web",
         "/dcm4chee-arc/aets/DCM4CHEE/rs", "/wado")  # fmt: skip
#: WADO-URI endpoints (Orthanc core and DICOMweb plugin, dcm4chee, generic).
WADO_URI_PATHS = ("/wado", "/dicom-web/wado", "/wado-uri", "/dcm4chee-arc/aets/DCM4CHEE/wado")
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
#: Return keys for counting: related series and instances, modalities, date, patient ID.
INCLUDE_FIELDS = ("00201206", "00201208", "00080061", "00080020", "00100020")
PAGE_SIZE = 100
MAX_PAGE_BODY = 16 << 20
MAX_RETRIEVE = 64 << 20


@dataclass
class Root:
    """A DICOMweb root found: open (200, with its first answer) or asking for credentials."""

    path: str
    status: int
    first: list[Any] = field(default_factory=list)  # in memory only


@dataclass
class Paged:
    """How paging QIDO-RS went: requests made, and why the count is a lower bound (if so)."""

    requests: int
    incomplete: str = ""


def answers(reply: Reply | None) -> list[Any] | None:
    """The QIDO-RS answers in *reply*: a list (204 = none), None when it is not DICOM JSON."""
    if reply is None:
        return None
    if reply.status == 204:
        return []
    if reply.status != 200:
        return None
    try:
        data = json.loads(reply.body)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
        return None
    if data and "0020000D" not in data[0]:
        return None
    return data


def _qido(base: str, path: str, params: list[tuple[str, str]], timeout: float) -> Reply | None:
    """GET a QIDO-RS resource as DICOM JSON."""
    query = f"?{urlencode(params)}" if params else ""
    return fetch(f"{base}{path}{query}", timeout, headers={"Accept": DICOM_JSON},
                 limit=MAX_PAGE_BODY)  # fmt: skip


def find_root(base: str, timeout: float) -> Root | None:
    """The first root whose ``/studies`` answers DICOM JSON without credentials; else the
    first that asked for credentials (401/403); None when there is no DICOMweb here."""
    protected = None
    for path in ROOTS:
        reply = _qido(base, f"{path}/studies", [("limit", "1")], timeout)
        found = answers(reply)
        if found is not None:
            return Root(path, 200, found)
        if reply is not None and reply.status in (401, 403) and protected is None:
            protected = Root(path, reply.status)
    return protected


def page_studies(base: str, root: str, timeout: float, budget: int, tally: Tally) -> Paged:
    """Count every study by ``limit``/``offset`` paging until an empty page.

    A page that adds no new study means the server ignores ``offset``; a failed page,
    or the budget, ends the count early: the count is then a lower bound.
    """
    offset, requests = 0, 0
    include = [("includefield", tag) for tag in INCLUDE_FIELDS]
    while True:
        params = [("limit", str(PAGE_SIZE)), ("offset", str(offset)), *include]
        page = answers(_qido(base, f"{root}/studies", params, timeout))
        requests += 1
        if page is None:
            return Paged(requests, f"the page at offset {offset} was not answered")
        if not page:
            return Paged(requests)
        if not sum(tally.add_json(study) for study in page):
            return Paged(requests, "the server repeats its answers (offset ignored)")
        offset += len(page)
        if tally.read >= budget:
            return Paged(requests, "the --budget of answers was reached")


class PartCounter:
    """Counts the parts of a multipart body fed in chunks, by its delimiters (also when one
    straddles two chunks), and notes whether a Part-10 header ("DICM") went by."""

    def __init__(self, boundary: str) -> None:
        self.marker = b"--" + boundary.encode("latin-1") if boundary else b""
        self.tail = b""
        self.delimiters = 0
        self.dicm = False

    def __call__(self, chunk: bytes) -> None:
        data = self.tail + chunk
        self.dicm = self.dicm or b"DICM" in data
        if self.marker:
            start = 0
            while (at := data.find(self.marker, start)) >= 0:
                if at + len(self.marker) > len(self.tail):  # not counted with the last chunk
                    self.delimiters += 1
                start = at + 1
        self.tail = data[-max(len(self.marker), 4) + 1 :]

    def parts(self, truncated: bool) -> int:
        """Objects seen: a multipart body's parts (the closing delimiter starts none, and
        was not read when truncated); a single-part body counts one when it was DICOM."""
        if not self.marker:
            return int(self.dicm)
        return self.delimiters if truncated else max(self.delimiters - 1, 0)


def _boundary(content_type: str) -> str:
    """The multipart boundary of a Content-Type header ('' when there is none)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1) if m else ""


@dataclass
class Retrieved:
    """A retrieve that returned data: how much, never what."""

    path: str
    objects: int
    size: int
    truncated: bool


def retrieve_study(base: str, root: str, study: str, timeout: float) -> Retrieved | None:
    """WADO-RS: GET one study as multipart DICOM, read and discarded; None if refused."""
    url = f"{base}{root}/studies/{quote(study)}"
    counters: list[PartCounter] = []

    def start(content_type: str) -> PartCounter:
        counters.append(PartCounter(_boundary(content_type)))
        return counters[-1]

    drained = None
    for accept in (MULTIPART_DICOM, f"{MULTIPART_DICOM}; transfer-syntax=*"):
        drained = drain(url, timeout, start, headers={"Accept": accept}, limit=MAX_RETRIEVE)
        if drained is None or drained.status != 406:  # 406: try the other Accept
            break
    if drained is None or drained.status != 200 or not drained.size or not counters:
        return None
    objects = counters[-1].parts(drained.truncated)
    return Retrieved(f"{root}/studies/<study>", objects, drained.size, drained.truncated)


def retrieve_metadata(base: str, root: str, study: str, timeout: float) -> Retrieved | None:
    """WADO-RS: GET one study's metadata (DICOM JSON), counted and discarded."""
    reply = fetch(f"{base}{root}/studies/{quote(study)}/metadata", timeout,
                  headers={"Accept": DICOM_JSON}, limit=MAX_PAGE_BODY)  # fmt: skip
    if reply is None or reply.status != 200:
        return None
    try:
        data = json.loads(reply.body)
    except ValueError:
        return None
    if not isinstance(data, list) or not data:
        return None
    return Retrieved(f"{root}/studies/<study>/metadata", len(data), len(reply.body), False)


def one_instance(base: str, root: str, study: str, timeout: float) -> tuple[str, str] | None:
    """(series UID, instance UID) of one instance of *study*, in memory for WADO-URI."""
    found = answers(_qido(base, f"{root}/studies/{quote(study)}/instances", [("limit", "1")],
                          timeout))  # fmt: skip
    if not found:
        return None
    try:
        return found[0]["0020000E"]["Value"][0], found[0]["00080018"]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None


def retrieve_uri(base: str, study: str, series: str, instance: str, timeout: float
                 ) -> Retrieved | None:  # fmt: skip
    """WADO-URI: GET one object as application/dicom from the first endpoint that serves it."""
    # "/" left unescaped: Orthanc does not decode the content type.
    params = urlencode({"requestType": "WADO", "studyUID": study, "seriesUID": series,
                        "objectUID": instance, "contentType": "application/dicom"},
                       safe="/")  # fmt: skip
    for path in WADO_URI_PATHS:
        counter = PartCounter("")
        drained = drain(f"{base}{path}?{params}", timeout, lambda _ctype, c=counter: c,
                        limit=MAX_RETRIEVE)  # fmt: skip
        if drained is None or drained.status != 200 or not drained.size:
            continue
        ctype = drained.content_type.lower()
        if counter.dicm or ctype.startswith(("application/dicom", "image/")):
            return Retrieved(f"{path}?requestType=WADO", 1, drained.size, drained.truncated)
    return None


def stow_test(base: str, root: str, timeout: float, where: str) -> Finding | None:
    """EXP-WEB-06 (--intrusive): STOW-RS one synthetic object; a finding when it was stored."""
    ds = synthetic_object()
    boundary = secrets.token_hex(16)
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10_bytes(ds)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"{MULTIPART_DICOM}; boundary={boundary}", "Accept": DICOM_JSON}
    reply = fetch(f"{base}{root}/studies", timeout, method="POST", headers=headers, body=body)
    if reply is None or not _stored(reply):
        return None
    return finding(
        "WEB-STOW-OPEN", where,
        f"POST {root}/studies stored a synthetic object without credentials (HTTP "
        f"{reply.status}); delete study {ds.StudyInstanceUID} (patient {PATIENT_NAME})",
        details={"root": root, **uids_of(ds)},
    )  # fmt: skip


def _stored(reply: Reply) -> bool:
    """200, or 202 whose response lists a stored instance (ReferencedSOPSequence)."""
    if reply.status == 200:
        return True
    if reply.status != 202:
        return False
    try:
        referenced = json.loads(reply.body).get("00081199", {}).get("Value")
    except (ValueError, AttributeError):
        return False
    return bool(referenced)


def probe_dicomweb(
    base: str,
    where: str,
    timeout: float,
    *,
    budget: int = 100_000,
    intrusive: bool = False,
    native: dict[str, Count] | None = None,
) -> list[Finding]:
    """The DICOMweb checks on one web endpoint; *native* = counts already read from the
    server's own counters (Orthanc ``/statistics``), used instead of paging."""
    root = find_root(base, timeout)
    if root is None:
        return []
    findings: list[Finding] = []
    if root.status != 200:
        findings.append(finding(
            "WEB-DICOMWEB-PROTECTED", where,
            f"GET {root.path}/studies asked for credentials (HTTP {root.status})",
            details={"root": root.path},
        ))  # fmt: skip
    else:
        qido, sample = _qido_finding(base, root, where, timeout, budget, native)
        findings.append(qido)
        if sample:
            findings += _retrieve_findings(base, root.path, sample, where, timeout)
    if intrusive:
        stored = stow_test(base, root.path, timeout, where)
        if stored is not None:
            findings.append(stored)
    return findings


def _qido_finding(
    base: str, root: Root, where: str, timeout: float, budget: int,
    native: dict[str, Count] | None,
) -> tuple[Finding, str]:  # fmt: skip
    """WEB-QIDO-OPEN with counts, and one StudyInstanceUID (in memory) for the retrieves."""
    tally = Tally()
    for study in root.first:
        tally.add_json(study)
    if native:
        counts = dict(native)
        studies = native["studies"].value if "studies" in native else tally.responses
    else:
        paged = page_studies(base, root.path, timeout, budget, tally)
        quality = "lower bound" if paged.incomplete else "exact"
        method = f"QIDO-RS {root.path}/studies paged by limit/offset ({paged.requests} requests)"
        counts = {
            "patients": Count(len(tally.patients), quality, "distinct hashed PatientID, " + method),
            "studies": Count(tally.responses, quality, method),
        }
        if tally.counts_complete:
            counts["series"] = Count(tally.series, quality, "sum of NumberOfStudyRelatedSeries")
            counts["instances"] = Count(
                tally.instances, quality, "sum of NumberOfStudyRelatedInstances"
            )
        studies = tally.responses
    details = {
        "root": root.path,
        "modalities": sorted(tally.modalities),
        "date_range": [tally.first_date, tally.last_date] if tally.first_date else [],
        "identifying_fields_readable": sorted(tally.fields_seen),
    }
    if not studies and not tally.responses:
        text = f"GET {root.path}/studies answered without credentials (no studies yet)"
        return finding("WEB-QIDO-OPEN", where, text, counts=counts, details=details,
                       variant="while empty"), ""  # fmt: skip
    text = f"GET {root.path}/studies lists {studies} studies without credentials"
    return finding("WEB-QIDO-OPEN", where, text, counts=counts, details=details), tally.sample_study


def _retrieve_findings(
    base: str, root: str, study: str, where: str, timeout: float
) -> list[Finding]:
    """WADO-RS (the study, else its metadata) and WADO-URI (one object) of one study."""
    findings: list[Finding] = []
    got = retrieve_study(base, root, study, timeout) or retrieve_metadata(
        base, root, study, timeout
    )
    if got is not None:
        what = "the metadata of " if got.path.endswith("/metadata") else ""
        findings.append(finding(
            "WEB-WADO-OPEN", where,
            f"GET {got.path} returned {what}{got.objects} objects ({_size(got)}) of one study "
            "without credentials; read and discarded",
            details={"path": got.path, "objects": got.objects, "bytes": got.size,
                     "truncated": got.truncated},
        ))  # fmt: skip
    ids = one_instance(base, root, study, timeout)
    uri = retrieve_uri(base, study, *ids, timeout) if ids else None
    if uri is not None:
        findings.append(finding(
            "WEB-WADO-URI-OPEN", where,
            f"GET {uri.path} returned one object ({_size(uri)}) without credentials; read "
            "and discarded",
            details={"path": uri.path, "bytes": uri.size, "truncated": uri.truncated},
        ))  # fmt: skip
    return findings


def _size(got: Retrieved) -> str:
    """'12345 bytes', or 'at least N bytes' when reading stopped at the limit."""
    return f"{'at least ' if got.truncated else ''}{got.size} bytes"
