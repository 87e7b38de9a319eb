"""The DICOM listener: one pynetdicom AE whose associations are decided by the AccessPolicy."""

from __future__ import annotations

import logging
import ssl
import threading

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from pacsvault.config import DicomSettings
from pacsvault.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacsvault.dimse.handlers import DimseServices
from pacsvault.dimse.negotiation import request_handler
from pacsvault.security.policy import AccessPolicy
from pacsvault.storage.archive import Archive

log = logging.getLogger("pacsvault.dimse")


class DicomServer:
    """The DIMSE listeners: cleartext on ``dicom.port``, DICOM-TLS on ``tls_port``.

    Both share one AE, one Archive and one AccessPolicy; either may be absent.
    """

    def __init__(
        self,
        settings: DicomSettings,
        archive: Archive,
        policy: AccessPolicy,
        *,
        tls: ssl.SSLContext | None = None,
        tls_port: int | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.tls_port = tls_port
        self.services = DimseServices(archive, policy, settings.ae_title, settings.max_find_results)
        self.policy = policy
        ae = AE(ae_title=settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = settings.max_pdu
        ae.maximum_associations = settings.max_associations
        ae.network_timeout = settings.network_timeout
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        # The policy decides; pynetdicom's own AE title checks stay off (they cannot
        # check addresses or services) and our ACSE never consults them.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        self.ae = ae
        self._plain: ThreadedAssociationServer | None = None
        self._tls: ThreadedAssociationServer | None = None
        self._threads: list[threading.Thread] = []

    def _listen(self, port: int, tls: ssl.SSLContext | None) -> ThreadedAssociationServer:
        server = self.ae.make_server(
            (self.settings.bind, port),
            ae_title=self.settings.ae_title,
            contexts=[],
            evt_handlers=self.services.handlers(),
            server_class=ThreadedAssociationServer,
            request_handler=request_handler(self.policy, tls, self.settings.acse_timeout),
        )
        server.daemon_threads = True
        self.ae._servers.append(server)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"dicom-{port}"
        )
        thread.daemon = True
        thread.start()
        self._threads.append(thread)
        host, bound = server.server_address[:2]
        kind = "DICOM-TLS" if tls else "cleartext DICOM"
        log.info("%s listener %s on %s:%d", kind, self.settings.ae_title, host, bound)
        return server

    def start(self) -> None:
        """Bind the listeners and serve in background threads."""
        if self.settings.cleartext:
            self._plain = self._listen(self.settings.port, None)
        if self.tls is not None and self.tls_port is not None:
            self._tls = self._listen(self.tls_port, self.tls)

    @property
    def listeners(self) -> list[tuple[str, str, int]]:
        """(kind, address, port) of each running listener."""
        out = []
        for kind, server in (("dicom", self._plain), ("dicom-tls", self._tls)):
            if server is not None:
                host, port = server.server_address[:2]
                out.append((kind, str(host), int(port)))
        return out

    def stop(self) -> None:
        """Stop accepting, abort open associations and wait for the listeners to end."""
        self.ae.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)
