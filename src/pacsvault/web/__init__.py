"""The HTTPS front door: DICOMweb, the login, the admin API."""
