"""DIMSE probes: what a stranger's association can do, in counts only.

Follows the checklist in shared/reference/exposure-checks.md section 6.2 (EXP-DIMSE-01 to
-07): an arbitrary called AE, bounded called-AE guessing, a random calling AE, C-ECHO,
the services accepted, and anonymous study- and patient-level C-FIND counted without
keeping any value. Patient IDs are hashed in memory with a per-run salt for
de-duplication and never written anywhere. One association at a time per host.

A server that caps C-FIND answers is counted past its cap by StudyDate ranges
(scan/caps.py). Over DICOM-TLS (``tls=True``) the same checks run on an association
without a client certificate, and its outcome is reported as a TLS finding.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import ssl
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

from pacsvault.scan.caps import Partition, Run, cap_evidence, partition, server_stopped
from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Count, Finding
from pacsvault.scan.synthetic import synthetic_object, uids_of
from pacsvault.scan.tally import Tally, in_range
from pacsvault.scan.targets import Target
from pacsvault.scan.tls_probe import client_context
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


def associate(
    host: str,
    port: int,
    calling: str,
    called: str,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """Like :func:`_associate_once`, retried a few times while the server answers 'busy'."""
    attempt = _associate_once(host, port, calling, called, timeout, tls)
    for delay in (0.5, 1.0, 2.0):
        if not attempt.transient:
            break
        time.sleep(delay)
        attempt = _associate_once(host, port, calling, called, timeout, tls)
    return attempt


def _associate_once(
    host: str,
    port: int,
    calling: str,
    called: str,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """Request an association proposing the probe contexts; keep it open when accepted.

    With *tls*, over TLS (the context carries no client certificate).
    """
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for uid in SERVICES:
        ae.add_requested_context(uid)
    rejects: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejects.append(event.pdu)

    assoc = ae.associate(
        host,
        port,
        ae_title=called,
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)],
        tls_args=(tls, host) if tls is not None else None,
    )
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


def study_find(assoc: Association, budget: int, tally: Tally, date_range: str = "") -> Run | None:
    """Anonymous Study Root C-FIND at STUDY level, answers counted into *tally*.

    With *date_range*, only studies of those dates are asked for (caps.partition).
    None when the server refused the query.
    """
    cx = _context_id(assoc, str(StudyRootQueryRetrieveInformationModelFind))
    if cx is None:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances"):  # fmt: skip
        setattr(query, key, "")
    query.StudyDate = date_range
    run = Run(0, None)
    model = StudyRootQueryRetrieveInformationModelFind
    for status, ident in assoc.send_c_find(query, model, msg_id=7):
        code = status.get("Status") if status else None
        if code in PENDING and ident is not None:
            run.responses += 1
            tally.add_study(ident)
            if not in_range(str(ident.get("StudyDate", "") or ""), date_range):
                run.outside += 1
            if tally.read >= budget and not run.cancelled:
                assoc.send_c_cancel(7, cx)
                run.cancelled = tally.capped = True
        elif code is not None:
            run.status = code
    return run


def patient_find(assoc: Association, budget: int) -> Run | None:
    """Patients a Patient Root PATIENT-level C-FIND returns (as responses); None if refused."""
    cx = _context_id(assoc, str(PatientRootQueryRetrieveInformationModelFind))
    if cx is None:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = ""
    query.NumberOfPatientRelatedStudies = ""
    run = Run(0, None)
    model = PatientRootQueryRetrieveInformationModelFind
    for status, _ident in assoc.send_c_find(query, model, msg_id=8):
        code = status.get("Status") if status else None
        if code in PENDING:
            run.responses += 1
            if run.responses >= budget:
                assoc.send_c_cancel(8, cx)
                run.cancelled = True
                break
        elif code is not None:
            run.status = code
    return run


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
        if final is None or "Status" not in final:
            return out  # no answer: the server is ending the association (Orthanc aborts)
    move_cx = _context_id(assoc, str(StudyRootQueryRetrieveInformationModelMove))
    if move_cx is not None and assoc.is_established:
        final = None
        model = StudyRootQueryRetrieveInformationModelMove
        for status, _ in assoc.send_c_move(query, random_aet(), model):
            final = status
        code = final.get("Status") if final is not None else None
        out["move"] = "refused" if code in (0xA801, None) or (code or 0) >= 0xA000 else "attempted"
    return out


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
        details=uids_of(ds),
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
    target: Target,
    *,
    timeout: float = 5.0,
    budget: int = 100_000,
    intrusive: bool = False,
    tls: bool = False,
) -> list[Finding]:
    """Run the DIMSE checks against one target, one association at a time.

    With *tls*, over DICOM-TLS without a client certificate: whether that association is
    refused or accepted is reported (TLS-NO-CLIENT-CERT-*), and the cleartext findings
    are not.
    """
    where = str(target)
    state = tcp_state(target.host, target.port, timeout)
    if state != "open":
        return [finding("NET-UNREACHABLE", where,
                        "connection refused" if state == "closed" else "no answer")]  # fmt: skip
    context = client_context() if tls else None
    attempt, findings = _admission(target, timeout, context)
    if attempt.state == "not-dicom":
        text = "the port is open but did not complete a DICOM association"
        return [finding("NET-NOT-DICOM", where, text + (" over TLS" if tls else ""))]
    if attempt.state != "accepted":
        return findings + _refused(where, attempt, tls)
    assoc = attempt.assoc
    assert assoc is not None
    try:
        findings += _accepted(where, attempt, tls)
        findings += _services(assoc, attempt, where, budget, intrusive)
    finally:
        if assoc.is_established:
            assoc.release()
    return findings


def _admission(
    target: Target, timeout: float, tls: ssl.SSLContext | None
) -> tuple[Attempt, list[Finding]]:
    """EXP-DIMSE-01/-02: associate as a stranger, guessing the called AE title if refused."""
    where = str(target)
    called = target.aet or "ANY-SCP"
    attempt = associate(target.host, target.port, random_aet(), called, timeout, tls)
    findings: list[Finding] = []
    if attempt.state == "rejected" and attempt.reason == 7 and target.aet is None:
        for title in GUESSED_TITLES:
            attempt = associate(target.host, target.port, random_aet(), title, timeout, tls)
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
    return attempt, findings


def _refused(where: str, attempt: Attempt, tls: bool) -> list[Finding]:
    """The findings of a refused stranger: over TLS, that a missing certificate did not help."""
    reason = {3: "calling AE not recognised", 7: "called AE not recognised"}.get(
        attempt.reason or 0, f"reason {attempt.reason}"
    )
    if tls:
        return [finding(
            "TLS-NO-CLIENT-CERT-REFUSED", where,
            f"the TLS handshake completed without a client certificate; the association was "
            f"rejected ({reason})",
        )]  # fmt: skip
    return [
        finding("DIMSE-REFUSED", where, f"association rejected ({reason})"),
        finding(
            "DIMSE-CLEARTEXT-SERVICE", where,
            "the port speaks DICOM without TLS: registered peers' traffic (images, names) can "
            "be read on the network path",
        ),
    ]  # fmt: skip


def _accepted(where: str, attempt: Attempt, tls: bool) -> list[Finding]:
    """EXP-DIMSE-03, -13, -15: the stranger's accepted association and what it tells."""
    findings = [_fingerprint(where, attempt), *from_version_name(attempt.version, where)]
    qr = attempt.services & {"find", "get", "move", "store"}
    findings.append(finding(
        "DIMSE-NO-CALLING-AE-CHECK", where,
        f"a random calling AE title was accepted; services offered to it: "
        f"{', '.join(sorted(attempt.services)) or 'none'}",
        variant=None if qr else "without Q/R or storage",
    ))  # fmt: skip
    if tls:
        findings.append(finding(
            "TLS-NO-CLIENT-CERT-ACCEPTED", where,
            "a stranger without a client certificate was admitted over DICOM-TLS",
        ))  # fmt: skip
    else:
        findings.append(finding("DIMSE-CLEARTEXT", where, "the association was not encrypted"))
    return findings


def _services(
    assoc: Association, attempt: Attempt, where: str, budget: int, intrusive: bool
) -> list[Finding]:
    """EXP-DIMSE-04 to -12 on the stranger's association: echo, find, store, worklist, retrieve."""
    findings: list[Finding] = []
    if "echo" in attempt.services:
        status = _guarded(assoc, assoc.send_c_echo)
        if status and status.get("Status") == 0x0000:
            findings.append(finding("DIMSE-ECHO", where, "a stranger's C-ECHO succeeded"))
    sample = ""
    if "find" in attempt.services:
        found, sample = _find_findings(assoc, where, budget)
        findings += found
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
    return findings


@dataclass
class CapCount:
    """A C-FIND result cap found, and how counting past it by StudyDate went."""

    evidence: str
    cap: int
    partition: Partition


def _find_findings(assoc: Association, where: str, budget: int) -> tuple[list[Finding], str]:
    """EXP-DIMSE-06/-07: study- and patient-level C-FIND counts; and one study UID in memory."""
    tally = Tally()
    run = _guarded(assoc, study_find, assoc, budget, tally)
    if run is None or not tally.responses:
        return [], ""
    cap = _count_past_cap(assoc, run, tally, budget)
    findings = [_find_finding(where, tally, budget, cap)]
    patients = _guarded(assoc, patient_find, assoc, budget)
    if patients is not None and patients.responses:
        findings.append(_patient_finding(where, patients, cap))
    return findings, tally.sample_study


def _count_past_cap(assoc: Association, run: Run, tally: Tally, budget: int) -> CapCount | None:
    """When the answers look capped by the server, count on by StudyDate ranges into *tally*."""
    evidence = cap_evidence(run)
    if not evidence:
        return None

    def query(date_range: str) -> Run | None:
        return _guarded(assoc, study_find, assoc, budget, tally, date_range)

    return CapCount(evidence, run.responses, partition(query, run.responses, dt.date.today()))


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


def _find_quality(tally: Tally, budget: int, cap: CapCount | None) -> tuple[str, str, str]:
    """(quality, method, note for the result text) of the study-level counts."""
    if tally.capped:
        return "lower bound", "study-level C-FIND", f" (stopped with C-CANCEL after {budget})"
    if cap is None:
        return "exact", "study-level C-FIND", ""
    queries = cap.partition.queries + 1
    method = f"study-level C-FIND in {queries} queries by StudyDate range"
    exact = not cap.partition.incomplete and not tally.undated
    note = f" (the server stops at {cap.cap} answers per query; counted past it by StudyDate"
    note += ")" if exact else ", still a lower bound)"
    return ("exact" if exact else "lower bound"), method, note


def _find_finding(where: str, tally: Tally, budget: int, cap: CapCount | None = None) -> Finding:
    quality, method, note = _find_quality(tally, budget, cap)
    counts = {
        "patients": Count(len(tally.patients), quality, "distinct hashed PatientID, " + method),
        "studies": Count(tally.responses, quality, method),
    }
    if tally.counts_complete:  # the server returned the study's related-object counts
        counts["series"] = Count(tally.series, quality, "sum of NumberOfStudyRelatedSeries")
        counts["instances"] = Count(
            tally.instances, quality, "sum of NumberOfStudyRelatedInstances"
        )
    details = {
        "modalities": sorted(tally.modalities),
        "date_range": [tally.first_date, tally.last_date] if tally.first_date else [],
        "identifying_fields_readable": sorted(tally.fields_seen),
    }
    if cap is not None:
        undated = "studies without a StudyDate escape date ranges" if tally.undated else ""
        details["result_cap"] = {
            "answers_per_query": cap.cap,
            "evidence": cap.evidence,
            "date_range_queries": cap.partition.queries,
            "lower_bound_because": cap.partition.incomplete or undated,
        }
    return finding(
        "DIMSE-FIND-STUDY", where, f"a stranger can list {tally.responses} studies{note}",
        counts=counts, details=details,
    )  # fmt: skip


def _patient_finding(where: str, run: Run, cap: CapCount | None) -> Finding:
    """DIMSE-FIND-PATIENT; a lower bound when cancelled or cut short by the server's cap."""
    capped = server_stopped(run) or (cap is not None and run.responses >= cap.cap)
    quality = "lower bound" if run.cancelled or capped else "exact"
    note = " (at least: the server caps its answers)" if capped else ""
    return finding(
        "DIMSE-FIND-PATIENT", where, f"{run.responses} patients listed to a stranger{note}",
        counts={"patients": Count(run.responses, quality, "patient-level C-FIND")},
    )  # fmt: skip
