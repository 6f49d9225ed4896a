"""Upstream realtime session on picows: one client socket per call, TLS verified.

``UpstreamConnector.open(sink)`` starts a task that connects and hands the sink (the call) a
sender; every failure path ends in ``sink.upstream_failed`` so the call ends cleanly with a
counted reason.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from ..config import Settings
from ..openssl_ctx import enable_read_ahead
from ..outcomes import UpstreamFailure
from ..picows_adapter import SocketBioCheck, WSSender, bound_send_buffer, socket_bio_tls
from ..reassembly import Fragment, Reassembler

log = logging.getLogger("gateway.upstream")
# The largest server message accepted (frame or reassembled message): audio deltas are a few KiB, a
# session.created or a long response.done tens of KiB; anything near this is a broken peer.
MAX_UPSTREAM_MESSAGE = 4 * 1024 * 1024
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
    """What receives one upstream session's events (``call.Call``, or a session being prepared)."""

    ended: bool  # the call is over: drop whatever still arrives

    def on_upstream(self, message: bytes | memoryview) -> None: ...

    def on_upstream_binary(self) -> None: ...

    def upstream_connected(self, link: UpstreamLink, connect_s: float) -> None: ...

    def upstream_failed(self, exc: BaseException, code: UpstreamFailure | str) -> None: ...

    def upstream_closed(self, code: int, reason: str, failure: UpstreamFailure) -> None: ...

    def upstream_paused(self) -> None:
        """The upstream stopped reading (its socket buffer is above the high-water mark)."""

    def upstream_resumed(self) -> None: ...

    def on_upstream_oversized(self, limit: int) -> None: ...


class _Detached:
    """Where a connection's events go once the call has moved on from it: nowhere."""

    ended = True

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _ignore


class UpstreamListener(WSListener):
    def __init__(self, sink: UpstreamSink, max_message: int) -> None:
        self.sink = sink
        self._fragments = Reassembler(max_message)

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
            if not transport.is_close_frame_sent:  # see TwilioMediaListener: picows's oversized frames
                sink.on_upstream(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_reason()
            if not transport.is_close_frame_sent:
                transport.send_close(code)
            transport.disconnect()
            self.sink = _DETACHED
            sink.upstream_closed(int(code.value), reason, UpstreamFailure.CLOSED)
        elif msg_type is WSMsgType.TEXT or msg_type is WSMsgType.CONTINUATION:
            result = self._fragments.feed(frame)
            if isinstance(result, bytes):
                sink.on_upstream(result)
            elif result is Fragment.TOO_BIG:
                sink.on_upstream_oversized(self._fragments.max_bytes)
        elif msg_type is WSMsgType.BINARY:
            sink.on_upstream_binary()

    def pause_writing(self) -> None:
        self.sink.upstream_paused()

    def resume_writing(self) -> None:
        self.sink.upstream_resumed()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        # Nothing to say once the call has ended or moved on (we closed it); otherwise the peer
        # vanished, or stopped answering our pings (picows closed with GOING_AWAY on its own).
        sink, self.sink = self.sink, _DETACHED
        if sink.ended:
            return
        handshake = transport.close_handshake
        sent = handshake.sent if handshake is not None else None
        if sent is not None and sent.code is WSCloseCode.GOING_AWAY and "ping" in (sent.reason or ""):
            sink.upstream_closed(1006, "no pong within the keepalive timeout", UpstreamFailure.KEEPALIVE)
        else:
            sink.upstream_closed(1006, "connection lost", UpstreamFailure.CLOSED)


def _ignore(*_args: object, **_kwargs: object) -> None:
    pass


_DETACHED: UpstreamSink = _Detached()  # a sink that drops everything


class UpstreamLink(WSSender):
    """The call's handle on one upstream connection: send, close, and say where events go."""

    __slots__ = ("_listener",)

    def __init__(self, transport: WSTransport, listener: UpstreamListener) -> None:
        super().__init__(transport)
        self._listener = listener

    def retarget(self, sink: UpstreamSink) -> None:
        """From now on this connection's events go to ``sink`` (a prepared session becomes the call's)."""
        self._listener.sink = sink

    def detach(self) -> None:
        """This connection's events (its close included) go nowhere: the call moved on from it."""
        self._listener.sink = _DETACHED


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
            self._ssl = socket_bio_tls(ctx)
            why_not = enable_read_ahead(ctx)  # one read per readiness on the socket BIO
            if why_not is not None:
                log.warning("OpenSSL read-ahead not set (%s): about 50 more read calls per call-second", why_not)
        self._check_tls = SocketBioCheck()
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
                    lambda: UpstreamListener(sink, MAX_UPSTREAM_MESSAGE),
                    url,
                    ssl_context=self._ssl,
                    extra_headers=self._headers,
                    websocket_handshake_timeout=timeout,
                    max_frame_size=MAX_UPSTREAM_MESSAGE,
                    # Keepalive: a ping after ping_idle_s without data, the connection closed when no
                    # pong follows within ping_timeout_s (a half-open upstream is found in their sum).
                    enable_auto_ping=self._settings.upstream_ping_idle_s > 0,
                    auto_ping_idle_timeout=self._settings.upstream_ping_idle_s or 5.0,
                    auto_ping_reply_timeout=self._settings.upstream_ping_timeout_s,
                    max_redirects=0,  # never replay the API key to another host
                    logger_name="upstream",
                    read_buffer_init_size=READ_BUFFER,
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
        assert isinstance(_listener, UpstreamListener)
        bound_send_buffer(transport.underlying_transport)
        if self._ssl is not None:
            self._check_tls(transport)
        sink.upstream_connected(UpstreamLink(transport, _listener), loop.time() - t0)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
