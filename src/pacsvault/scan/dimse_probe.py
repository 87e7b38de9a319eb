"""DIMSE probes: what a stranger's association can do, in counts only.

Follows the checklist in shared/reference/exposure-checks.md section 6.2 (EXP-DIMSE-01 to
-07): an arbitrary called AE, bounded called-AE guessing, a random calling AE, C-ECHO,
the services accepted, and anonymous study- and patient-level C-FIND counted without
keeping any value. Patient IDs are hashed in memory with a per-run salt for
de-duplication and never written anywhere. One association at a time per host.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
import string
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Count, Finding
from pacsvault.scan.targets import Target
from pacsvault.scan.vulns import from_version_name

#: Called AE titles tried when an arbitrary one is refused (defaults of common products).
GUESSED_TITLES = ("ORTHANC", "DCM4CHEE", "ANY-SCP", "PACS", "STORESCP", "DCMQRSCP", "QRSCP",
                  "PACSVAULT", "CONQUESTSRV1", "ARCHIVE")  # fmt: skip
SERVICES = {
    str(Verification): "echo",
    str(StudyRootQueryRetrieveInformationModelFind): "find",
    str(PatientRootQueryRetrieveInformationModelFind): "find",
    str(StudyRootQueryRetrieveInformationModelGet): "get",
    str(StudyRootQueryRetrieveInformationModelMove): "move",
    str(ModalityWorklistInformationFind): "worklist",
    str(CTImageStorage): "store",
    str(MRImageStorage): "store",
    str(SecondaryCaptureImageStorage): "store",
}
FINGERPRINTS = {
    "1.2.276.0.7230010.3": "DCMTK (OFFIS) or a DCMTK-based product such as Orthanc",
    "1.2.826.0.1.3680043.9.3811": "pynetdicom",
    "1.2.40.0.13.1": "dcm4che",
}
PENDING = (0xFF00, 0xFF01)


def random_aet() -> str:
    """A calling AE title no site has registered."""
    return "X" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(7))


@dataclass
class Attempt:
    """The outcome of one association attempt."""

    state: str  # accepted, rejected or not-dicom
    reason: int | None = None  # A-ASSOCIATE-RJ reason
    transient: bool = False  # rejected-transient (e.g. the server is busy): worth a retry
    services: set[str] = field(default_factory=set)
    implementation: str = ""
    version: str = ""
    assoc: Association | None = None


def tcp_state(host: str, port: int, timeout: float) -> str:
    """'open', 'closed' or 'no-answer' for a plain TCP connect."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "no-answer"


def associate(host: str, port: int, calling: str, called: str, timeout: float) -> Attempt:
    """Like :func:`_associate_once`, retried a few times while the server answers 'busy'."""
    attempt = _associate_once(host, port, calling, called, timeout)
    for delay in (0.5, 1.0, 2.0):
        if not attempt.transient:
            break
        time.sleep(delay)
        attempt = _associate_once(host, port, calling, called, timeout)
    return attempt


def _associate_once(host: str, port: int, calling: str, called: str, timeout: float) -> Attempt:
    """Request an association proposing the probe contexts; keep it open when accepted."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for uid in SERVICES:
        ae.add_requested_context(uid)
    rejects: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejects.append(event.pdu)

    assoc = ae.associate(host, port, ae_title=called, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    if assoc.is_established:
        acceptor = assoc.acceptor
        return Attempt(
            "accepted",
            services={SERVICES[str(cx.abstract_syntax)] for cx in assoc.accepted_contexts},
            implementation=str(acceptor.implementation_class_uid or ""),
            version=str(acceptor.implementation_version_name or ""),
            assoc=assoc,
        )
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        rj = assoc.acceptor.primitive
        return Attempt("rejected", reason=rj.diagnostic, transient=rj.result == 0x02)
    if rejects:
        # pynetdicom 3.0 takes an A-ASSOCIATE-RJ followed at once by the close of the
        # connection (dcmqrscp rejects within a millisecond) for a failed connect.
        return Attempt(
            "rejected", reason=rejects[0].reason_diagnostic, transient=rejects[0].result == 0x02
        )
    return Attempt("not-dicom")


def _context_id(assoc: Association, uid: str) -> int | None:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == uid:
            return int(cx.context_id)
    return None


@dataclass
class Tally:
    """Counts gathered from C-FIND responses; identifiers only as salted hashes in memory."""

    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    responses: int = 0
    patients: set[str] = field(default_factory=set)
    series: int = 0
    instances: int = 0
    counts_complete: bool = True
    modalities: set[str] = field(default_factory=set)
    first_date: str = ""
    last_date: str = ""
    fields_seen: set[str] = field(default_factory=set)
    capped: bool = False
    sample_study: str = ""  # one StudyInstanceUID, kept in memory for the retrieve checks only

    def add_study(self, ds: Dataset) -> None:
        self.responses += 1
        if not self.sample_study:
            self.sample_study = str(ds.get("StudyInstanceUID", "") or "")
        pid = str(ds.get("PatientID", "") or "")
        self.patients.add(hmac.new(self.salt, pid.encode(), hashlib.sha256).hexdigest())
        for key in ("PatientName", "PatientBirthDate", "PatientID", "ReferringPhysicianName",
                    "AccessionNumber", "StudyDescription"):  # fmt: skip
            if ds.get(key):
                self.fields_seen.add(key)
        try:
            self.series += int(ds.get("NumberOfStudyRelatedSeries"))
            self.instances += int(ds.get("NumberOfStudyRelatedInstances"))
        except (TypeError, ValueError):
            self.counts_complete = False
        mods = ds.get("ModalitiesInStudy") or []
        self.modalities.update([mods] if isinstance(mods, str) else [str(m) for m in mods])
        date = str(ds.get("StudyDate", "") or "")
        if len(date) == 8 and date.isdigit():
            self.first_date = min(self.first_date or date, date)
            self.last_date = max(self.last_date, date)


def study_find(assoc: Association, budget: int) -> Tally | None:
    """Anonymous Study Root C-FIND at STUDY level; None when the server refused it."""
    cx = _context_id(assoc, str(StudyRootQueryRetrieveInformationModelFind))
    if cx is None:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "StudyDate",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances"):  # fmt: skip
        setattr(query, key, "")
    tally = Tally()
    cancelled = False
    for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind,
                                           msg_id=7):  # fmt: skip
        code = status.get("Status") if status else None
        if code in PENDING and ident is not None:
            tally.add_study(ident)
            if tally.responses >= budget and not cancelled:
                assoc.send_c_cancel(7, cx)
                cancelled = tally.capped = True
    return tally


def patient_find(assoc: Association, budget: int) -> int | None:
    """Number of patients a Patient Root PATIENT-level C-FIND returns; None if refused."""
    cx = _context_id(assoc, str(PatientRootQueryRetrieveInformationModelFind))
    if cx is None:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    query.NumberOfPatientRelatedStudies = ""
    n = 0
    for status, _ident in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind,
                                            msg_id=8):  # fmt: skip
        if status and status.get("Status") in PENDING:
            n += 1
            if n >= budget:
                assoc.send_c_cancel(8, cx)
                break
    return n


def worklist_find(assoc: Association, budget: int) -> int | None:
    """Scheduled procedure steps a universal worklist C-FIND returns; None if refused."""
    cx = _context_id(assoc, str(ModalityWorklistInformationFind))
    if cx is None:
        return None
    step = Dataset()
    step.Modality = ""
    step.ScheduledProcedureStepStartDate = ""
    query = Dataset()
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = [step]
    n = 0
    for status, _ident in assoc.send_c_find(query, ModalityWorklistInformationFind, msg_id=9):
        if status and status.get("Status") in PENDING:
            n += 1
            if n >= budget:
                assoc.send_c_cancel(9, cx)
                break
    return n


def retrieve_reach(assoc: Association, study_uid: str) -> dict[str, str]:
    """Whether C-GET and C-MOVE of one study are attempted for a stranger, without data.

    The C-GET proposes no storage context with the SCP role, so any sub-operation the
    server attempts must fail; the C-MOVE names a random destination, which a correctly
    configured server refuses as unknown (0xA801). Returns {service: verdict}.
    """
    out: dict[str, str] = {}
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    if _context_id(assoc, str(StudyRootQueryRetrieveInformationModelGet)) is not None:
        final = None
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            final = status
        attempted = (
            final is not None
            and (
                int(final.get("NumberOfFailedSuboperations", 0) or 0)
                + int(final.get("NumberOfCompletedSuboperations", 0) or 0)
                + int(final.get("NumberOfWarningSuboperations", 0) or 0)
            )
            > 0
        )
        out["get"] = "attempted" if attempted else "refused"
    move_cx = _context_id(assoc, str(StudyRootQueryRetrieveInformationModelMove))
    if move_cx is not None and assoc.is_established:
        final = None
        model = StudyRootQueryRetrieveInformationModelMove
        for status, _ in assoc.send_c_move(query, random_aet(), model):
            final = status
        code = final.get("Status") if final is not None else None
        out["move"] = "refused" if code in (0xA801, None) or (code or 0) >= 0xA000 else "attempted"
    return out


def synthetic_object() -> Dataset:
    """An obviously fake Secondary Capture (4x4 pixels) for the --intrusive write test."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = str(SecondaryCaptureImageStorage)
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.PatientName = "ZZZ^EXPAUDIT"
    ds.PatientID = "EXPAUDIT-SAFE-TO-DELETE"
    ds.StudyDescription = "SAFE TO DELETE - exposure audit by pacsvault scan"
    ds.Modality = "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    return ds


def store_test(assoc: Association, where: str) -> Finding | None:
    """EXP-DIMSE-12: does a stranger's C-STORE get stored?"""
    ds = synthetic_object()
    status = assoc.send_c_store(ds)
    code = status.get("Status") if status else None
    if code is None or not (code == 0 or 0xB000 <= code <= 0xBFFF):
        return None
    return finding(
        "DIMSE-STORE-OPEN", where,
        f"a synthetic object was stored (status 0x{code:04X}); delete study "
        f"{ds.StudyInstanceUID} (patient ZZZ^EXPAUDIT)",
        details={"study_instance_uid": ds.StudyInstanceUID,
                 "sop_instance_uid": ds.SOPInstanceUID},
    )  # fmt: skip


def _guarded(assoc: Association, step, *args):  # type: ignore[no-untyped-def]
    """Run one probe step; None when the server ended the association meanwhile.

    Some servers abort after refusing a request (Orthanc does after a refused worklist
    query or C-GET); what was found before that is kept.
    """
    if not assoc.is_established:
        return None
    try:
        return step(*args)
    except (RuntimeError, ValueError, OSError):
        return None


def probe(
    target: Target, *, timeout: float = 5.0, budget: int = 100_000, intrusive: bool = False
) -> list[Finding]:
    """Run the DIMSE checks against one target, one association at a time."""
    where = str(target)
    state = tcp_state(target.host, target.port, timeout)
    if state != "open":
        return [finding("NET-UNREACHABLE", where,
                        "connection refused" if state == "closed" else "no answer")]  # fmt: skip
    called = target.aet or "ANY-SCP"
    attempt = associate(target.host, target.port, random_aet(), called, timeout)
    findings: list[Finding] = []
    if attempt.state == "not-dicom":
        return [finding("NET-NOT-DICOM", where,
                        "the port is open but did not complete a DICOM association")]  # fmt: skip
    if attempt.state == "rejected" and attempt.reason == 7 and target.aet is None:
        for title in GUESSED_TITLES:
            attempt = associate(target.host, target.port, random_aet(), title, timeout)
            # Stop at the first title the server recognises (accepted, or the calling AE
            # refused instead); anything else means this title was not it.
            if attempt.state == "accepted" or attempt.reason == 3 or attempt.state != "rejected":
                called = title
                break
        if attempt.state == "accepted":
            findings.append(finding(
                "DIMSE-CALLED-AE-GUESSED", where,
                f"a stranger associated by guessing the called AE title '{called}'",
            ))  # fmt: skip
    elif attempt.state == "accepted" and target.aet is None:
        findings.append(finding(
            "DIMSE-ANY-CALLED-AE", where,
            "the server accepted an association addressed to 'ANY-SCP'",
        ))  # fmt: skip
    if attempt.state != "accepted":
        reason = {3: "calling AE not recognised", 7: "called AE not recognised"}.get(
            attempt.reason or 0, f"reason {attempt.reason}"
        )
        findings.append(finding("DIMSE-REFUSED", where, f"association rejected ({reason})"))
        findings.append(finding(
            "DIMSE-CLEARTEXT-SERVICE", where,
            "the port speaks DICOM without TLS: registered peers' traffic (images, names) can be "
            "read on the network path",
        ))  # fmt: skip
        return findings

    assoc = attempt.assoc
    assert assoc is not None
    try:
        findings.append(_fingerprint(where, attempt))
        findings += from_version_name(attempt.version, where)
        qr = attempt.services & {"find", "get", "move", "store"}
        findings.append(finding(
            "DIMSE-NO-CALLING-AE-CHECK", where,
            f"a random calling AE title was accepted; services offered to it: "
            f"{', '.join(sorted(attempt.services)) or 'none'}",
            variant=None if qr else "without Q/R or storage",
        ))  # fmt: skip
        findings.append(finding("DIMSE-CLEARTEXT", where, "the association was not encrypted"))
        if "echo" in attempt.services:
            status = _guarded(assoc, assoc.send_c_echo)
            if status and status.get("Status") == 0x0000:
                findings.append(finding("DIMSE-ECHO", where, "a stranger's C-ECHO succeeded"))
        tally = _guarded(assoc, study_find, assoc, budget) if "find" in attempt.services else None
        if tally is not None and tally.responses:
            findings.append(_find_finding(where, tally, budget))
            patients = _guarded(assoc, patient_find, assoc, budget)
            if patients:
                findings.append(finding(
                    "DIMSE-FIND-PATIENT", where, f"{patients} patients listed to a stranger",
                    counts={"patients": Count(patients, "exact" if patients < budget else
                                              "lower bound", "patient-level C-FIND")},
                ))  # fmt: skip
        stored = None
        if intrusive and "store" in attempt.services and assoc.is_established:
            stored = _guarded(assoc, store_test, assoc, where)
        if stored is not None:
            findings.append(stored)
        if "worklist" in attempt.services:
            steps = _guarded(assoc, worklist_find, assoc, budget)
            if steps:
                findings.append(finding(
                    "DIMSE-WORKLIST-OPEN", where,
                    f"{steps} scheduled procedure steps listed to a stranger",
                ))  # fmt: skip
        # Last: some servers abort the association after refusing a retrieve.
        sample = tally.sample_study if tally is not None else ""
        reach = (_guarded(assoc, retrieve_reach, assoc, sample) if sample else None) or {}
        if reach.get("get") == "attempted":
            findings.append(finding(
                "DIMSE-GET-OPEN", where,
                "the server started sending a study's images to a stranger (the scanner "
                "accepted none of them)",
            ))  # fmt: skip
        if reach.get("move") == "attempted":
            findings.append(finding(
                "DIMSE-MOVE-ANY-DESTINATION", where,
                "the server accepted a C-MOVE to a destination it does not know",
            ))  # fmt: skip
    finally:
        if assoc.is_established:
            assoc.release()
    return findings


def _fingerprint(where: str, attempt: Attempt) -> Finding:
    product = next(
        (name for root, name in FINGERPRINTS.items() if attempt.implementation.startswith(root)),
        "unknown product",
    )
    return finding(
        "DIMSE-FINGERPRINT", where,
        f"{product}: implementation class UID {attempt.implementation}, "
        f"version name '{attempt.version}'",
        details={"implementation_class_uid": attempt.implementation,
                 "implementation_version_name": attempt.version},
    )  # fmt: skip


def _find_finding(where: str, tally: Tally, budget: int) -> Finding:
    quality = "lower bound" if tally.capped else "exact"
    method = "study-level C-FIND"
    counts = {
        "patients": Count(len(tally.patients), quality, "distinct hashed PatientID, " + method),
        "studies": Count(tally.responses, quality, method),
    }
    if tally.counts_complete:  # the server returned the study's related-object counts
        counts["series"] = Count(tally.series, quality, "sum of NumberOfStudyRelatedSeries")
        counts["instances"] = Count(
            tally.instances, quality, "sum of NumberOfStudyRelatedInstances"
        )
    return finding(
        "DIMSE-FIND-STUDY", where,
        f"a stranger can list {tally.responses} studies"
        + (f" (stopped with C-CANCEL after {budget})" if tally.capped else ""),
        counts=counts,
        details={
            "modalities": sorted(tally.modalities),
            "date_range": [tally.first_date, tally.last_date] if tally.first_date else [],
            "identifying_fields_readable": sorted(tally.fields_seen),
        },
    )  # fmt: skip
