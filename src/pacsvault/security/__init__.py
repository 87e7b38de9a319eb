"""Identities, peers, the access policy and the audit trail."""
