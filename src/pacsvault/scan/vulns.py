"""Known-vulnerable versions from fingerprints (shared/reference/exposure-checks.md, sec. 4)."""

from __future__ import annotations

import re

from pacsvault.scan.catalogue import finding
from pacsvault.scan.findings import Finding

# (product, fixed-in version, CVEs, what they allow)
_DCMTK = (
    ((3, 6, 7), "CVE-2022-2119, CVE-2022-2120, CVE-2022-2121",
     "path traversal by a DICOM peer (files written outside the storage area), DoS"),
    ((3, 7, 1), "CVE-2026-50003, CVE-2026-52868, CVE-2026-50254, CVE-2026-35505, CVE-2026-44628",
     "C-GET client path traversal, unauthenticated worklist read, DoS"),
)  # fmt: skip
_ORTHANC = (
    ((1, 12, 0), "CVE-2023-33466", "arbitrary file write through the REST API"),
    ((1, 12, 11), "CVE-2026-5437 to CVE-2026-5445",
     "decompression bombs, unbounded uploads and heap overflows that crash or compromise it"),
)  # fmt: skip


Advisory = tuple[tuple[int, int, int], str, str]


def _check(
    product: str, version: tuple[int, ...], table: tuple[Advisory, ...], where: str
) -> list[Finding]:
    out = []
    for fixed, cves, impact in table:
        if version < fixed:
            shown, fixed_in = ".".join(map(str, version)), ".".join(map(str, fixed))
            out.append(finding(
                "VULN-KNOWN", where, f"{cves} (fixed in {fixed_in}): {impact}",
                details={"product": product, "version": shown, "cves": cves},
                product=product, version=shown, fixed=fixed_in,
            ))  # fmt: skip
    return out


def from_version_name(version_name: str, where: str) -> list[Finding]:
    """Known vulnerabilities implied by an A-ASSOCIATE-AC implementation version name."""
    m = re.fullmatch(r"OFFIS_DCMTK_(\d)(\d)(\d)", version_name.strip())
    if not m:
        return []
    return _check("DCMTK", tuple(int(x) for x in m.groups()), _DCMTK, where)


def from_orthanc_version(version: str, where: str) -> list[Finding]:
    """Known vulnerabilities of an Orthanc version reported by GET /system."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        return []
    return _check("Orthanc", tuple(int(x) for x in m.groups()), _ORTHANC, where)
