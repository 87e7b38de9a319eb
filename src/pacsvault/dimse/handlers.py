"""DIMSE service handlers: each one asks the policy, then calls the Archive with the peer as actor.

Bound to pynetdicom events (EVT_C_ECHO, EVT_C_STORE, EVT_C_FIND, EVT_C_GET,
EVT_C_MOVE). C-FIND, C-GET and C-MOVE are generators, so results stream one
response at a time and a C-CANCEL stops them between two responses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from pacsvault.dicom.matching import InvalidQuery
from pacsvault.dicom.query import PATIENT_ROOT, STUDY_ROOT, Query, find_response, parse_identifier
from pacsvault.dimse import status as st
from pacsvault.dimse.negotiation import peer_of, user_of
from pacsvault.dimse.outbound import OutboundInstance, move_contexts
from pacsvault.security.audit import Action
from pacsvault.security.identity import Actor
from pacsvault.security.peers import Service
from pacsvault.security.policy import AccessPolicy
from pacsvault.storage.archive import Archive

log = logging.getLogger("pacsvault.dimse")

_STUDY_ROOT_PREFIX = "1.2.840.10008.5.1.4.1.2.2."


def _model(event: Event) -> str:
    uid = str(event.request.AffectedSOPClassUID)
    return STUDY_ROOT if uid.startswith(_STUDY_ROOT_PREFIX) else PATIENT_ROOT


def _actor(event: Event) -> Actor:
    """The acting identity: the verified user when there is one, else the peer."""
    address = event.assoc.requestor.address
    calling = str(event.assoc.requestor.ae_title).strip()
    user = user_of(event.assoc)
    if user is not None:
        return Actor("user", user.name, address, calling)
    peer = peer_of(event.assoc)
    return Actor("peer", peer.name if peer else "unknown", address, calling)


class DimseServices:
    """The handlers of one DICOM listener, over one Archive and one AccessPolicy."""

    def __init__(
        self, archive: Archive, policy: AccessPolicy, ae_title: str, max_find: int
    ) -> None:
        self.archive = archive
        self.policy = policy
        self.ae_title = ae_title
        self.max_find = max_find

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_ECHO, self.echo),
            (evt.EVT_C_STORE, self.store),
            (evt.EVT_C_FIND, self.find),
            (evt.EVT_C_GET, self.get),
            (evt.EVT_C_MOVE, self.move),
        ]

    def _granted(self, event: Event, service: Service, action: Action) -> bool:
        if self.policy.allows(peer_of(event.assoc), service):
            return True
        self.policy.refuse(_actor(event), action, f"{service.value} not granted to this peer")
        return False

    def echo(self, event: Event) -> int:
        if not self._granted(event, Service.ECHO, Action.ECHO):
            return st.REFUSED_NOT_AUTHORIZED
        return st.SUCCESS

    def store(self, event: Event) -> Dataset:
        if not self._granted(event, Service.STORE, Action.STORE):
            return st.status(st.REFUSED_NOT_AUTHORIZED, "store not granted")
        req = event.request
        try:
            data = req.DataSet.getvalue()
            ts = str(event.context.transfer_syntax)  # a (id, abstract, transfer) tuple
            result = self.archive.store(
                _actor(event),
                data,
                ts,
                expected_sop_class=str(req.AffectedSOPClassUID),
                expected_sop_instance=str(req.AffectedSOPInstanceUID),
            )
        except Exception as exc:  # never let a bug become an abort without a status
            log.exception("store failed: %s", type(exc).__name__)
            return st.status(st.OUT_OF_RESOURCES, "internal error")
        if not result.status.ok:
            log.warning("store refused: %s", result.status.value)
        return st.store_status(result)

    def find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        if not self._granted(event, Service.FIND, Action.QUERY):
            yield st.status(st.REFUSED_NOT_AUTHORIZED, "find not granted"), None
            return
        identifier = event.identifier
        model = _model(event)
        try:
            query = parse_identifier(identifier, model)
        except InvalidQuery as exc:
            self.policy.refuse(_actor(event), Action.QUERY, str(exc))
            yield st.status(st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
            return
        pending = st.PENDING_OPTIONAL_KEYS_UNSUPPORTED if query.unsupported else st.PENDING
        rows = self.archive.find(
            _actor(event),
            query.level,
            query.conditions,
            keys=query.keys,
            limit=self.max_find + 1 if self.max_find else None,
        )
        sent = 0
        try:
            for row in rows:
                if event.is_cancelled:
                    yield st.CANCEL, None
                    return
                if self.max_find and sent >= self.max_find:
                    yield st.status(st.OUT_OF_RESOURCES, "too many matches: narrow the query"), None
                    return
                yield pending, find_response(identifier, query, row, self.ae_title, model)
                sent += 1
        finally:
            close = getattr(rows, "close", None)
            if close:
                close()
        yield st.SUCCESS, None

    def _retrieve_query(self, event: Event, action: Action) -> Query | None:
        try:
            return parse_identifier(event.identifier, _model(event))
        except InvalidQuery as exc:
            self.policy.refuse(_actor(event), action, str(exc))
            return None

    def _outbound(self, instances: list[Any]) -> Iterator[tuple[int, Dataset]]:
        for inst in instances:
            path = self.archive.blobs.local_path(inst.blob_key)
            yield st.PENDING, OutboundInstance(inst, path)  # type: ignore[arg-type]

    def get(self, event: Event) -> Iterator[Any]:
        # The first value yielded is the number of sub-operations; a refusal is one
        # failed sub-operation reported with its status.
        if not self._granted(event, Service.GET, Action.RETRIEVE):
            yield 1
            yield st.status(st.REFUSED_NOT_AUTHORIZED, "get not granted"), None
            return
        query = self._retrieve_query(event, Action.RETRIEVE)
        if query is None:
            yield 1
            yield st.status(st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "invalid identifier"), None
            return
        instances = self.archive.locate(_actor(event), query.level, query.conditions)
        yield len(instances)
        for item in self._outbound(instances):
            if event.is_cancelled:
                yield st.CANCEL, None
                return
            yield item

    def move(self, event: Event) -> Iterator[Any]:
        peer = peer_of(event.assoc)
        destination_aet = str(event.move_destination).strip()
        if not self._granted(event, Service.MOVE, Action.RETRIEVE):
            yield None, None
            return
        dest = self.policy.move_destination(peer, destination_aet)  # type: ignore[arg-type]
        if dest is None:
            self.policy.refuse(
                _actor(event), Action.RETRIEVE, "move destination is not a registered peer"
            )
            yield None, None
            return
        query = self._retrieve_query(event, Action.RETRIEVE)
        if query is None:
            yield dest.host, dest.port
            yield 1
            yield st.status(st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "invalid identifier"), None
            return
        instances = self.archive.locate(
            _actor(event), query.level, query.conditions, destination=dest.name
        )
        yield dest.host, dest.port, {"contexts": move_contexts(instances) or None}
        yield len(instances)
        for item in self._outbound(instances):
            if event.is_cancelled:
                yield st.CANCEL, None
                return
            yield item
