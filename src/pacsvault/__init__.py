"""pacsvault: a secure-by-default PACS."""

__version__ = "0.1.0"
