"""Synthetic DICOM data: demo studies, test sets and benchmark images. Never real patients.

Names, IDs and dates are made up from a seeded random generator, so a given seed
always yields the same data set (UIDs are derived from the seed too).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SOP_CLASS_FOR = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE, "CR": CR_IMAGE_STORAGE}

_FAMILY = ["DOE", "ROE", "MOE", "POE", "LOE", "COE", "HOE", "NOE", "VOE", "ZOE"]
_GIVEN = ["JANE", "JOHN", "ALEX", "SAM", "KIM", "LEE", "RAY", "MAX", "ROBIN", "JO"]
_BODY = {"CT": "CHEST", "MR": "HEAD", "CR": "HAND"}


@dataclass(frozen=True)
class Spec:
    """Shape of a synthetic data set."""

    patients: int = 3
    studies_per_patient: int = 2
    series_per_study: int = 2
    instances_per_series: int = 2
    rows: int = 64
    columns: int = 64
    seed: int = 1


def image(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    sex: str,
    study_uid: str,
    study_date: str,
    study_time: str,
    accession: str,
    study_description: str,
    series_uid: str,
    series_number: int,
    modality: str,
    instance_number: int,
    rows: int = 64,
    columns: int = 64,
    sop_instance_uid: str | None = None,
    pixel_seed: int = 0,
) -> Dataset:
    """One synthetic 16-bit MONOCHROME2 image with file meta (Explicit VR Little Endian)."""
    sop_class = SOP_CLASS_FOR.get(modality, CT_IMAGE_STORAGE)
    sop_instance = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = study_time
    ds.ContentTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "PACSVAULT SYNTHETIC"
    ds.InstitutionName = "Synthetic Imaging Centre"
    ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.BodyPartExamined = _BODY.get(modality, "CHEST")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = accession[-4:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 1024
    ds.WindowWidth = 2048
    rng = random.Random(pixel_seed)
    row = bytes(rng.getrandbits(8) for _ in range(columns * 2))
    # A gradient with noise: cheap to make, compresses like a real image would not.
    ds.PixelData = b"".join(row[i % len(row) :] + row[: i % len(row)] for i in range(rows))
    return ds


def data_set(spec: Spec) -> Iterator[Dataset]:
    """Every instance of a synthetic data set, patient by patient."""
    rng = random.Random(spec.seed)
    uid_root = f"pacsvault-synthetic-{spec.seed}"
    modalities = ["CT", "MR", "CR"]
    for p in range(spec.patients):
        family, given = _FAMILY[p % len(_FAMILY)], _GIVEN[(p // len(_FAMILY)) % len(_GIVEN)]
        patient_id = f"PV{spec.seed:02d}{p:05d}"
        birth = f"{1940 + rng.randrange(70)}{1 + rng.randrange(12):02d}{1 + rng.randrange(28):02d}"
        sex = "FM"[p % 2]
        for s in range(spec.studies_per_patient):
            study_uid = generate_uid(entropy_srcs=[uid_root, f"p{p}", f"s{s}"])
            year = 2015 + (p + s) % 10
            study_date = f"{year}{1 + (p * 3 + s) % 12:02d}{1 + (p + s * 7) % 28:02d}"
            study_time = f"{8 + (p + s) % 10:02d}{(p * 7 + s) % 60:02d}00"
            for se in range(spec.series_per_study):
                modality = modalities[(s + se) % len(modalities)]
                series_uid = generate_uid(entropy_srcs=[uid_root, f"p{p}", f"s{s}", f"e{se}"])
                for i in range(spec.instances_per_series):
                    yield image(
                        patient_id=patient_id,
                        patient_name=f"{family}^{given}",
                        birth_date=birth,
                        sex=sex,
                        study_uid=study_uid,
                        study_date=study_date,
                        study_time=study_time,
                        accession=f"A{spec.seed:02d}{p:04d}{s:02d}",
                        study_description=f"Synthetic study {s + 1}",
                        series_uid=series_uid,
                        series_number=se + 1,
                        modality=modality,
                        instance_number=i + 1,
                        rows=spec.rows,
                        columns=spec.columns,
                        sop_instance_uid=generate_uid(
                            entropy_srcs=[uid_root, f"p{p}", f"s{s}", f"e{se}", f"i{i}"]
                        ),
                        pixel_seed=hash((spec.seed, p, s, se, i)) & 0xFFFF,
                    )


def to_bytes(ds: Dataset) -> bytes:
    """*ds* as a Part-10 file."""
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class Phantom:
    """A CT phantom of known geometry, for viewer tests and benchmarks.

    Axial slices (ImageOrientationPatient 1\\0\\0\\0\\1\\0) of *size* x *size* pixels of
    *pixel_spacing* mm, *slice_spacing* mm apart. Air (-1000 HU) around a water-like
    disk (*disk_hu*) of *disk_mm* diameter centred in the image, with three round inserts
    of *insert_mm* diameter, their centres *insert_offset_mm* from the image centre: bone
    to the patient's left (image right), lung to the patient's right (image left), fat
    towards the patient's anterior (image top). Stored values are HU + 1024, unsigned
    12-bit (RescaleIntercept -1024), as many scanners write them. InstanceNumber 1 is
    the top slice (the highest z), the order a head-first axial scan has.
    """

    slices: int = 300
    size: int = 512
    pixel_spacing: float = 0.5
    slice_spacing: float = 1.0
    disk_mm: float = 100.0
    insert_mm: float = 20.0
    insert_offset_mm: float = 30.0
    air_hu: int = -1000
    disk_hu: int = 40
    bone_hu: int = 1000
    lung_hu: int = -700
    fat_hu: int = -100
    intercept: int = -1024

    def centre(self, insert: str) -> tuple[float, float]:
        """(column, row) in continuous image coordinates of the centre of *insert*:
        ``disk``, ``bone``, ``lung`` or ``fat`` (pixel (c, r) covers [c, c+1) x [r, r+1))."""
        mid = self.size / 2
        step = self.insert_offset_mm / self.pixel_spacing
        dx, dy = {"disk": (0, 0), "bone": (step, 0), "lung": (-step, 0), "fat": (0, -step)}[insert]
        return mid + dx, mid + dy

    def hu(self) -> Any:
        """One slice's values in HU (a numpy int16 array, rows by columns)."""
        import numpy as np

        centres = np.arange(self.size) + 0.5
        xs, ys = np.meshgrid(centres, centres)
        out = np.full((self.size, self.size), self.air_hu, dtype=np.int16)

        def inside(insert: str, diameter_mm: float) -> Any:
            cx, cy = self.centre(insert)
            radius = diameter_mm / 2 / self.pixel_spacing
            return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2

        out[inside("disk", self.disk_mm)] = self.disk_hu
        for insert, value in (("bone", self.bone_hu), ("lung", self.lung_hu),
                              ("fat", self.fat_hu)):  # fmt: skip
            out[inside(insert, self.insert_mm)] = value
        return out

    def datasets(
        self,
        *,
        patient_name: str = "PHANTOM^CT",
        patient_id: str = "PHANTOM-1",
        study_date: str = "20240101",
        study_uid: str | None = None,
        series_uid: str | None = None,
        referring: str = "",
        accession: str = "PH0001",
        series_number: int = 1,
        series_description: str = "Phantom axial",
    ) -> Iterator[Dataset]:
        """The slices, InstanceNumber 1 first (each its own Dataset with file meta)."""
        study_uid = study_uid or generate_uid()
        series_uid = series_uid or generate_uid()
        stored = (self.hu().astype("int32") - self.intercept).astype("<u2").tobytes()
        half = self.size * self.pixel_spacing / 2
        for i in range(self.slices):
            ds = image(
                patient_id=patient_id, patient_name=patient_name, birth_date="19700101",
                sex="O", study_uid=study_uid, study_date=study_date, study_time="080000",
                accession=accession, study_description="CT phantom", series_uid=series_uid,
                series_number=series_number, modality="CT", instance_number=i + 1, rows=1,
                columns=1,
            )  # fmt: skip
            ds.ReferringPhysicianName = referring
            ds.SeriesDescription = series_description
            ds.Rows = ds.Columns = self.size
            ds.PixelSpacing = [self.pixel_spacing, self.pixel_spacing]
            ds.SliceThickness = self.slice_spacing
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [
                -half + self.pixel_spacing / 2, -half + self.pixel_spacing / 2,
                -i * self.slice_spacing,
            ]  # fmt: skip
            ds.SliceLocation = -i * self.slice_spacing
            ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
            ds.RescaleIntercept = self.intercept
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter = 40
            ds.WindowWidth = 400
            ds.PixelData = stored
            yield ds
