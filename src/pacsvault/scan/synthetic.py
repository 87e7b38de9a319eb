"""The one object the --intrusive write tests store: obviously fake, safe to delete.

Modelled on nmap's ``dicom-store-inject`` (exposure-checks.md EXP-DIMSE-12): patient
``ZZZ^EXPAUDIT``, a description saying it may be deleted, a 4x4 black frame and fresh
``2.25.`` UIDs, which the findings report so the owner can find and delete it.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "ZZZ^EXPAUDIT"


def synthetic_object() -> Dataset:
    """An obviously fake Secondary Capture (4x4 pixels) with new UIDs."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(prefix="2.25.")
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "EXPAUDIT-SAFE-TO-DELETE"
    ds.StudyDescription = "SAFE TO DELETE - exposure audit by pacsvault scan"
    ds.Modality = "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    """*ds* as a DICOM Part-10 file (preamble, file meta, data set), for STOW-RS."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def uids_of(ds: Dataset) -> dict[str, str]:
    """The UIDs an owner needs to find and delete the stored object."""
    return {
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
    }
