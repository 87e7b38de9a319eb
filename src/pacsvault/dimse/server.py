"""The DICOM listener: one pynetdicom AE whose associations are decided by the AccessPolicy."""

from __future__ import annotations

import logging
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
    """A running DIMSE listener on ``settings.bind:settings.port``."""

    def __init__(self, settings: DicomSettings, archive: Archive, policy: AccessPolicy) -> None:
        self.settings = settings
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
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (address, port) actually bound (the port is chosen when 0 was asked)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve in a background thread."""
        server = self.ae.make_server(
            (self.settings.bind, self.settings.port),
            ae_title=self.settings.ae_title,
            contexts=[],
            evt_handlers=self.services.handlers(),
            server_class=ThreadedAssociationServer,
            request_handler=request_handler(self.policy),
        )
        server.daemon_threads = True
        self._server = server
        self.ae._servers.append(server)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dicom-listener"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("DICOM listener %s on %s:%d", self.settings.ae_title, *self.address)

    def stop(self) -> None:
        """Stop accepting, abort open associations and wait for the listener to end."""
        self.ae.shutdown()
        if self._thread:
            self._thread.join(timeout=10)
