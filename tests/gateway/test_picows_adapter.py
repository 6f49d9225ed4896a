"""The one module that reaches inside picows (``gateway.picows_adapter``): fails loudly when picows changes.

Each test here would break on a picows release that moved what the adapter relies on: the
version range, the internal ``WSProtocol`` constructor (exercised over a real socket, with an
independent client, ``websockets``), the gateway's own multi-frame writes, and aiofastnet's TLS on
the socket itself (``socket_bio_tls``, over real TLS connections).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
import websockets
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest

from gateway import picows_adapter as pa
from gateway.openssl_ctx import enable_read_ahead


@pytest.mark.parametrize(("length", "header"), [
    (0, b"\x81\x00"),
    (125, b"\x81\x7d"),
    (126, b"\x81\x7e\x00\x7e"),
    (65535, b"\x81\x7e\xff\xff"),
    (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    (2**40 + 5, b"\x81\x7f\x00\x00\x01\x00\x00\x00\x00\x05"),
])
def test_text_frame_header(length, header):
    assert pa.text_frame_header(length) == header


def test_installed_picows_is_in_the_tested_range():
    pa.check_picows()  # the import already ran it; explicit for the report


@pytest.mark.parametrize("version", ["1.20.0", "2.4.0", "3.0.0"])
def test_untested_picows_is_refused_with_the_range(version):
    with pytest.raises(pa.IncompatiblePicowsError, match=r"outside the tested range 2\.0 <= v < 2\.4"):
        pa.check_picows(version)


def test_changed_protocol_constructor_fails_at_start(run):
    def broken() -> asyncio.BufferedProtocol:
        raise TypeError("__init__() takes exactly 16 positional arguments (15 given)")

    async def scenario() -> None:
        with pytest.raises(pa.IncompatiblePicowsError, match="WSProtocol signature changed"):
            pa.check_server_protocol(broken)
        pa.check_server_protocol(_factory(lambda _request: None))  # the real one builds

    run(scenario())


class _Echo(WSListener):
    """Answers each text message with itself and an upper-cased copy, in ONE write (send_many)."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.sender = pa.ServerWSSender(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            self.sender.send_many(data, data.upper(), b"x" * 70_000)  # 2-, 2- and 8-byte length forms
        elif frame.msg_type is WSMsgType.CLOSE:
            self.sender.close(1000, "bye")


def _factory(listener_factory: pa.ListenerFactory):
    return pa.server_protocol_factory(listener_factory, logger=logging.getLogger("picows.test"),
                                      max_frame_size=1 << 20, read_buffer_size=2048)


def test_server_protocol_on_an_accepted_socket(run):
    """A connection accepted by a plain asyncio server and served by the adapter's protocol."""
    seen: list[WSUpgradeRequest] = []

    def route(request: WSUpgradeRequest) -> WSListener:
        seen.append(request)
        return _Echo()

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(_factory(route), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/twilio/media", max_size=1 << 20) as ws:
                await ws.send("hello")
                assert [await ws.recv() for _ in range(3)] == ["hello", "HELLO", "x" * 70_000]
        finally:
            server.close()
            await server.wait_closed()
        assert seen[0].path == b"/twilio/media"

    run(scenario())


class _TLSEcho(WSListener):
    """Echoes each text message, so a test sees every byte come back through TLS both ways."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, frame.get_payload_as_bytes())


class _Collect(WSListener):
    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            self.messages.put_nowait(frame.get_payload_as_bytes())


@pytest.mark.parametrize(("socket_bio", "read_ahead"), [(True, True), (True, False), (False, False)],
                         ids=["socket-bio-read-ahead", "socket-bio", "memory-bio"])
def test_tls_on_the_socket_itself(run, tmp_path, socket_bio, read_ahead):
    """``socket_bio_tls`` takes (aiofastnet reads the attribute), ``uses_socket_bio`` tells the two
    apart, and the bytes survive, with and without OpenSSL's read-ahead: small messages,
    record-spanning ones, and a burst far beyond the bounded socket buffer (OpenSSL's partial
    writes on a socket BIO, resumed when writable; several records per read with read-ahead)."""
    from picows import ws_connect, ws_create_server

    from gateway.sim.openai_tls import make_self_signed_tls

    server_ctx, ca_file = make_self_signed_tls(str(tmp_path))
    client_ctx = ssl.create_default_context(cafile=ca_file)
    if socket_bio:
        pa.socket_bio_tls(client_ctx)
    if read_ahead:
        assert enable_read_ahead(client_ctx) is None

    async def scenario() -> None:
        server = await ws_create_server(lambda _request: _TLSEcho(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        transport, client = await ws_connect(_Collect, f"wss://127.0.0.1:{port}/", ssl_context=client_ctx,
                                             max_frame_size=1 << 22)
        try:
            assert pa.uses_socket_bio(transport) is socket_bio
            pa.bound_send_buffer(transport.underlying_transport)
            sent = [b"hello", b"y" * 70_000] + [bytes([65 + i % 26]) * 40_000 for i in range(50)]
            for message in sent:
                transport.send(WSMsgType.TEXT, message)
            got = [await asyncio.wait_for(client.messages.get(), 10) for _ in sent]
            assert got == sent
        finally:
            transport.disconnect()
            await transport.wait_disconnected()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_socket_bio_check_warns_once_when_aiofastnet_ignores_it(caplog):
    class _Transport:
        def __init__(self, membio: bool) -> None:
            self.underlying_transport = self
            self.membio = membio

        def get_extra_info(self, name: str) -> object:
            return self.membio if name.endswith("_use_membio") else None

    check = pa.SocketBioCheck()
    with caplog.at_level(logging.WARNING, logger="gateway.picows_adapter"):
        check(_Transport(membio=True))
        check(_Transport(membio=True))
    assert [r.getMessage() for r in caplog.records if "kept memory BIOs" in r.getMessage()] == [
        (f"aiofastnet {pa.AIOFASTNET_VERSION} kept memory BIOs for TLS (gateway/picows_adapter.py, "
         "socket_bio_tls): calls work, with about 25 KiB more memory each")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.picows_adapter"):
        pa.SocketBioCheck()(_Transport(membio=False))
    assert not caplog.records
