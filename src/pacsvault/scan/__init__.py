"""The exposure scanner: a client that probes any PACS the way the 2019 investigators did.

It never imports pacsvault.storage or pacsvault.dimse: it sees servers only from the network.
"""
