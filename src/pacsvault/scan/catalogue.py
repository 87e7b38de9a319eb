"""The finding catalogue: every id the scanner can report, with its severity, title and fix.

One table, in the style of pynetdicom's status tables. A probe names a finding by its id
and supplies only what it observed: the target, the result text, counts and details.
The severity, the title and the remediation come from here, so an id reads the same
wherever it is reported, and :func:`finding` refuses an id that is not in the table.

Where the text depends on what was found, an entry says so explicitly: ``{field}``
placeholders in the title or remediation (filled from keyword arguments, all of them
required, none extra), and ``variants``, named conditions under which the severity
differs from the usual one. docs/scanner.md lists every id (a test keeps it in step).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from pacsvault.scan.findings import SEVERITIES, Count, Finding


@dataclass(frozen=True)
class Entry:
    """What one finding id means: how bad it is, what it is called, and how to fix it."""

    severity: str
    title: str
    remediation: str = ""
    #: condition -> severity, chosen with ``finding(..., variant=condition)``
    variants: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> frozenset[str]:
        """The placeholders the title and remediation need."""
        return frozenset(
            name
            for text in (self.title, self.remediation)
            for _, name, _, _ in string.Formatter().parse(text)
            if name is not None
        )

    def severity_text(self) -> str:
        """As docs/scanner.md shows it: ``high (medium without Q/R or storage)``."""
        others = ", ".join(f"{sev} {cond}" for cond, sev in self.variants.items())
        return f"{self.severity} ({others})" if others else self.severity


@dataclass(frozen=True)
class Group:
    """Findings of one kind of check, with what they have in common."""

    doc: str
    entries: dict[str, Entry]


GROUPS: dict[str, Group] = {
    "scan": Group(
        """Whether there was anything to probe (EXP-NET-01): closed, silent or non-DICOM
        ports, and runs cut short by --time-limit. A default-port sweep drops NET-UNREACHABLE.""",
        {
            "NET-UNREACHABLE": Entry("info", "Port not reachable"),
            "NET-NOT-DICOM": Entry("info", "Not DICOM / no answer"),
            "SCAN-TIME-LIMIT": Entry("info", "Time limit reached"),
        },
    ),
    "association": Group(
        """Who a DICOM port admits (EXP-DIMSE-01 to -03): the called and calling AE checks,
        cleartext DICOM, and the implementation fingerprint from the A-ASSOCIATE-AC.""",
        {
            "DIMSE-CALLED-AE-GUESSED": Entry(
                "high",
                "Called AE title guessed",
                "Use a non-default AE title and, above all, admit only registered peers "
                "(calling AE bound to an address, TLS client certificates).",
            ),
            "DIMSE-NO-CALLING-AE-CHECK": Entry(
                "high",
                "Unknown calling AE titles accepted",
                "Admit only registered peers, each bound to its address (Orthanc: "
                "DicomModalities with DicomCheckModalityHost; pacsvault does this by default).",
                variants={"without Q/R or storage": "medium"},
            ),
            "DIMSE-ANY-CALLED-AE": Entry(
                "medium",
                "Any called AE title accepted",
                "Enable called-AE checking (Orthanc: DicomCheckCalledAet true).",
            ),
            "DIMSE-CLEARTEXT": Entry(
                "medium",
                "Cleartext DICOM accepted from a stranger",
                "Offer DICOM over TLS (port 2762) only.",
            ),
            "DIMSE-CLEARTEXT-SERVICE": Entry(
                "low",
                "DICOM offered in cleartext",
                "Offer DICOM over TLS (port 2762) to remote peers; keep cleartext to loopback.",
            ),
            "DIMSE-REFUSED": Entry("info", "Strangers are refused"),
            "DIMSE-FINGERPRINT": Entry("info", "Implementation identified"),
        },
    ),
    "services": Group(
        """What a stranger's accepted association can do (EXP-DIMSE-04 to -12): echo, query,
        list the worklist, retrieve, and with --intrusive store. Counts only, never values.""",
        {
            "DIMSE-FIND-STUDY": Entry(
                "critical",
                "Anonymous study-level C-FIND",
                "Deny C-FIND to unknown AEs (Orthanc: keep DicomAlwaysAllowFind false); require "
                "registered peers with TLS client certificates; take DICOM off untrusted "
                "networks.",
            ),
            "DIMSE-FIND-PATIENT": Entry(
                "critical", "Anonymous patient-level C-FIND", "Deny C-FIND to unknown AEs."
            ),
            "DIMSE-WORKLIST-OPEN": Entry(
                "critical", "Anonymous modality worklist", "Deny worklist queries to unknown AEs."
            ),
            "DIMSE-GET-OPEN": Entry(
                "critical",
                "Images retrievable by C-GET",
                "Deny C-GET to unknown AEs (Orthanc: DicomAlwaysAllowGet false).",
            ),
            "DIMSE-MOVE-ANY-DESTINATION": Entry(
                "critical",
                "C-MOVE to an unregistered destination attempted",
                "Allow C-MOVE only to registered destinations bound to addresses.",
            ),
            "DIMSE-STORE-OPEN": Entry(
                "high",
                "A stranger can store objects",
                "Accept C-STORE from registered modalities only (Orthanc: "
                "DicomAlwaysAllowStore false).",
            ),
            "DIMSE-ECHO": Entry(
                "low", "C-ECHO answered", "Answer C-ECHO for registered peers only."
            ),
        },
    ),
    "tls": Group(
        """DICOM-TLS and HTTPS (EXP-DIMSE-13, EXP-WEB-09): the TLS versions accepted, the server
        certificate (fetched without verification: an untrusted certificate is a result, not a
        failure), and whether DICOM-TLS demands a client certificate, tried by a handshake and
        an association without one.""",
        {
            "TLS-SUPPORTED": Entry("info", "DICOM over TLS offered"),
            "TLS-OLD-VERSION": Entry(
                "high",
                "TLS 1.1 or older accepted",
                "Follow the BCP 195 profile of PS3.15: TLS 1.2 minimum, 1.3 preferred.",
            ),
            "TLS-CERT": Entry("info", "Server certificate"),
            "TLS-CERT-EXPIRED": Entry(
                "high",
                "Server certificate expired",
                "Install a current certificate from your CA, and renew it before it expires.",
                variants={"not yet valid": "medium"},
            ),
            "TLS-CERT-EXPIRING": Entry(
                "low",
                "Server certificate expires within 30 days",
                "Renew the certificate now, before peers start refusing it.",
            ),
            "TLS-CERT-SELF-SIGNED": Entry(
                "low",
                "Self-signed server certificate",
                "Issue the server certificate from a CA the peers trust (a site CA is fine), so "
                "peers can verify it instead of accepting any certificate.",
            ),
            "TLS-CERT-WEAK-KEY": Entry(
                "medium",
                "Weak server key",
                "Use an RSA key of at least 2048 bits or an ECDSA P-256 (or larger) key.",
            ),
            "TLS-CERT-WEAK-SIGNATURE": Entry(
                "medium",
                "Certificate signed with a weak hash",
                "Reissue the certificate signed with SHA-256 or stronger.",
            ),
            "TLS-CERT-NAME-MISMATCH": Entry(
                "low",
                "Certificate does not name the host",
                "Reissue the certificate with the host names and addresses peers connect to in "
                "its subject alternative names.",
            ),
            "TLS-CLIENT-CERT-REQUIRED": Entry("info", "Client certificate required"),
            "TLS-NO-CLIENT-CERT-REFUSED": Entry(
                "info", "Association without a client certificate refused"
            ),
            "TLS-NO-CLIENT-CERT-ACCEPTED": Entry(
                "medium",
                "DICOM-TLS association accepted without a client certificate",
                "Require a client certificate from every remote AE (Orthanc: "
                "DicomTlsRemoteCertificateRequired true; pacsvault: peer add --client-cert ca).",
            ),
        },
    ),
    "vulnerabilities": Group(
        """Published CVEs implied by a fingerprinted DCMTK or Orthanc version (EXP-DIMSE-15,
        exposure-checks.md sec. 4): one finding per advisory, product and versions filled in.""",
        {
            "VULN-KNOWN": Entry(
                "high",
                "{product} {version} has known vulnerabilities",
                "Upgrade {product} to {fixed} or later.",
            ),
        },
    ),
    "web": Group(
        """Web services reachable without login (EXP-WEB-01 to -03, -08): Orthanc's REST API,
        viewer pages, default logins (--try-default-credentials), plain HTTP.""",
        {
            "WEB-ORTHANC-REST-OPEN": Entry(
                "critical",
                "Orthanc REST API open without login",
                "Enable AuthenticationEnabled with strong RegisteredUsers, keep "
                "RemoteAccessAllowed false unless behind an authenticating proxy with TLS.",
            ),
            "WEB-VIEWER-OPEN": Entry(
                "high", "Viewer page served without login", "Put the viewer behind a login."
            ),
            "WEB-DEFAULT-CREDENTIALS": Entry(
                "critical",
                "Default login accepted",
                "Change the password now; use long random passwords and disable defaults.",
            ),
            "WEB-CLEARTEXT": Entry(
                "medium",
                "Web service over cleartext HTTP",
                "Serve HTTPS only (TLS 1.2+), or bind HTTP to loopback behind a TLS proxy.",
            ),
        },
    ),
    "dicomweb": Group(
        """DICOMweb without credentials (EXP-WEB-04 to -06): the roots found, QIDO-RS study
        search counted (native counters when the server has them, else limit/offset paging),
        one study retrieved by WADO-RS and one object by WADO-URI (read and discarded: only
        parts and bytes are counted), and with --intrusive one STOW-RS of a synthetic object.""",
        {
            "WEB-QIDO-OPEN": Entry(
                "critical",
                "DICOMweb QIDO-RS open without login",
                "Require authentication (a token or session) on every DICOMweb route.",
                variants={"while empty": "high"},
            ),
            "WEB-WADO-OPEN": Entry(
                "critical",
                "DICOMweb WADO-RS retrieve open without login",
                "Require authentication on every DICOMweb route, retrieve included.",
            ),
            "WEB-WADO-URI-OPEN": Entry(
                "critical",
                "WADO-URI retrieve open without login",
                "Require authentication on WADO-URI, or turn it off (Orthanc DICOMweb plugin: "
                "EnableWado false).",
            ),
            "WEB-STOW-OPEN": Entry(
                "high",
                "A stranger can store objects by STOW-RS",
                "Require authentication and a store permission on STOW-RS.",
            ),
            "WEB-DICOMWEB-PROTECTED": Entry("info", "DICOMweb asks for credentials"),
        },
    ),
}


def _flatten(groups: dict[str, Group]) -> dict[str, Entry]:
    """One id -> entry table; a duplicate id or an unknown severity fails at import."""
    table: dict[str, Entry] = {}
    for group in groups.values():
        for fid, entry in group.entries.items():
            if fid in table:
                raise ValueError(f"finding {fid} is catalogued twice")
            for sev in (entry.severity, *entry.variants.values()):
                if sev not in SEVERITIES:
                    raise ValueError(f"finding {fid}: unknown severity {sev!r}")
            table[fid] = entry
    return table


CATALOGUE: dict[str, Entry] = _flatten(GROUPS)


def finding(
    id: str,
    target: str,
    result: str,
    *,
    counts: dict[str, Count] | None = None,
    details: dict[str, Any] | None = None,
    variant: str | None = None,
    **fields: str,
) -> Finding:
    """The catalogued finding *id* observed on *target*.

    Raises KeyError for an id or variant not in the catalogue and TypeError when *fields*
    are not exactly the placeholders of the entry's title and remediation.
    """
    try:
        entry = CATALOGUE[id]
    except KeyError:
        raise KeyError(f"finding {id} is not in the catalogue (scan/catalogue.py)") from None
    if variant is None:
        severity = entry.severity
    elif variant in entry.variants:
        severity = entry.variants[variant]
    else:
        raise KeyError(f"finding {id} has no variant {variant!r}")
    if set(fields) != entry.fields:
        raise TypeError(f"finding {id} needs fields {sorted(entry.fields)}, got {sorted(fields)}")
    title, remediation = entry.title, entry.remediation
    if fields:
        title, remediation = title.format(**fields), remediation.format(**fields)
    return Finding(
        id, severity, target, title, result, remediation, dict(counts or {}), dict(details or {})
    )
