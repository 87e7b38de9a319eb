"""The synthetic data generator: distinct UIDs at any size (tests and benchmarks rely on it)."""

from __future__ import annotations

from pacsvault.dicom.synthetic import Spec, data_set


def test_every_generated_uid_is_distinct() -> None:
    # 1 x 11 and 11 x 1 once gave the same entropy string, hence the same UID.
    spec = Spec(patients=12, studies_per_patient=2, series_per_study=2, instances_per_series=12)
    sets = list(data_set(spec))
    assert len({str(ds.SOPInstanceUID) for ds in sets}) == len(sets) == 576
    assert len({str(ds.SeriesInstanceUID) for ds in sets}) == 12 * 2 * 2
    assert len({str(ds.StudyInstanceUID) for ds in sets}) == 12 * 2
