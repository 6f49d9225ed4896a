"""Upstream realtime session on picows: one client socket per call, TLS verified.

``UpstreamConnector.open(call)`` starts a task that connects and hands the call a sender; every
failure path ends in ``call.upstream_failed`` so the call ends cleanly with a counted reason.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..call import Call, State
from ..config import Settings
from ..ws import WSSender

log = logging.getLogger("gateway.upstream")
MAX_UPSTREAM_MESSAGE = 16 * 1024 * 1024  # input appends may be 15 MiB; server events are far smaller
# Memory per call (picows grows these on demand, never shrinks them). Server events are mostly
# audio deltas of 1-7 KiB; 4 KiB instead of picows's 16 KiB default saves 12 KiB per call.
READ_BUFFER = 4 * 1024
# aiofastnet (picows's TLS transport) gives each connection two static BIOs of 16 TLS records
# (2 x 257 KiB of address space, first pages resident). One record each is enough for a stream of
# small messages (a larger write is simply sent in several record-sized pieces); 16 KiB + 64 is
# aiofastnet's minimum plus one record's overhead.
TLS_BIO_BYTES = 16 * 1024 + 64


class UpstreamListener(WSListener):
    def __init__(self, call: Call) -> None:
        self.call = call
        self._fragments: bytearray | None = None
        self.closed_by_us = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        # The connect may complete after the call ended (timeout/cancel race): close at once.
        if self.call.state is State.ENDED:
            transport.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.call.state is State.ENDED:
            transport.disconnect()
            return
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT and frame.fin:
            self.call.on_upstream(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_reason()
            if not transport.is_close_frame_sent:
                transport.send_close(code)
            transport.disconnect()
            self.call.upstream_closed(int(code.value), reason)
        elif msg_type is WSMsgType.TEXT:
            self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                message, self._fragments = bytes(self._fragments), None
                self.call.on_upstream(message)
        elif msg_type is WSMsgType.BINARY:
            self.call.on_upstream(b"\x00binary frame")  # reported as an upstream protocol error

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        # No-op once the call has ended (we closed it); otherwise the peer vanished.
        if self.call.state is not State.ENDED:
            self.call.upstream_closed(1006, "connection lost")


class UpstreamConnector:
    """Opens upstream sessions for calls; one per worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._headers = {"Authorization": f"Bearer {settings.openai_api_key}"}
        self._ssl: ssl.SSLContext | None = None
        if settings.upstream_url.startswith("wss://"):
            ctx = ssl.create_default_context()
            if settings.upstream_ca_file:
                ctx.load_verify_locations(settings.upstream_ca_file)
            self._ssl = ctx
        self._tls_buffers = (
            {"ssl_incoming_bio_size": TLS_BIO_BYTES, "ssl_outgoing_bio_size": TLS_BIO_BYTES} if self._ssl else {}
        )
        self._tasks: set[asyncio.Task] = set()

    def open(self, call: Call) -> asyncio.Task:
        """Start connecting; the call keeps the task to cancel it if it ends first."""
        task = asyncio.get_running_loop().create_task(self._connect(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self, call: Call) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            transport, listener = await asyncio.wait_for(
                ws_connect(
                    lambda: UpstreamListener(call),
                    self._settings.upstream_url,
                    ssl_context=self._ssl,
                    extra_headers=self._headers,
                    websocket_handshake_timeout=self._settings.upstream_connect_timeout_s,
                    max_frame_size=MAX_UPSTREAM_MESSAGE,
                    enable_auto_ping=False,
                    max_redirects=0,  # never replay the API key to another host
                    logger_name="upstream",
                    read_buffer_init_size=READ_BUFFER,
                    **self._tls_buffers,
                ),
                self._settings.upstream_connect_timeout_s,
            )
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError as exc:
            call.upstream_failed(exc, "connect_timeout")
            return
        except ssl.SSLError as exc:
            call.upstream_failed(exc, "tls")
            return
        except Exception as exc:  # handshake refused (401/403/5xx), DNS, connection refused
            code = "handshake" if type(exc).__name__.startswith("WS") else "connect_failed"
            call.upstream_failed(exc, code)
            return
        if call.state is State.ENDED:
            transport.disconnect()
            return
        call.upstream_connected(WSSender(transport), loop.time() - t0)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
