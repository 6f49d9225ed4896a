"""One worker's gateway: the one public port, the call registry, admission.

Everything (webhook, control API, health, media socket) answers on ONE port, so a developer
behind a single tunnel and a production load balancer both see one backend. ``PortDispatcher``
reads only the request line of each new connection: ``GET /twilio/media`` goes to picows (the
fastest measured WebSocket server, which cannot serve request bodies), anything else to aiohttp.
After that first look the connection belongs to the chosen protocol; the dispatcher costs one
small buffer per connection and nothing per frame.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from .agents.profiles import Agents, load
from .agents.services import AgentServices
from .call import Call, State, pacer_period_s
from .config import Settings
from .control import commands
from .control.model import CallInfo, Verb
from .control.plane import ControlPlane
from .control.setup import ADMISSION_REFUSALS, make_plane
from .http import MEDIA_PATH, forwarded_base, make_app, media_url
from .metrics import GatewayMetrics
from .openai.upstream import UpstreamConnector
from .outcomes import ConnectionRefusal, EndReason, RejectReason
from .pacer import Pacer
from .picows_adapter import bound_send_buffer, check_server_protocol, server_protocol_factory
from .sender import Sender
from .twilio.media import TwilioMediaListener
from .twilio.signature import validate_signature
from .twilio.tokens import TokenVerifier, expiry_of

log = logging.getLogger("gateway.server")
MEDIA_PATHS = (MEDIA_PATH.encode(), MEDIA_PATH.encode() + b"/")
SUBPROTOCOL = "audio.twilio.com"
MAX_REQUEST_LINE = 8192
MAX_HEAD = 16 * 1024  # request line + headers
MAX_HTTP_BODY = 64 * 1024  # the webhook's form, a control command (aiohttp's client_max_size too)
REQUEST_TIMEOUT_S = 10.0  # a connection's whole first request (head, and body for HTTP) must arrive
# Connections of a worker still sending their first request; beyond it new ones are refused at
# once (counted, logged). Connections handed over are bounded by admission (calls) or answered at
# once (HTTP, whose request is already in full).
MAX_PENDING_CONNECTIONS = 1024
TICK_S = 0.25  # per-worker housekeeping: probes, timeouts (≈0.3 µs per call)
BACKLOG = 2048  # a ramp of thousands of calls must not overflow the accept queue
FLUSH_EVERY = 4  # metrics flush once a second: ≈2.3 µs per call-second, <0.5% of the CPU budget


# picows grows a read buffer when a read fills 90 % of it and never shrinks it. Twilio's messages
# are ~0.4 KiB (media) to ~1-2 KiB (start with parameters): 2 KiB (picows's minimum) instead of the
# default 16 KiB saves 14 KiB of resident memory per call.
TWILIO_READ_BUFFER = 2 * 1024


class PortDispatcher(asyncio.Protocol):
    """Hands each new connection to picows or aiohttp once its request has arrived.

    Slow or endless clients never reach the servers behind: the media upgrade's head, or an HTTP
    request's head and body (``Content-Length``; chunked bodies are refused), must arrive within
    REQUEST_TIMEOUT_S and their sizes; otherwise the connection is closed and counted
    (``gateway_rejected_connections_total{reason}``). aiohttp then answers that one request and
    closes (no keep-alive): every HTTP request passes this gate.
    """

    __slots__ = ("_buf", "_gateway", "_timer", "_transport")

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses, only alike).
        self._transport = cast(asyncio.Transport, transport)
        gateway = self._gateway
        if gateway.pending_connections >= MAX_PENDING_CONNECTIONS:
            gateway.refuse_connection(ConnectionRefusal.TOO_MANY)
            transport, self._transport = self._transport, None  # never counted as pending
            transport.abort()
            return
        gateway.pending_connections += 1
        bound_send_buffer(transport)
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        self._gateway.refuse_connection(ConnectionRefusal.SLOW_REQUEST)
        if self._transport is not None:
            self._transport.abort()

    def _refuse(self, reason: ConnectionRefusal) -> None:
        self._gateway.refuse_connection(reason)
        transport = self._transport
        assert transport is not None
        transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        transport.close()

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buf = self._buf
        buf += data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            line_end = buf.find(b"\r\n")
            if (line_end < 0 and len(buf) > MAX_REQUEST_LINE) or len(buf) > MAX_HEAD:
                self._refuse(ConnectionRefusal.OVERSIZED_HEAD)
            return
        line_end = buf.find(b"\r\n")
        method, _, rest = bytes(buf[:line_end]).partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"GET" and path in MEDIA_PATHS:
            self._handover(self._gateway.websocket_protocol())
            return
        length = _content_length(bytes(buf[line_end:head_end]))
        if length is None or length > MAX_HTTP_BODY:
            self._refuse(ConnectionRefusal.BAD_BODY)
            return
        if len(buf) - (head_end + 4) >= length:  # the whole request is here
            self._handover(self._gateway.http_protocol())

    def _handover(self, protocol: asyncio.BaseProtocol) -> None:
        transport = self._transport
        assert transport is not None
        self._done()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = memoryview(bytes(self._buf))
        self._buf = bytearray()
        if isinstance(protocol, asyncio.BufferedProtocol):
            while data:
                buf = memoryview(protocol.get_buffer(len(data)))
                n = min(len(buf), len(data))
                buf[:n] = data[:n]
                protocol.buffer_updated(n)
                data = data[n:]
        else:
            cast(asyncio.Protocol, protocol).data_received(bytes(data))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._done()

    def _done(self) -> None:
        """No longer pending: handed over, or gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport = None
            self._gateway.pending_connections -= 1


def _content_length(headers: bytes) -> int | None:
    """The request body's length (0 without one); None for chunked or unreadable framing."""
    length = 0
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit():
                return None
            length = int(value)
    return length



def twilio_stall_bytes(settings: Settings) -> int:
    """What may be written to a Twilio socket that stopped reading before its call ends, beyond the
    transport's high-water mark: 6x GATEWAY_TWILIO_STALL_MS of audio (≈ 11.2 bytes of media message
    per μ-law ms), so a stall ends the call by its time or by this, whichever comes first."""
    return int(settings.twilio_stall_ms * 11.2 * 6)

class Gateway:
    """The calls of one worker process and the servers that feed them."""

    def __init__(self, settings: Settings, agents: Agents | None = None, plane: ControlPlane | None = None) -> None:
        self.settings = settings
        self.calls: set[Call] = set()
        self.rejected: dict[RejectReason, int] = {}
        self.ended: dict[str, int] = {}  # by Outcome
        self.draining = False
        self.pending_connections = 0  # connections still sending their first request (PortDispatcher)
        self._refusal_logged_at = 0.0
        self._idle: asyncio.Event | None = None  # set when the last call ends during a drain
        # Tokens are minted and read also in development mode (they carry the agent), but only
        # enforced with a Twilio auth token (Call._on_start).
        self.tokens = TokenVerifier(settings.token_key)
        self.upstream = UpstreamConnector(settings)
        self.metrics = GatewayMetrics()
        self.agents = AgentServices(settings, agents if agents is not None else load(settings),
                                    lambda sink, result: self.metrics.count("gateway_call_records_total", sink, result))
        self.plane = plane if plane is not None else make_plane(settings, self.metrics)
        self._by_sid: dict[str, Call] = {}  # admitted calls of this worker
        self._admissions: set[asyncio.Task[None]] = set()
        self._app = make_app(self)
        self._runner: web.AppRunner | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.websocket_protocol = server_protocol_factory(
            self._media_listener, logger=logging.getLogger("picows.server"),
            max_frame_size=settings.max_frame_bytes, read_buffer_size=TWILIO_READ_BUFFER)
        self.port: int | None = None
        # Called with each Call as it ends (metrics, the demo's summary); must not raise.
        self.call_end_hooks: list[Callable[[Call], None]] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._pacer: Pacer | None = None  # paced playout's one timer for every call of the worker
        self._tick_due = 0.0
        self._ticks = 0

    # ------------------------------------------------------------------ registry / admission
    @property
    def calls_by_sid(self) -> dict[str, Call]:
        return dict(self._by_sid)

    def admission_refusal(self) -> RejectReason | None:
        """This worker's own reason to refuse a new media socket (the pod's exact count decides at
        the webhook and at `start`, through the control plane)."""
        if self.draining:
            return RejectReason.DRAINING
        if len(self.calls) >= self.settings.max_calls:
            return RejectReason.CAPACITY
        return None

    async def webhook_refusal(self, call_sid: str) -> RejectReason | None:
        """Reason to refuse the webhook of ``call_sid`` (pod and cluster limits), or None."""
        local = self.admission_refusal()
        if local is not None:
            return local
        reason = await self.plane.reserve(call_sid)
        return None if reason is None else RejectReason(reason)

    async def readiness(self) -> RejectReason | None:
        """Why this pod takes no new calls now (draining, or full), or None when it does."""
        if self.draining:
            return RejectReason.DRAINING
        counts = await self.plane.counts()
        if counts.get("live", 0) + counts.get("reserved", 0) >= counts.get("max", self.settings.max_calls):
            return RejectReason.CAPACITY
        return None

    def _admit(self, call: Call, token: str) -> None:
        """Ask the control plane whether the call's `start` may stream (pod count, one socket per
        CallSid, one use per token), then tell the call."""
        task = asyncio.get_running_loop().create_task(self._admission(call, token))
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)

    async def _admission(self, call: Call, token: str) -> None:
        assert call.call_sid is not None
        info = CallInfo(call_sid=call.call_sid, stream_sid=call.stream_sid or "", agent=call.stats.agent or "",
                        started_at=time.time(), state="streaming")
        refusal = await self.plane.start_call(info, token, expiry_of(token))
        if refusal is None and call.state is State.STARTING:
            self._by_sid[call.call_sid] = call
        elif refusal is None:  # it ended while the plane answered
            self.plane.end_call(call.call_sid)
        call.admitted(None if refusal is None else ADMISSION_REFUSALS.get(refusal, EndReason.OVER_CAPACITY))

    async def execute(self, call_sid: str, verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
        """A control command for a call of this worker (``control.commands``)."""
        return commands.execute(self._by_sid.get(call_sid), call_sid, verb, args)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new calls, let active ones finish for up to ``timeout_s``, then end the rest.

        Returns how many calls had to be ended. The port keeps answering (readiness false,
        503 / busy TwiML) so load balancers and Twilio move on cleanly."""
        self.draining = True
        log.info("draining: %d active calls, up to %.0f s", len(self.calls), timeout_s)
        if self.calls:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                pass
            finally:
                self._idle = None
        remaining = len(self.calls)
        for call in list(self.calls):
            call.end(EndReason.DRAIN_TIMEOUT)
        if remaining:
            log.warning("drain timeout: ended %d calls", remaining)
        return remaining

    def refuse_connection(self, reason: ConnectionRefusal) -> None:
        """A connection closed before it reached the webhook, the API or the media socket."""
        self.metrics.count("gateway_rejected_connections_total", reason)
        if reason is ConnectionRefusal.TOO_MANY:  # one line per second at most: this is a flood
            now = time.monotonic()
            if now - self._refusal_logged_at >= 1.0:
                self._refusal_logged_at = now
                log.warning("refusing new connections: %d still sending their first request (limit %d)",
                            self.pending_connections, MAX_PENDING_CONNECTIONS)
        else:
            log.info("connection closed: %s", reason)

    def count_rejected(self, reason: RejectReason) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.metrics.rejected(reason)

    def _make_call(self, sender: Sender) -> Call:
        loop = asyncio.get_running_loop()
        agents = self.agents
        call = Call(self.settings, sender, loop.time, self.upstream.open,
                    lambda c, claims: agents.behaviour(c, c.stats, claims), self.tokens, self._call_ended,
                    loop.call_later, self._admit, self._pacer)
        self.calls.add(call)
        self.metrics.call_started(call)
        return call

    def _call_ended(self, call: Call) -> None:
        self.calls.discard(call)
        if call.call_sid is not None and self._by_sid.get(call.call_sid) is call:
            del self._by_sid[call.call_sid]
            self.plane.end_call(call.call_sid)
        if self._idle is not None and not self.calls:
            self._idle.set()
        outcome = call.outcome or "unknown"
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        self.metrics.call_ended(call, asyncio.get_running_loop().time())
        for hook in self.call_end_hooks:
            hook(call)

    # ------------------------------------------------------------------ protocols
    def http_protocol(self) -> asyncio.BaseProtocol:
        assert self._runner is not None and self._runner.server is not None
        protocol: asyncio.BaseProtocol = self._runner.server()
        return protocol

    def _media_listener(self, request: WSUpgradeRequest) -> Any:
        reason = self.admission_refusal()
        if reason is not None:
            self.count_rejected(reason)
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(503, b"busy\n"), None)
        signature = request.headers.get("X-Twilio-Signature")
        if signature is not None and self.settings.secure:
            base = self.settings.public_url or forwarded_base(request.headers)
            if not validate_signature(self.settings.twilio_auth_token, media_url(base), {}, signature):
                self.count_rejected(RejectReason.BAD_SIGNATURE)
                log.warning("media socket rejected: bad X-Twilio-Signature")
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(403, b"invalid signature\n"), None
                )
        stall_ms = self.settings.twilio_stall_ms
        listener = TwilioMediaListener(self._make_call, self.settings.max_frame_bytes, stall_ms / 1000,
                                       twilio_stall_bytes(self.settings))
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        if SUBPROTOCOL in (p.strip() for p in offered.split(",")):
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response(extra_headers={"Sec-WebSocket-Protocol": SUBPROTOCOL}),
                listener,
            )
        return listener

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str | None = None, port: int | None = None,
                    sock: socket.socket | None = None) -> int:
        """Listen on the one public port; returns the bound port."""
        check_server_protocol(self.websocket_protocol)
        await self.plane.start()
        self.plane.serve_commands(self.execute)
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        if sock is None:
            server = await loop.create_server(
                lambda: PortDispatcher(self),
                host=host if host is not None else self.settings.host,
                port=port if port is not None else self.settings.port,
                reuse_address=True,
                backlog=BACKLOG,
            )
        else:
            server = await loop.create_server(lambda: PortDispatcher(self), sock=sock, backlog=BACKLOG)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        if self.settings.playout == "paced":
            self._pacer = Pacer(loop.time, loop.call_later, pacer_period_s(self.settings))
        self._tick_due = loop.time() + TICK_S
        self._tick_handle = loop.call_at(self._tick_due, self._tick)
        log.info("listening on port %s", self.port)
        return self.port

    def _tick(self) -> None:
        """Housekeeping: per-call probes/timeouts, metrics flush, event-loop lag."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        lag = now - self._tick_due
        for call in list(self.calls):  # tick may end a call (and remove it from the set)
            try:
                call.tick(now)
            except Exception:  # one call's bug must not stop housekeeping for the others
                log.exception("tick failed", extra=call.log_extra())
        self._ticks += 1
        if self._ticks % FLUSH_EVERY == 0:
            self.metrics.flush(self.calls, lag)
        self._tick_due = now + TICK_S
        self._tick_handle = loop.call_at(self._tick_due, self._tick)

    async def stop(self) -> None:
        """Stop listening, end every call (closing both legs), release the HTTP side."""
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for server in self._servers:
            server.close()
        for call in list(self.calls):
            call.end(EndReason.SHUTDOWN)
        if self._pacer is not None:
            self._pacer.close()
        await self.upstream.aclose()
        await self.agents.aclose()
        for task in list(self._admissions):
            task.cancel()
        await asyncio.gather(*self._admissions, return_exceptions=True)
        await self.plane.aclose()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
