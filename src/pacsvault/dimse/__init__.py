"""The DICOM front door: pynetdicom wiring, with every decision taken by the AccessPolicy."""
