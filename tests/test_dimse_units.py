"""Units of the DICOM upper layer: command sets, PDV framing, statuses, negotiation."""

from __future__ import annotations

import socket
import struct

import pytest

from pacsvault.dicom import status as st
from pacsvault.dimse import messages as m
from pacsvault.dimse.channel import BoundedBuffer, Channel, Discard
from pacsvault.dimse.negotiation import ProposedContext, negotiate
from pacsvault.dimse.wire import Wire, WireError
from pacsvault.security.peers import new_peer, parse_services


def test_every_named_status_is_in_the_table() -> None:
    named = {v for k, v in vars(st).items() if k.isupper() and isinstance(v, int)}
    assert named <= set(st.STATUSES)
    from pacsvault.storage.archive import STORE_STATUS, StoreStatus

    assert set(STORE_STATUS) == set(StoreStatus)
    assert set(STORE_STATUS.values()) <= set(st.STATUSES)


@pytest.mark.parametrize(
    ("code", "category"),
    [(0x0000, "success"), (0xFF00, "pending"), (0xB000, "warning"), (0x0107, "warning"),
     (0xA702, "failure"), (0xC211, "failure"), (0xFE00, "cancel")],
)  # fmt: skip
def test_categories(code: int, category: str) -> None:
    assert st.category(code).value == category


def test_command_round_trip() -> None:
    fields = {
        m.COMMAND_FIELD: m.C_STORE_RQ,
        m.MESSAGE_ID: 7,
        m.AFFECTED_SOP_CLASS: "1.2.840.10008.5.1.4.1.1.2",
        m.AFFECTED_SOP_INSTANCE: "1.2.3.45",
        m.PRIORITY: 0,
        m.DATASET_TYPE: m.DATASET_PRESENT,
        m.MOVE_ORIGINATOR_AET: "ODD",
    }
    data = m.encode_command(fields)
    assert len(data) % 2 == 0
    group_length = struct.unpack_from("<L", data, 8)[0]
    assert group_length == len(data) - 12
    cmd = m.decode_command(data)
    assert cmd.command_field == m.C_STORE_RQ and cmd.message_id == 7 and cmd.has_dataset
    assert cmd.get_text(m.AFFECTED_SOP_INSTANCE) == "1.2.3.45"
    assert cmd.get_text(m.MOVE_ORIGINATOR_AET) == "ODD"


@pytest.mark.parametrize(
    "bad",
    [b"\x00\x00\x00\x00\x04", b"\x08\x00\x00\x00\x02\x00\x00\x00ab",
     b"\x00\x00\x00\x01\x02\x00\x00\x00\x01"],
    ids=["cut-header", "not-group-0", "cut-value"],
)  # fmt: skip
def test_malformed_commands_are_refused(bad: bytes) -> None:
    with pytest.raises(m.CommandError):
        m.decode_command(bad)


def test_bounded_buffer() -> None:
    buf = BoundedBuffer(10)
    buf.write(b"12345")
    buf.write(b"67890")
    assert buf.getvalue() == b"1234567890" and not buf.overflow
    buf.write(b"x")
    assert buf.overflow and buf.getvalue() == b""


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    return a, b


def test_a_message_is_fragmented_to_the_peer_limit_and_reassembled() -> None:
    a, b = _pair()
    ctx = {1: negotiate(new_peer("p", "P", "127.0.0.1", None, parse_services("store")),
                        [ProposedContext(1, "1.2.840.10008.5.1.4.1.1.2",
                                         ("1.2.840.10008.1.2.1",))], {}).accepted[1]}  # fmt: skip
    sender = Channel(Wire(a), ctx, max_send=4096, max_receive=0)
    receiver = Channel(Wire(b), ctx, max_send=0, max_receive=4096)
    dataset = bytes(range(256)) * 100  # 25,600 bytes: 7 fragments of at most 4090
    fields = {m.COMMAND_FIELD: m.C_STORE_RQ, m.MESSAGE_ID: 1,
              m.AFFECTED_SOP_CLASS: "1.2.840.10008.5.1.4.1.1.2"}  # fmt: skip
    import threading

    t = threading.Thread(target=sender.send, args=(1, fields, dataset))
    t.start()
    sink = BoundedBuffer(1 << 20)
    msg = receiver.next_message(lambda _c, _m: sink)
    t.join()
    assert msg.command.message_id == 1 and sink.getvalue() == dataset
    a.close()
    b.close()


def test_a_pdu_over_the_limit_is_refused_before_its_body_is_read() -> None:
    a, b = _pair()
    a.sendall(struct.pack(">BxL", 0x04, 10_000_000) + b"\x00" * 100)
    channel = Channel(Wire(b), {}, max_send=0, max_receive=65536)
    with pytest.raises(WireError, match="exceeds the limit"):
        channel.next_message(lambda _c, _m: Discard())
    a.close()
    b.close()


def test_roles_for_storage_contexts() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    proposed = [ProposedContext(1, ct, ("1.2.840.10008.1.2",))]
    get_only = new_peer("g", "G", "127.0.0.1", None, parse_services("find,get"))
    store_only = new_peer("s", "S", "127.0.0.1", None, parse_services("store"))
    both = new_peer("b", "B", "127.0.0.1", None, parse_services("store,get"))
    # No role selection: the requestor is SCU, which only a storing peer may be.
    assert negotiate(get_only, proposed, {}).accepted == {}
    assert negotiate(store_only, proposed, {}).accepted[1].requestor_scu
    # Both roles proposed: each peer gets what it was granted, the reply says so.
    for peer, scu, scp in ((get_only, False, True), (store_only, True, False),
                           (both, True, True)):  # fmt: skip
        n = negotiate(peer, proposed, {ct: (True, True)})
        cx = n.accepted[1]
        assert (cx.requestor_scu, cx.requestor_scp) == (scu, scp)
        assert n.roles == [(ct, scu, scp)]
