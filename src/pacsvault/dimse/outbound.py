"""Sending stored instances as they were received (C-GET and C-MOVE sub-operations).

pynetdicom's retrieve service classes take datasets from our handlers and pass
them to ``Association.send_c_store``, which would decode and re-encode them. An
:class:`OutboundInstance` stands for a stored file instead; the wrapper below
sends its bytes untouched when the peer accepted the stored transfer syntax, and
falls back to pynetdicom's conversion between uncompressed syntaxes otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from pacsvault.dimse.negotiation import UNCOMPRESSED
from pacsvault.storage.index import StoredInstance

_config.STORE_SEND_CHUNKED_DATASET = True  # a path is sent as raw bytes, never re-encoded

MAX_CONTEXTS = 128


class OutboundInstance(Dataset):
    """A placeholder dataset for a stored file, resolved when it is sent."""

    def __init__(self, inst: StoredInstance, path: Path) -> None:
        super().__init__()
        self.SOPClassUID = inst.sop_class_uid
        self.SOPInstanceUID = inst.sop_instance_uid
        self.stored = inst
        self.path = path

    def resolve(self, assoc: Association) -> Path | Dataset:
        """The file itself when its transfer syntax was accepted, else the decoded dataset."""
        for cx in assoc.accepted_contexts:
            if (
                cx.abstract_syntax == self.stored.sop_class_uid
                and cx.transfer_syntax[0] == self.stored.transfer_syntax_uid
                and cx.as_scu
            ):
                return self.path
        return dcmread(self.path)


_send_c_store = Association.send_c_store


def _send_stored(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    if isinstance(dataset, OutboundInstance):
        dataset = dataset.resolve(self)
    return _send_c_store(self, dataset, *args, **kwargs)


if not getattr(Association.send_c_store, "_pacsvault", False):
    _send_stored._pacsvault = True  # type: ignore[attr-defined]
    Association.send_c_store = _send_stored  # type: ignore[method-assign]


def move_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination for *instances*.

    One context per (SOP class, stored transfer syntax), so files go out as stored;
    uncompressed ones also offer the other uncompressed syntaxes for conversion.
    """
    wanted: dict[tuple[str, str], None] = {}
    for inst in instances:
        wanted[(inst.sop_class_uid, inst.transfer_syntax_uid)] = None
    contexts = []
    for sop_class, ts in list(wanted)[:MAX_CONTEXTS]:
        cx = PresentationContext()
        cx.abstract_syntax = sop_class
        syntaxes = [ts] + ([t for t in UNCOMPRESSED if t != ts] if ts in UNCOMPRESSED else [])
        cx.transfer_syntax = syntaxes
        contexts.append(cx)
    return contexts
