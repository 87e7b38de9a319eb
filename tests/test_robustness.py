"""Bad input on the wire, C-CANCEL and invalid C-FIND identifiers.

Whatever a client sends before or instead of a proper association (garbage, a cut
A-ASSOCIATE-RQ, a PDU header announcing gigabytes, nothing at all), the server process
stays up and a registered peer still gets its C-ECHO answered. A C-CANCEL stops a
running C-FIND between two responses, and an identifier the matching rules reject gets
a failure status on a still usable association, never an abort.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from conftest import CLIENT_AET, SERVER_AET, Server, add_test_peer, cli, free_port

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


# -- helpers ----------------------------------------------------------------------------


def associate(server: Server, *abstracts: str) -> Association:
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for abstract in abstracts or (Verification,):
        ae.add_requested_context(abstract, [EXPLICIT_LE, IMPLICIT_LE])
    assoc = ae.associate("127.0.0.1", server.port, ae_title=SERVER_AET)
    assert assoc.is_established, server.log_text()[-3000:]
    return assoc


def echo(server: Server) -> int | None:
    """The status of one C-ECHO on a new association (None when there was no answer)."""
    assoc = associate(server)
    try:
        status = assoc.send_c_echo()
        return status.get("Status")
    finally:
        assoc.release()


def assert_serving(server: Server) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log_text()[-3000:]
    started = time.monotonic()
    assert echo(server) == 0x0000
    assert time.monotonic() - started < 10, "the C-ECHO was answered, but only after a stall"


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(called: str = SERVER_AET, calling: str = CLIENT_AET) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU proposing Verification (PS3.8 9.3.2)."""
    presentation = _item(
        0x20,
        struct.pack(">BBBB", 1, 0, 0, 0)
        + _item(0x30, Verification.encode())
        + _item(0x40, EXPLICIT_LE.encode()),
    )
    user_info = _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + b"\x00" * 32
        + _item(0x10, APPLICATION_CONTEXT.encode())
        + presentation
        + user_info
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_for(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within *seconds*, and whether it closed the connection."""
    data = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        except TimeoutError:
            break
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails on a timeout."""
    data, closed = read_for(sock, timeout)
    assert closed, f"the server kept the connection open for {timeout} s: {data[:64]!r}"
    return data


def pdu_types(stream: bytes) -> list[int]:
    """The types of the PDUs in *stream*, which must be a sequence of whole PDUs."""
    types = []
    while stream:
        assert len(stream) >= 6, stream
        kind, _, length = struct.unpack(">BBI", stream[:6])
        assert len(stream) >= 6 + length, stream
        types.append(kind)
        stream = stream[6 + length :]
    return types


def set_dicom_setting(data: Path, key: str, value: str) -> None:
    """Change one [dicom] setting in the data directory's pacsvault.toml."""
    path = data / "pacsvault.toml"
    text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", path.read_text())
    assert count == 1, key
    path.write_text(text)


def start_tuned_server(tmp: Path, demo_patients: int = 0, **settings: str) -> Server:
    """A server of its own in *tmp*: TESTSCU granted every service, [dicom] *settings*."""
    data = tmp / "data"
    cli(data, "init", "--aet", SERVER_AET)
    if demo_patients:
        out = cli(data, "demo", "--patients", str(demo_patients)).stdout
        assert f"loaded {demo_patients * 8} synthetic instances" in out, out
    add_test_peer(data)
    for key, value in settings.items():
        set_dicom_setting(data, key, value)
    server = Server(data, free_port(), tmp / "server.log")
    server.start()
    return server


#: Timeouts of the wire tests' server: 1 s to send an A-ASSOCIATE-RQ, 2 s of silence.
ACSE_TIMEOUT = 1.0
NETWORK_TIMEOUT = 2.0
#: How long a connection may outlive those timeouts before the server must drop it.
GRACE = 6.0


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for every bad-input-on-the-wire test, with short timeouts."""
    server = start_tuned_server(
        tmp_path_factory.mktemp("wire"),
        acse_timeout=str(ACSE_TIMEOUT),
        network_timeout=str(NETWORK_TIMEOUT),
    )
    yield server
    server.stop()


# -- the handshake itself -------------------------------------------------------------


def test_hand_built_associate_rq_is_accepted(wire: Server) -> None:
    """The PDU the tests below cut and bend is a valid one: the server accepts it."""
    with connect(wire) as sock:
        sock.sendall(associate_rq())
        sock.settimeout(10)
        header = sock.recv(6)
        assert header[:1] == b"\x02", header  # A-ASSOCIATE-AC
        sock.sendall(struct.pack(">BBI", 0x07, 0, 4) + b"\x00\x00\x00\x00")  # A-ABORT
    assert_serving(wire)


# -- bad input on the wire -------------------------------------------------------------

TLS_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x42" * 64


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
        TLS_CLIENT_HELLO,
        bytes(range(256)) * 8,
        b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,  # P-DATA-TF before any association
    ],
    ids=["http", "tls-hello", "binary", "pdata-first"],
)
def test_garbage_is_refused(wire: Server, garbage: bytes) -> None:
    with connect(wire) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(garbage)
        reply, _closed = read_for(sock, 0.5)
        # While the connection is open, others are served.
        assert_serving(wire)
    # Nothing but A-ABORT (or A-ASSOCIATE-RJ) PDUs come back, never an A-ASSOCIATE-AC.
    assert set(pdu_types(reply)) <= {0x03, 0x07}, reply[:64]
    assert_serving(wire)


@pytest.mark.parametrize("keep", [1, 5, 6, 10, 74, 100, -3])
def test_truncated_associate_rq_then_close(wire: Server, keep: int) -> None:
    pdu = associate_rq()
    with connect(wire) as sock:
        sock.sendall(pdu[:keep])
    assert_serving(wire)


def test_associate_rq_with_a_lying_item_length(wire: Server) -> None:
    """The PDU length is right, but an item inside claims more than the PDU holds."""
    pdu = bytearray(associate_rq())
    at = pdu.index(b"\x10\x00") + 2  # the application context item's length
    pdu[at : at + 2] = struct.pack(">H", 0xFFF0)
    with connect(wire) as sock:
        sock.sendall(bytes(pdu))
        reply = read_until_closed(sock, timeout=ACSE_TIMEOUT + GRACE)
    assert 0x02 not in pdu_types(reply), "a malformed request was accepted"
    assert_serving(wire)


@pytest.mark.parametrize("then_close", [True, False], ids=["close", "stall"])
def test_huge_pdu_length_announced(wire: Server, then_close: bool) -> None:
    header = struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0)
    with connect(wire) as sock:
        sock.sendall(header + associate_rq()[6:])
        if not then_close:
            # Stalled mid-PDU: others are served meanwhile.
            assert_serving(wire)
            time.sleep(0.5)
            assert_serving(wire)
    assert_serving(wire)


def test_silent_connections_do_not_block_others(wire: Server) -> None:
    socks = [connect(wire) for _ in range(3)]
    try:
        for _ in range(3):
            assert_serving(wire)
    finally:
        for s in socks:
            s.close()
    assert_serving(wire)


def test_echo_in_parallel_with_a_silent_connection(wire: Server) -> None:
    results: list[int | None] = []
    with connect(wire):
        workers = [threading.Thread(target=lambda: results.append(echo(wire))) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
    assert results == [0x0000] * 4


def test_silent_connection_is_closed_by_the_server(wire: Server) -> None:
    """No A-ASSOCIATE-RQ within acse_timeout (the ARTIM timer): the server hangs up."""
    with connect(wire) as sock:
        started = time.monotonic()
        read_until_closed(sock, timeout=ACSE_TIMEOUT + GRACE)
        assert time.monotonic() - started >= ACSE_TIMEOUT * 0.5
    assert_serving(wire)


def test_stalled_pdu_is_dropped_after_the_network_timeout(wire: Server) -> None:
    """A PDU header announcing more than ever comes: after network_timeout of silence
    the server drops the connection instead of waiting for it for ever."""
    with connect(wire) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + associate_rq()[6:40])
        read_until_closed(sock, timeout=NETWORK_TIMEOUT + GRACE)
    assert_serving(wire)


def test_tls_client_is_disconnected(wire: Server) -> None:
    """A TLS ClientHello on the cleartext port: aborted, then disconnected in bounded time
    (its bytes happen to read as a PDU header announcing ~1 GB)."""
    with connect(wire) as sock:
        sock.sendall(TLS_CLIENT_HELLO)
        reply = read_until_closed(sock, timeout=NETWORK_TIMEOUT + GRACE)
    assert set(pdu_types(reply)) <= {0x03, 0x07}, reply[:64]
    assert_serving(wire)


@pytest.fixture(scope="module")
def few_associations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server allowing 4 simultaneous associations."""
    server = start_tuned_server(tmp_path_factory.mktemp("few"), max_associations="4")
    yield server
    server.stop()


@pytest.mark.parametrize("first_bytes", [b"", b"\x01\x00\x00\x00"], ids=["silent", "stalled"])
def test_strangers_do_not_use_up_the_association_limit(
    few_associations: Server, first_bytes: bytes
) -> None:
    """Connections that never complete an A-ASSOCIATE-RQ are not associations: a
    registered peer must not be refused 'local limit exceeded' because strangers opened
    sockets."""
    socks = [connect(few_associations) for _ in range(8)]
    try:
        for s in socks:
            s.sendall(first_bytes)
        time.sleep(0.3)  # let the server start a handler for each
        assert_serving(few_associations)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)


# -- C-CANCEL ----------------------------------------------------------------------------

DEMO_PATIENTS = 38  # 8 instances each: 304 instances


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_tuned_server(tmp_path_factory.mktemp("many"), demo_patients=DEMO_PATIENTS)
    yield server
    server.stop()


def image_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = ""
    ds.SeriesInstanceUID = ""
    ds.SOPInstanceUID = ""
    ds.PatientName = ""
    ds.InstanceNumber = ""
    return ds


def find_statuses(assoc: Association, identifier: Dataset, model: str) -> list[int]:
    out = []
    for status, _ in assoc.send_c_find(identifier, model):
        assert status, "no response: the association was aborted or timed out"
        out.append(int(status.Status))
    return out


def test_universal_image_query_returns_everything(many: Server) -> None:
    """The control for the C-CANCEL test: uncancelled, the query yields all 304."""
    assoc = associate(many, StudyRootQueryRetrieveInformationModelFind)
    try:
        statuses = find_statuses(assoc, image_query(), StudyRootQueryRetrieveInformationModelFind)
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert len([s for s in statuses if s == 0xFF00]) == DEMO_PATIENTS * 8


def test_c_cancel_stops_a_running_query(many: Server) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    assoc = associate(many, model, Verification)
    try:
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == model
        )
        pending = 0
        final = None
        # send_c_find sends the request at once; the cancel follows before any answer is
        # read (answers now come faster than a client could react to the first one)
        responses = assoc.send_c_find(image_query(), model, msg_id=7)
        assoc.send_c_cancel(7, context_id)
        for status, _ in responses:
            assert status, "no response: the association was aborted or timed out"
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                pending += 1
            else:
                final = code
        assert assoc.is_established  # a cancel is not an abort
        assert assoc.send_c_echo().get("Status") == 0x0000
    finally:
        assoc.release()
    print(f"\nC-CANCEL: {pending} of {DEMO_PATIENTS * 8} matches arrived, then {final!r}")
    assert final == 0xFE00, f"final status {final!r} after {pending} matches"
    assert pending < DEMO_PATIENTS * 8 // 2, f"{pending} matches arrived after the cancel"
    assert_serving(many)


# -- invalid identifiers -----------------------------------------------------------------


def _identifier(level: str | None, **keys: str) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    ds.PatientName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


INVALID = {
    "unknown-level": (StudyRootQueryRetrieveInformationModelFind, _identifier("FOO")),
    "no-level": (StudyRootQueryRetrieveInformationModelFind, _identifier(None)),
    "patient-level-in-study-root": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("PATIENT"),
    ),
    "invalid-uid-in-list": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyInstanceUID="1.2.3\\1.2.a3"),
    ),
    "uid-with-letters": (
        PatientRootQueryRetrieveInformationModelFind,
        _identifier("IMAGE", PatientID="X", SOPInstanceUID="1.2.abc"),
    ),
    "malformed-date-range": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyDate="2020-13-01x"),
    ),
    "malformed-date-high": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyDate="20200101-2020131"),
    ),
    "malformed-date": (
        PatientRootQueryRetrieveInformationModelFind,
        _identifier("PATIENT", PatientBirthDate="1970/01/01"),
    ),
    "malformed-time-range": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyTime="10a0-1200"),
    ),
    "range-without-bounds": (
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyDate="-"),
    ),
}


@pytest.fixture(scope="module")
def query_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server, with a few instances, for all the invalid-identifier cases."""
    server = start_tuned_server(tmp_path_factory.mktemp("queries"), demo_patients=2)
    yield server
    server.stop()


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_identifier_gets_a_failure_status(query_server: Server, case: str) -> None:
    model, identifier = INVALID[case]
    assoc = associate(query_server, model, Verification)
    try:
        statuses = find_statuses(assoc, identifier, model)
        assert len(statuses) == 1, f"matches were sent for an invalid query: {statuses}"
        code = statuses[0]
        assert 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF, f"{code:#06x}"
        # Not an abort: the same association answers the next requests.
        assert assoc.is_established
        assert assoc.send_c_echo().get("Status") == 0x0000
        valid = _identifier("STUDY", StudyInstanceUID="")
        if model == PatientRootQueryRetrieveInformationModelFind:
            valid.PatientID = ""
        after = find_statuses(assoc, valid, model)
        assert after[-1] == 0x0000 and after.count(0xFF00) == 4  # 2 patients x 2 studies
    finally:
        assoc.release()
    assert_serving(query_server)


def test_refused_queries_are_audited(query_server: Server) -> None:
    model, identifier = INVALID["invalid-uid-in-list"]
    assoc = associate(query_server, model)
    try:
        find_statuses(assoc, identifier, model)
    finally:
        assoc.release()
    refused = [a for a in query_server.audit() if a[1] != "success" and "UID" in (a[4] or "")]
    assert refused, query_server.audit()[-5:]
    assert all("1.02.3" not in (a[4] or "") for a in query_server.audit())
