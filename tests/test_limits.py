"""Bounded query shapes and fair use of association slots (issue 7, items 5 and 8).

A query key with 40,000 UIDs or a 1 MB wildcard gets a failure status with a
reason; one peer cannot hold every association slot; silent sockets cannot keep a
registered peer out; an unknown PDU type or user identity type is answered at
once.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from conftest import CLIENT_AET, SERVER_AET, Server, cli, dcmtk
from test_robustness import (
    _item,
    assert_serving,
    associate,
    associate_rq,
    connect,
    read_for,
    start_tuned_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    srv = start_tuned_server(tmp, demo_patients=2, max_associations_per_peer="4")
    cli(srv.data, "peer", "add", "modality", "--aet", "MODALITY", "--host", "127.0.0.1",
        "--allow", "echo,store")  # fmt: skip
    yield srv
    srv.stop()


def find(server: Server, identifier: Dataset) -> list[tuple[int, str]]:
    """(status, error comment) of every response to one C-FIND."""
    assoc = associate(server, StudyRootQueryRetrieveInformationModelFind)
    try:
        out = []
        model = StudyRootQueryRetrieveInformationModelFind
        for status, _ds in assoc.send_c_find(identifier, model):
            assert status, "no response: aborted"
            out.append((int(status.Status), str(status.get("ErrorComment", ""))))
        return out
    finally:
        assoc.release()


def test_a_uid_list_of_40000_values_is_refused_with_a_reason(server: Server) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = [f"1.2.3.{n}" for n in range(40000)]
    responses = find(server, ds)
    assert len(responses) == 1
    status, comment = responses[0]
    assert status == 0xA900
    assert "identifier larger than" in comment or "more than 1000" in comment
    assert "Traceback" not in server.log_text()
    assert_serving(server)


def test_a_list_of_2000_uids_is_refused_and_a_list_of_500_works(server: Server) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = [f"1.2.3.{n}" for n in range(2000)]
    assert find(server, ds) == [(0xA900, "StudyInstanceUID lists more than 1000 UIDs")]
    ds.StudyInstanceUID = [f"1.2.3.{n}" for n in range(500)]
    assert find(server, ds) == [(0x0000, "")]


def test_a_1_mb_wildcard_is_refused_with_a_reason(server: Server) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "A" * 1_000_000 + "*"
    responses = find(server, ds)
    assert len(responses) == 1
    status, comment = responses[0]
    assert status == 0xA900 and "longer than 1024 characters" in comment
    assert "Traceback" not in server.log_text()


def test_an_identifier_above_max_query_size_is_refused(server: Server) -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDescription = "x" * 2_000_000
    status, comment = find(server, ds)[0]
    assert status == 0xA900 and comment.startswith("identifier larger than")
    assert_serving(server)


def _hold(server: Server, calling: str, n: int) -> list:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 10
    return [ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET) for _ in range(n)]


def test_one_peer_cannot_hold_every_association_slot(server: Server) -> None:
    held = _hold(server, CLIENT_AET, 10)
    try:
        established = [a for a in held if a.is_established]
        assert len(established) == 4  # max_associations_per_peer
        assert any(a.is_rejected for a in held)
        # Another peer (the modality) still gets in at once.
        started = time.monotonic()
        proc = dcmtk("echoscu", "-aet", "MODALITY", "-aec", SERVER_AET,
                     "127.0.0.1", str(server.port))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 5
    finally:
        for a in held:
            if a.is_established:
                a.release()


def test_200_silent_sockets_do_not_keep_a_registered_peer_out(server: Server) -> None:
    socks = []
    try:
        for n in range(200):
            # Half from the peer's own address, half from another loopback address.
            source = "127.0.0.1" if n % 2 else "127.0.0.2"
            s = socket.socket()
            s.bind((source, 0))
            s.connect(("127.0.0.1", server.port))
            socks.append(s)
        time.sleep(0.5)
        started = time.monotonic()
        proc = dcmtk("echoscu", "-aet", "MODALITY", "-aec", SERVER_AET,
                     "127.0.0.1", str(server.port))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 5
        assert_serving(server)
    finally:
        for s in socks:
            s.close()


def test_an_unknown_pdu_type_is_aborted_at_once(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(associate_rq())
        sock.settimeout(10)
        assert sock.recv(6)[:1] == b"\x02"
        sock.recv(65536)
        started = time.monotonic()
        sock.sendall(struct.pack(">BBI", 0x0B, 0, 4) + b"\x00" * 4)
        reply, closed = read_for(sock, 5)
        assert closed and time.monotonic() - started < 1
        assert reply[:1] == b"\x07"  # A-ABORT
    assert "Traceback" not in server.log_text()
    assert_serving(server)


def test_an_unknown_user_identity_type_is_answered_at_once(server: Server) -> None:
    rq = bytearray(associate_rq())
    identity = _item(0x58, struct.pack(">BBH", 9, 0, 5) + b"alice" + struct.pack(">H", 0))
    # Append the identity sub-item to the user information item (the last item).
    at = rq.rindex(b"\x50\x00")
    length = struct.unpack(">H", rq[at + 2 : at + 4])[0] + len(identity)
    rq[at + 2 : at + 4] = struct.pack(">H", length)
    rq += identity
    rq[2:6] = struct.pack(">I", len(rq) - 6)
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(bytes(rq))
        reply, _closed = read_for(sock, 5)
        assert time.monotonic() - started < 1
    assert reply[:1] in (b"\x03", b"\x07"), reply[:16]  # rejected or aborted, never accepted
    assert "Traceback" not in server.log_text()
    assert_serving(server)


def test_a_requested_positive_identity_response_is_sent(data_dir: Path, make_server) -> None:
    out = cli(data_dir, "user", "add", "alice", "--role", "radiologist").stdout
    password = out.split("(shown once): ")[1].strip()
    cli(data_dir, "peer", "add", "t", "--aet", CLIENT_AET, "--host", "127.0.0.1",
        "--allow", "echo")  # fmt: skip
    path = data_dir / "pacsvault.toml"
    path.write_text(path.read_text().replace(
        "allow_passcode_without_tls = false", "allow_passcode_without_tls = true"))  # fmt: skip
    srv = make_server(data_dir)
    ae = AE(ae_title=CLIENT_AET)
    ae.add_requested_context(Verification)
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"alice"
    item.secondary_field = password.encode()
    item.positive_response_requested = True
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=SERVER_AET, ext_neg=[item])
    try:
        assert assoc.is_established
        responses = [
            i for i in assoc.acceptor.user_information if isinstance(i, UserIdentityNegotiation)
        ]
        assert len(responses) == 1
    finally:
        assoc.release()
