"""Upstream realtime session on picows: one client socket per call, TLS verified.

``UpstreamConnector.open(sink)`` starts a task that connects and hands the sink (the call) a
sender; every failure path ends in ``sink.upstream_failed`` so the call ends cleanly with a
counted reason.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..config import Settings
from ..outcomes import UpstreamFailure
from ..picows_adapter import WSSender, tls_buffer_options
from ..sender import Sender

log = logging.getLogger("gateway.upstream")
MAX_UPSTREAM_MESSAGE = 16 * 1024 * 1024  # input appends may be 15 MiB; server events are far smaller
# Memory per call (picows grows these on demand, never shrinks them). Server events are mostly
# audio deltas of 1-7 KiB; 4 KiB instead of picows's 16 KiB default saves 12 KiB per call.
READ_BUFFER = 4 * 1024


def model_url(url: str, model: str) -> str:
    """``url`` with its ``model`` query parameter set to ``model`` (unchanged if empty)."""
    if not model:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("model", model)])))


class UpstreamSink(Protocol):
    """What receives one upstream session's events (``call.Call``)."""

    ended: bool  # the call is over: drop whatever still arrives

    def on_upstream(self, message: bytes | memoryview) -> None: ...

    def on_upstream_binary(self) -> None: ...

    def upstream_connected(self, sender: Sender, connect_s: float) -> None: ...

    def upstream_failed(self, exc: BaseException, code: UpstreamFailure | str) -> None: ...

    def upstream_closed(self, code: int, reason: str) -> None: ...


class UpstreamListener(WSListener):
    def __init__(self, sink: UpstreamSink) -> None:
        self.sink = sink
        self._fragments: bytearray | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        # The connect may complete after the call ended (timeout/cancel race): close at once.
        if self.sink.ended:
            transport.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        sink = self.sink
        if sink.ended:
            transport.disconnect()
            return
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT and frame.fin:
            sink.on_upstream(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_reason()
            if not transport.is_close_frame_sent:
                transport.send_close(code)
            transport.disconnect()
            sink.upstream_closed(int(code.value), reason)
        elif msg_type is WSMsgType.TEXT:
            self._fragments = bytearray(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CONTINUATION and self._fragments is not None:
            self._fragments += frame.get_payload_as_memoryview()
            if frame.fin:
                message, self._fragments = bytes(self._fragments), None
                sink.on_upstream(message)
        elif msg_type is WSMsgType.BINARY:
            sink.on_upstream_binary()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        # No-op once the call has ended (we closed it); otherwise the peer vanished.
        if not self.sink.ended:
            self.sink.upstream_closed(1006, "connection lost")


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
        self._tls_buffers = tls_buffer_options(self._ssl is not None)
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, sink: UpstreamSink, model: str = "") -> asyncio.Task[None]:
        """Start connecting (to ``model`` if given, else the configured URL's); the call keeps the
        task to cancel it if it ends first."""
        url = model_url(self._settings.upstream_url, model)
        task = asyncio.get_running_loop().create_task(self._connect(sink, url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self, sink: UpstreamSink, url: str) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        timeout = self._settings.upstream_connect_timeout_s
        try:
            transport, _listener = await asyncio.wait_for(
                ws_connect(
                    lambda: UpstreamListener(sink),
                    url,
                    ssl_context=self._ssl,
                    extra_headers=self._headers,
                    websocket_handshake_timeout=timeout,
                    max_frame_size=MAX_UPSTREAM_MESSAGE,
                    enable_auto_ping=False,
                    max_redirects=0,  # never replay the API key to another host
                    logger_name="upstream",
                    read_buffer_init_size=READ_BUFFER,
                    **self._tls_buffers,
                ),
                timeout,
            )
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            sink.upstream_failed(exc, UpstreamFailure.CONNECT_TIMEOUT)
            return
        except ssl.SSLError as exc:
            sink.upstream_failed(exc, UpstreamFailure.TLS)
            return
        except WSError as exc:  # handshake refused (401/403/5xx), invalid upgrade response
            sink.upstream_failed(exc, UpstreamFailure.HANDSHAKE)
            return
        except Exception as exc:  # DNS, connection refused  # noqa: BLE001 - every failure ends the call with a reason
            sink.upstream_failed(exc, UpstreamFailure.CONNECT_FAILED)
            return
        if sink.ended:
            transport.disconnect()
            return
        sink.upstream_connected(WSSender(transport), loop.time() - t0)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
