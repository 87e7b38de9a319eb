"""Durable storage: the index (SQLAlchemy Core), the blob store and the Archive over both."""
