"""Logs carry no patient data and no raw control characters (issue 7, items 9 and 10)."""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from conftest import Server
from pacsvault.logsafe import ControlCharacterFilter, escape, install
from test_robustness import associate, associate_rq, connect, read_for, start_tuned_server

NAME = "SECRETSURNAME^GIVEN"
FORGED = "2026-01-01 00:00:00,000 INFO pacsvault.policy: association accepted"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_tuned_server(tmp_path_factory.mktemp("logs"), demo_patients=1)
    yield srv
    srv.stop()


def test_query_values_never_reach_the_log_when_the_index_fails(server: Server) -> None:
    # Break the index under the running server: every query now raises in SQL.
    with sqlite3.connect(server.data / "index.sqlite") as conn:
        conn.execute("ALTER TABLE studies RENAME TO studies_gone")
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientName = NAME
        ds.PatientID = "PVSECRET42"
        ds.StudyInstanceUID = ""
        assoc = associate(server, StudyRootQueryRetrieveInformationModelFind)
        try:
            model = StudyRootQueryRetrieveInformationModelFind
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(ds, model)]
        finally:
            assoc.release()
    finally:
        with sqlite3.connect(server.data / "index.sqlite") as conn:
            conn.execute("ALTER TABLE studies_gone RENAME TO studies")
    assert statuses == [0xA700]
    text = server.log_text()
    assert "query failed" in text
    assert "SECRETSURNAME" not in text and "secretsurname" not in text
    assert "PVSECRET42" not in text


def test_control_characters_from_the_wire_are_escaped_in_the_log(server: Server) -> None:
    calling = "EV\r\n" + FORGED[:8]  # 16 bytes: CR/LF and the start of a forged line
    with connect(server) as sock:
        sock.sendall(associate_rq(calling=calling[:16]))
        read_for(sock, 2)
    esc = "\x1bCLEAR"
    with connect(server) as sock:
        sock.sendall(associate_rq(called=esc))
        read_for(sock, 2)
    raw = server.log_path.read_bytes()
    assert b"\x1b" not in raw
    assert b"\r" not in raw
    for line in raw.decode().splitlines():
        assert not line.startswith(FORGED[:8]), line


def test_one_filter_escapes_every_logger_including_pynetdicoms() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("test-logs-root")
    logger.addHandler(handler)
    child = logging.getLogger("test-logs-root.pynetdicom")
    try:
        install(logger)
        install(logger)  # idempotent
        assert sum(isinstance(f, ControlCharacterFilter) for f in handler.filters) == 1
        child.warning("peer %s said\r\nFORGED", "AE\x1b[2J")
        try:
            raise ValueError("bad\nvalue\x07")
        except ValueError:
            child.exception("failure %s", "x\u2028y")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text and "\u2028" not in text
    assert "AE\\x1b[2J said\\x0d\\x0aFORGED" in text
    assert "bad\\x0avalue\\x07" in text
    assert "x\\u2028y" in text
    assert text.count("\n") >= 4  # tracebacks keep their lines


def test_escape() -> None:
    assert escape("a\tb\x00\x7f\x9b") == "a\\x09b\\x00\\x7f\\x9b"
    assert escape("plain ünïcode") == "plain ünïcode"
