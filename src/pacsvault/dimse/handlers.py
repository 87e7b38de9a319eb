"""DIMSE services: each one asks the policy, then calls the Archive with the caller as actor.

One :class:`DimseServices` serves every association of a listener. Handlers run
in the association's own thread and answer through its channel: C-FIND, C-GET and
C-MOVE stream their responses one at a time and look for a C-CANCEL between two.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pacsvault.dicom import status as st
from pacsvault.dicom.matching import InvalidQuery
from pacsvault.dicom.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    Query,
    ResponseEncoder,
    find_response,
    parse_identifier,
)
from pacsvault.dimse import messages as m
from pacsvault.dimse.channel import BoundedBuffer, Discard, Message, Sink
from pacsvault.dimse.negotiation import Context
from pacsvault.dimse.outbound import Retrieval, move_contexts
from pacsvault.security.audit import Action, AuditUnavailable
from pacsvault.security.identity import Permission
from pacsvault.security.policy import AccessPolicy, NotPermitted
from pacsvault.storage.archive import Archive, Incoming
from pacsvault.storage.index import StoredInstance

if TYPE_CHECKING:
    from pacsvault.dimse.association import AcceptorAssociation

log = logging.getLogger("pacsvault.dimse")

_STUDY_ROOT_PREFIX = "1.2.840.10008.5.1.4.1.2.2."
#: Largest query/retrieve identifier accepted; bigger ones are refused, not parsed.
MAX_IDENTIFIER_SIZE = 1024 * 1024


def _model(context: Context) -> str:
    return STUDY_ROOT if context.abstract_syntax.startswith(_STUDY_ROOT_PREFIX) else PATIENT_ROOT


class DimseServices:
    """The handlers of one DICOM listener, over one Archive and one AccessPolicy."""

    def __init__(
        self,
        archive: Archive,
        policy: AccessPolicy,
        ae_title: str,
        max_find: int,
        *,
        max_identifier: int = MAX_IDENTIFIER_SIZE,
        dimse_timeout: float = 60.0,
    ) -> None:
        self.archive = archive
        self.policy = policy
        self.ae_title = ae_title
        self.max_find = max_find
        self.max_identifier = max_identifier
        self.dimse_timeout = dimse_timeout

    # -- incoming datasets -----------------------------------------------------------------

    def sink_for(self, assoc: AcceptorAssociation, context: Context, command: m.Command) -> Sink:
        """Where the dataset announced by *command* goes while it arrives."""
        field = command.command_field
        if field == m.C_STORE_RQ and self._may_store(assoc, context):
            return self.archive.receive(
                assoc.principal,
                context.transfer_syntax,
                sop_class=command.get_text(m.AFFECTED_SOP_CLASS),
                sop_instance=command.get_text(m.AFFECTED_SOP_INSTANCE),
            )
        if field in (m.C_FIND_RQ, m.C_GET_RQ, m.C_MOVE_RQ):
            return BoundedBuffer(self.max_identifier)
        return Discard()

    def _may_store(self, assoc: AcceptorAssociation, context: Context) -> bool:
        return context.requestor_scu and self.policy.authorize(assoc.principal, Permission.STORE)

    def dispatch(self, assoc: AcceptorAssociation, msg: Message) -> None:
        """Answer one request message (requests of unknown kinds get 0x0211)."""
        handler = {
            m.C_ECHO_RQ: self.echo,
            m.C_STORE_RQ: self.store,
            m.C_FIND_RQ: self.find,
            m.C_GET_RQ: self.get,
            m.C_MOVE_RQ: self.move,
        }.get(msg.command.command_field)
        if handler is None:
            if msg.command.command_field == m.C_CANCEL_RQ:
                return  # a cancel for a request already answered
            if isinstance(msg.dataset, Incoming):
                msg.dataset.discard()
            assoc.reply(msg, msg.command.command_field | m.RESPONSE_BIT,
                        st.UNRECOGNIZED_OPERATION)  # fmt: skip
            return
        handler(assoc, msg)

    # -- services --------------------------------------------------------------------------

    def echo(self, assoc: AcceptorAssociation, msg: Message) -> None:
        if not self.policy.require(assoc.principal, Permission.ECHO, Action.ECHO):
            assoc.reply(msg, m.C_ECHO_RQ | m.RESPONSE_BIT, st.REFUSED_NOT_AUTHORIZED)
            return
        assoc.reply(msg, m.C_ECHO_RQ | m.RESPONSE_BIT, st.SUCCESS)

    def store(self, assoc: AcceptorAssociation, msg: Message) -> None:
        rsp = m.C_STORE_RQ | m.RESPONSE_BIT
        instance = msg.command.get_text(m.AFFECTED_SOP_INSTANCE)
        extra = {"affected_instance": instance} if instance else {}
        incoming = msg.dataset
        if not isinstance(incoming, Incoming):
            self.policy.refuse(assoc.actor, Action.STORE, "store not granted")
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "store not granted", **extra)
            return
        try:
            result = self.archive.store_incoming(
                assoc.principal,
                incoming,
                msg.context.transfer_syntax,
                expected_sop_class=msg.command.get_text(m.AFFECTED_SOP_CLASS),
                expected_sop_instance=instance,
            )
        except Exception as exc:  # never let a bug become an abort without a status
            log.exception("store failed: %s", type(exc).__name__)
            incoming.discard()
            assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "internal error", **extra)
            return
        if not result.status.ok:
            log.warning("store refused: %s", result.status.value)
        code, comment = result.dicom_status()
        assoc.reply(msg, rsp, code, comment, **extra)

    def _identifier(self, assoc: AcceptorAssociation, msg: Message, action: Action) -> Query | str:
        """The parsed identifier of a query/retrieve request, or why it is refused."""
        buf = msg.dataset
        if not isinstance(buf, BoundedBuffer):
            return "request without an identifier"
        if buf.overflow:
            why = f"identifier larger than {self.max_identifier} bytes"
        else:
            try:
                identifier = m.decode_dataset(buf.getvalue(), msg.context.transfer_syntax)
                query = parse_identifier(identifier, _model(msg.context))
                query.identifier = identifier
                return query
            except InvalidQuery as exc:
                why = str(exc)
            except Exception as exc:
                why = f"unreadable identifier ({type(exc).__name__})"
        self.policy.refuse(assoc.actor, action, why)
        return why

    def find(self, assoc: AcceptorAssociation, msg: Message) -> None:
        rsp = m.C_FIND_RQ | m.RESPONSE_BIT
        if not self.policy.require(assoc.principal, Permission.QUERY, Action.QUERY):
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "find not granted")
            return
        query = self._identifier(assoc, msg, Action.QUERY)
        if isinstance(query, str):
            assoc.reply(msg, rsp, st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, query)
            return
        pending = st.PENDING_OPTIONAL_KEYS_UNSUPPORTED if query.unsupported else st.PENDING
        model = _model(msg.context)
        ts = msg.context.transfer_syntax
        encoder = ResponseEncoder(query.identifier, query, self.ae_title, model, ts)
        try:
            rows = self.archive.find(
                assoc.principal,
                query.level,
                query.conditions,
                keys=query.keys,
                limit=self.max_find + 1 if self.max_find else None,
            )
        except NotPermitted:
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "find not permitted")
            return
        except AuditUnavailable:
            assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "audit trail unavailable")
            return
        except Exception as exc:
            log.error("query failed: %s", type(exc).__name__)
            assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "query could not be run")
            return
        sent = 0
        try:
            for row in rows:
                if assoc.cancel_requested(msg.command.message_id):
                    assoc.reply(msg, rsp, st.CANCEL)
                    return
                if self.max_find and sent >= self.max_find:
                    assoc.reply(msg, rsp, st.OUT_OF_RESOURCES,
                                "too many matches: narrow the query")  # fmt: skip
                    return
                data = encoder.encode(row)
                if data is None:  # a character set or syntax only pydicom handles
                    ds = find_response(query.identifier, query, row, self.ae_title, model)
                    data = m.encode_dataset(ds, ts)
                assoc.reply(msg, rsp, pending, dataset=data)
                sent += 1
        except Exception as exc:
            if not _is_connection_error(exc):
                log.error("query failed while streaming: %s", type(exc).__name__)
                assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "query failed")
                return
            raise
        finally:
            close = getattr(rows, "close", None)
            if close:
                close()
        assoc.reply(msg, rsp, st.SUCCESS)

    def get(self, assoc: AcceptorAssociation, msg: Message) -> None:
        rsp = m.C_GET_RQ | m.RESPONSE_BIT
        if not self.policy.require(assoc.principal, Permission.RETRIEVE, Action.RETRIEVE):
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "get not granted")
            return
        query = self._identifier(assoc, msg, Action.RETRIEVE)
        if isinstance(query, str):
            assoc.reply(msg, rsp, st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, query)
            return
        instances = self._locate(assoc, msg, rsp, query)
        if instances is None:
            return
        retrieval = Retrieval(self.archive, assoc.principal, instances)
        for inst in instances:
            if assoc.cancel_requested(msg.command.message_id):
                break
            status = assoc.send_store(inst, retrieval)
            retrieval.count(inst, status)
            if retrieval.remaining:
                assoc.reply(msg, rsp, st.PENDING, **retrieval.counts())
            if assoc.cancelled:
                break
        self._finish(assoc, msg, rsp, retrieval, cancelled=assoc.cancelled)

    def _locate(
        self,
        assoc: AcceptorAssociation,
        msg: Message,
        rsp: int,
        query: Query,
        destination: str | None = None,
    ) -> list[StoredInstance] | None:
        """The instances to retrieve, or None after answering why the retrieve cannot start."""
        try:
            return self.archive.retrieve(
                assoc.principal, query.level, query.conditions, destination=destination
            )
        except NotPermitted:
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "retrieve not permitted")
        except AuditUnavailable:
            assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "audit trail unavailable")
        except Exception as exc:
            log.error("retrieve lookup failed: %s", type(exc).__name__)
            assoc.reply(msg, rsp, st.OUT_OF_RESOURCES, "retrieve could not be run")
        return None

    def _finish(
        self,
        assoc: AcceptorAssociation,
        msg: Message,
        rsp: int,
        retrieval: Retrieval,
        *,
        cancelled: bool,
        destination: str | None = None,
    ) -> None:
        self.archive.retrieved(assoc.principal, retrieval.outcome(), destination=destination)
        code = st.CANCEL if cancelled else retrieval.final_status()
        failed = retrieval.failed_list()
        dataset = None
        if failed and code != st.SUCCESS:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = failed
            dataset = m.encode_dataset(ds, msg.context.transfer_syntax)
        assoc.reply(msg, rsp, code, dataset=dataset, **retrieval.counts(final=True))

    def move(self, assoc: AcceptorAssociation, msg: Message) -> None:
        rsp = m.C_MOVE_RQ | m.RESPONSE_BIT
        if not self.policy.require(assoc.principal, Permission.MOVE, Action.RETRIEVE):
            assoc.reply(msg, rsp, st.REFUSED_NOT_AUTHORIZED, "move not granted")
            return
        destination_aet = msg.command.get_text(m.MOVE_DESTINATION).strip()
        dest = self.policy.move_destination(assoc.principal, destination_aet)
        if dest is None:
            why = "move destination is not a registered peer"
            self.policy.refuse(assoc.actor, Action.RETRIEVE, why)
            assoc.reply(msg, rsp, st.MOVE_DESTINATION_UNKNOWN, "unknown move destination")
            return
        query = self._identifier(assoc, msg, Action.RETRIEVE)
        if isinstance(query, str):
            assoc.reply(msg, rsp, st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, query)
            return
        instances = self._locate(assoc, msg, rsp, query, destination=dest.name)
        if instances is None:
            return
        retrieval = Retrieval(self.archive, assoc.principal, instances)
        if not instances:
            self._finish(assoc, msg, rsp, retrieval, cancelled=False, destination=dest.name)
            return
        from pacsvault.dimse.requestor import RequestorError, associate

        try:
            out = associate(
                dest.host,
                dest.port,  # type: ignore[arg-type]
                calling_aet=self.ae_title,
                called_aet=dest.ae_title,
                contexts=move_contexts(instances),
                timeout=self.dimse_timeout,
            )
        except RequestorError as exc:
            log.warning("C-MOVE destination %s unreachable: %s", dest.name, exc)
            retrieval.fail_all()
            self._finish(assoc, msg, rsp, retrieval, cancelled=False, destination=dest.name)
            return
        cancelled = False
        try:
            for inst in instances:
                if assoc.cancel_requested(msg.command.message_id):
                    cancelled = True
                    break
                status = out.send_store(
                    inst, retrieval, originator=(assoc.calling_aet, msg.command.message_id)
                )
                retrieval.count(inst, status)
                if retrieval.remaining:
                    assoc.reply(msg, rsp, st.PENDING, **retrieval.counts())
        finally:
            out.release()
        self._finish(assoc, msg, rsp, retrieval, cancelled=cancelled, destination=dest.name)


def _is_connection_error(exc: Exception) -> bool:
    from pacsvault.dimse.channel import Aborted, Released
    from pacsvault.dimse.wire import WireError

    return isinstance(exc, WireError | Aborted | Released)
