"""Sending stored instances (C-GET and C-MOVE sub-operations), as they were received.

A stored object goes out byte for byte, streamed from the blob store, on a
context whose transfer syntax is the stored one. When the receiver accepted only
another uncompressed syntax for that SOP class, an uncompressed object is
re-encoded (in memory: the only path where an object is held whole). Counts of
completed, failed and warning sub-operations are kept per study, for the final
response and for the audit record written when the retrieve ends.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from pynetdicom.presentation import PresentationContext

from pacsvault.dicom import status as st
from pacsvault.dicom.part10 import NotDicom, meta_length
from pacsvault.dicom.transcode import TranscodeError
from pacsvault.dicom.transcode import transcode as convert
from pacsvault.dimse import messages as m
from pacsvault.dimse.channel import Channel, Discard
from pacsvault.dimse.negotiation import UNCOMPRESSED, Context, ProposedContext
from pacsvault.security.identity import Principal
from pacsvault.storage.archive import Archive, RetrieveOutcome
from pacsvault.storage.index import StoredInstance

log = logging.getLogger("pacsvault.dimse")

MAX_CONTEXTS = 128


@dataclass
class Retrieval:
    """Progress of one C-GET or C-MOVE: counts per study and the failed instances."""

    archive: Archive
    principal: Principal
    instances: list[StoredInstance]
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    per_study: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return len(self.instances) - self.completed - self.failed - self.warning

    def count(self, inst: StoredInstance, status: int) -> None:
        """Count one sub-operation by the status the receiver answered."""
        slot = self.per_study.setdefault((inst.study_instance_uid, inst.patient_id), [0, 0, 0])
        if status == st.SUCCESS:
            self.completed += 1
            slot[0] += 1
        elif st.is_warning(status):
            self.warning += 1
            slot[2] += 1
        else:
            self.failed += 1
            slot[1] += 1
            self.failed_uids.append(inst.sop_instance_uid)

    def fail_all(self) -> None:
        for inst in self.instances:
            self.count(inst, st.SUB_OPERATIONS_FAILED)

    def counts(self, *, final: bool = False) -> dict[str, int]:
        """Sub-operation counts for a C-GET/C-MOVE response."""
        out = {"completed": self.completed, "failed": self.failed, "warning": self.warning}
        if not final:
            out["remaining"] = self.remaining
        return out

    def final_status(self) -> int:
        if self.failed and not (self.completed or self.warning):
            return st.SUB_OPERATIONS_FAILED
        if self.failed or self.warning:
            return st.SUB_OPERATIONS_WARNING
        return st.SUCCESS

    def failed_list(self) -> list[str]:
        """Failed instances, and those never attempted (after a cancel)."""
        done = {*self.failed_uids}
        attempted = self.completed + self.failed + self.warning
        rest = [i.sop_instance_uid for i in self.instances[attempted:]]
        return [*self.failed_uids, *(u for u in rest if u not in done)]

    def outcome(self) -> RetrieveOutcome:
        """What was sent, per (study, patient), for the audit trail."""
        return {key: (c, f, w) for key, (c, f, w) in self.per_study.items()}


def choose_context(
    contexts: Iterator[Context] | list[Context], inst: StoredInstance, *, we_are_scu_by_role: bool
) -> tuple[Context, bool] | None:
    """A context to send *inst* on, and whether it needs re-encoding; None if there is none.

    *we_are_scu_by_role*: on an association we accepted (C-GET), the requestor must
    have taken the SCP role for the SOP class.
    """
    fallback = None
    for cx in contexts:
        if cx.abstract_syntax != inst.sop_class_uid:
            continue
        if we_are_scu_by_role and not cx.requestor_scp:
            continue
        if cx.transfer_syntax == inst.transfer_syntax_uid:
            return cx, False
        if inst.transfer_syntax_uid in UNCOMPRESSED and cx.transfer_syntax in UNCOMPRESSED:
            fallback = fallback or cx
    return (fallback, True) if fallback else None


class StoreRequester:
    """The C-STORE requestor side of an association: used for C-GET and C-MOVE sub-operations."""

    channel: Channel
    contexts: dict[int, Context]
    we_are_scu_by_role: bool = False
    cancelled: bool = False

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def send_store(
        self,
        inst: StoredInstance,
        retrieval: Retrieval,
        originator: tuple[str, int] | None = None,
    ) -> int:
        """Send *inst*, wait for the receiver's answer and return its status.

        Returns a failure status without sending when no accepted context fits or the
        stored object cannot be read.
        """
        choice = choose_context(
            list(self.contexts.values()), inst, we_are_scu_by_role=self.we_are_scu_by_role
        )
        if choice is None:
            log.warning("sub-operation not sent: the receiver accepted no context for it")
            return st.SUB_OPERATIONS_FAILED
        cx, transcode = choice
        message_id = next(self._ids) & 0xFFFF
        fields: dict = {
            m.COMMAND_FIELD: m.C_STORE_RQ,
            m.MESSAGE_ID: message_id,
            m.PRIORITY: 0,
            m.AFFECTED_SOP_CLASS: inst.sop_class_uid,
            m.AFFECTED_SOP_INSTANCE: inst.sop_instance_uid,
        }
        if originator is not None:
            fields[m.MOVE_ORIGINATOR_AET] = originator[0]
            fields[m.MOVE_ORIGINATOR_ID] = originator[1]
        try:
            with retrieval.archive.open(retrieval.principal, inst) as stream:
                offset = meta_length(stream.read(144))
                stream.seek(offset)
                if transcode:
                    data = convert(stream, inst.transfer_syntax_uid, cx.transfer_syntax)
                    self.channel.send(cx.id, fields, data)
                else:
                    self.channel.send_stream(cx.id, fields, stream, inst.size - offset)
        except (OSError, NotDicom, TranscodeError) as exc:
            log.error("stored object unreadable: %s", type(exc).__name__)
            return st.SUB_OPERATIONS_FAILED
        return self._await_response(message_id)

    def _await_response(self, message_id: int) -> int:
        while True:
            msg = self.channel.next_message(lambda _c, _m: Discard())
            cmd = msg.command
            if cmd.command_field == m.C_CANCEL_RQ:
                self.cancelled = True
                continue
            if (
                cmd.command_field == (m.C_STORE_RQ | m.RESPONSE_BIT)
                and cmd.get_int(m.RESPONDED_TO) == message_id
            ):
                return cmd.status
            from pacsvault.dimse.wire import ABORT_UNEXPECTED_PDU, WireError

            raise WireError("unexpected message while waiting for a C-STORE response",
                            ABORT_UNEXPECTED_PDU)  # fmt: skip


def move_contexts(instances: list[StoredInstance]) -> list[ProposedContext]:
    """Presentation contexts to propose to a C-MOVE destination for *instances*.

    One context per (SOP class, stored transfer syntax), so files go out as stored;
    uncompressed ones also offer the other uncompressed syntaxes for conversion.
    """
    wanted: dict[tuple[str, str], None] = {}
    for inst in instances:
        wanted[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
    contexts = []
    for n, (sop_class, ts) in enumerate(list(wanted)[:MAX_CONTEXTS]):
        syntaxes = [ts] + ([t for t in UNCOMPRESSED if t != ts] if ts in UNCOMPRESSED else [])
        contexts.append(ProposedContext(2 * n + 1, sop_class, tuple(syntaxes)))
    return contexts


def as_presentation_contexts(proposed: list[ProposedContext]) -> list[PresentationContext]:
    """pynetdicom PresentationContext objects for an A-ASSOCIATE-RQ."""
    out = []
    for p in proposed:
        cx = PresentationContext()
        cx.context_id = p.id
        cx.abstract_syntax = p.abstract_syntax
        cx.transfer_syntax = list(p.transfer_syntaxes)
        out.append(cx)
    return out
