"""DICOM audit messages (PS3.15 A.5, the IHE ATNA / RFC 3881 schema) from audit records.

Patients appear only by their site pseudonym, never by ID or name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

from pacsvault.security.audit import Action

EVENT_NAMES = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110112": "Query",
    "110113": "Security Alert",
    "110114": "User Authentication",
}

ACTION_CODES = {
    Action.STORE.value: "C",
    Action.IMPORT.value: "C",
    Action.QUERY.value: "E",
    Action.RETRIEVE.value: "R",
    Action.VIEW.value: "R",
    Action.EXPORT.value: "R",
    Action.DELETE.value: "D",
    Action.AUDIT_USE.value: "R",
    Action.PEER_CHANGE.value: "U",
    Action.USER_CHANGE.value: "U",
    Action.SETTINGS_CHANGE.value: "U",
}

OUTCOMES = {"success": "0", "warning": "4", "refused": "4", "failure": "8"}


def _coded(parent: ET.Element, tag: str, code: str, system: str, text: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text}
    )


def audit_message(row: Mapping[str, Any], source_id: str) -> str:
    """One audit record as a PS3.15 A.5.1 ``AuditMessage`` XML document."""
    msg = ET.Element("AuditMessage")
    when = dt.datetime.fromtimestamp(row["time"], dt.UTC).isoformat(timespec="milliseconds")
    event = ET.SubElement(
        msg,
        "EventIdentification",
        {
            "EventActionCode": ACTION_CODES.get(row["action"], "E"),
            "EventDateTime": when.replace("+00:00", "Z"),
            "EventOutcomeIndicator": OUTCOMES.get(row["outcome"], "8"),
        },
    )
    code = row["event_code"]
    _coded(event, "EventID", code, "DCM", EVENT_NAMES.get(code, row["action"]))
    if row["action"] in ("application-start", "application-stop"):
        start = row["action"] == "application-start"
        _coded(event, "EventTypeCode", "110120" if start else "110121", "DCM",
               "Application Start" if start else "Application Stop")  # fmt: skip
    if row.get("detail"):
        ET.SubElement(event, "EventOutcomeDescription").text = str(row["detail"])
    requestor = ET.SubElement(
        msg,
        "ActiveParticipant",
        {"UserID": row.get("actor") or "unknown", "UserIsRequestor": "true"},
    )
    if row.get("address"):
        requestor.set("NetworkAccessPointID", str(row["address"]))
        requestor.set("NetworkAccessPointTypeCode", "2")
    ET.SubElement(msg, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"})
    ET.SubElement(msg, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if row.get("study_uid"):
        study = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(row["study_uid"]),
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _coded(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    if row.get("patient_ref"):
        patient = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(row["patient_ref"]),
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        ET.SubElement(patient, "ParticipantObjectDetail",
                      {"type": "pseudonym", "value": "HMAC-SHA-256 of the patient ID"})  # fmt: skip
    return ET.tostring(msg, encoding="unicode")
