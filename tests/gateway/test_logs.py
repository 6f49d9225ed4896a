"""JSON log lines: structured fields, and picows' per-connection lines in the gateway's format at DEBUG."""
from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.logs import setup_logging


@pytest.fixture
def capture():
    """``capture(level)`` routes logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def start(level: str) -> io.StringIO:
        buf = io.StringIO()
        setup_logging(level, worker=3, stream=buf)
        return buf

    yield start
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def picows_connection_logger(fd: int) -> logging.Logger:
    """What picows does per accepted socket (picows.pyx, WSProtocol.connection_made)."""
    child = logging.Logger(f"picows.server.{fd}", logging.NOTSET)  # noqa: LOG001 - as picows does
    child.parent = logging.getLogger("picows.server")
    child.propagate = True
    return child


def test_fields_are_structured_and_never_replace_the_base_ones(capture):
    buf = capture("INFO")
    logging.getLogger("gateway").info("startup summary", extra={"fields": {"listen": "127.0.0.1:1", "workers": 2,
                                                                          "msg": "not this", "worker": "nor this"}})
    [entry] = lines(buf)
    assert entry["msg"] == "startup summary" and entry["worker"] == 3
    assert entry["listen"] == "127.0.0.1:1" and entry["workers"] == 2


def test_picows_connection_lines_are_debug(capture):
    buf = capture("INFO")
    conn = picows_connection_logger(17)
    conn.info("New connection accepted: %s <- %s, recvbuf=%d, sendbuf=%d, quickack=%d, nodelay=%d, mask_impl=%s",
              ("127.0.0.1", 8080), ("127.0.0.1", 5555), 1, 2, 1, 1, "avx512")
    conn.info("WS connection established: %s -> %s", "a", "b")
    conn.info("Disconnected")
    conn.warning("Initiate disconnect because of exception from WSListener.on_ws_frame: %s", "boom")
    conn.info("Handshake timeout, the client hasn't requested upgrade within required time, close connection")
    got = lines(buf)
    assert [(e["level"], e["logger"], e.get("fd")) for e in got] == [
        ("warning", "picows.server", 17), ("info", "picows.server", 17)]
    assert got[0]["msg"].endswith("boom") and got[0]["worker"] == 3


def test_picows_connection_lines_shown_at_debug(capture):
    buf = capture("DEBUG")
    conn = picows_connection_logger(9)
    conn.info("New connection accepted: %s <- %s", "x", "y")
    conn.info("Disconnected")
    logging.getLogger("gateway.call").info("call ended: completed")
    got = lines(buf)
    assert [(e["level"], e["logger"], e.get("fd"), e["msg"]) for e in got] == [
        ("debug", "picows.server", 9, "New connection accepted: x <- y"),
        ("debug", "picows.server", 9, "Disconnected"),
        ("info", "gateway.call", None, "call ended: completed"),
    ]
