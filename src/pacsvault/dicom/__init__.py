"""Pure DICOM knowledge over pydicom datasets: no I/O, no storage, no network."""
