"""The one module that uses picows beyond its documented API.

picows is the fastest WebSocket implementation we measured, but two things the gateway needs are
not in its public API:

* **Serving on a port shared with aiohttp.** ``picows.ws_create_server`` owns its listening
  socket; the one-port dispatcher (``server.PortDispatcher``) needs a picows *protocol* to hand
  an already accepted connection to. ``server_protocol_factory`` builds one exactly as
  ``ws_create_server`` does internally (``picows.picows.WSProtocol``, positional arguments,
  unchanged from picows 2.0 to 2.3).
* **Several messages in one socket write.** ``WSTransport.send`` writes one frame per call; a
  media message and its mark go out together through the public ``underlying_transport`` with the
  gateway's own RFC 6455 server framing (``text_frame_header``).
* **TLS straight on the socket** (``socket_bio_tls``). aiofastnet, picows's TLS transport, stages
  every connection's TLS records in two static memory BIOs (16 KiB + 64 each at their smallest,
  touched as records pass through them); on a socket BIO OpenSSL reads and writes the socket
  itself, as aiofastnet does for kernel TLS. Measured at 200 calls: 26 KiB less resident memory
  per call (109 → 83), the same CPU; with OpenSSL's read-ahead (``openssl_ctx``) 184 system
  calls per call-second against 170 (219 without it). aiofastnet offers it
  publicly only together with kernel TLS, so the adapter sets the context attribute aiofastnet
  reads (``_aiofastnet_force_socket_bio``) and checks a worker's first TLS connection through
  aiofastnet's public ``get_extra_info`` names (``uses_socket_bio``); a version that ignores the
  attribute costs memory, not correctness, and is reported once.

Everything else (``ws_connect``, ``WSListener``, ``WSTransport``, frames) is public API used
directly by the adapters. ``check_picows`` runs at import: an incompatible picows fails loudly
here, naming the tested range, instead of misbehaving mid-call (``tests/gateway/test_picows_adapter.py``).
"""
from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from picows import WSAutoPingStrategy, WSCloseCode, WSMsgType, WSTransport, WSUpgradeRequest
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # internal: absent from picows' stubs

TESTED_PICOWS = ((2, 0), (2, 4))  # [first, end) minor versions the tests passed with
PICOWS_VERSION = importlib.metadata.version("picows")
AIOFASTNET_VERSION = importlib.metadata.version("aiofastnet")
SOCKET_BIO_ATTRIBUTE = "_aiofastnet_force_socket_bio"  # read by aiofastnet's SSLEngineDirect (1.2)
log = logging.getLogger("gateway.picows_adapter")

ListenerFactory = Callable[[WSUpgradeRequest], Any]


class IncompatiblePicowsError(RuntimeError):
    """The installed picows is not one this module was written and tested for."""


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def check_picows(version: str | None = None) -> None:
    """Fail loudly unless picows is within ``TESTED_PICOWS`` (at import of this module)."""
    version = version or PICOWS_VERSION
    first, end = TESTED_PICOWS
    if not first <= _version(version) < end:
        raise IncompatiblePicowsError(
            f"picows {version} is outside the tested range {first[0]}.{first[1]} <= v < {end[0]}.{end[1]}; "
            "gateway/picows_adapter.py builds picows' internal WSProtocol: re-check it and widen the range"
        )


def check_server_protocol(factory: Callable[[], asyncio.BufferedProtocol]) -> None:
    """Build one protocol (needs a running loop) so a changed WSProtocol fails at start, not mid-call."""
    try:
        protocol = factory()
    except TypeError as exc:
        raise IncompatiblePicowsError(f"picows {PICOWS_VERSION}: WSProtocol signature changed ({exc})") from exc
    if not isinstance(protocol, asyncio.BufferedProtocol):
        raise IncompatiblePicowsError(f"picows {PICOWS_VERSION}: WSProtocol is no longer a BufferedProtocol")


def _build(factory: ListenerFactory, logger: logging.Logger, max_frame_size: int, read_buffer_size: int,
           handshake_timeout_s: float) -> asyncio.BufferedProtocol:
    # The arguments picows.ws_create_server passes, in its order.
    protocol: asyncio.BufferedProtocol = WSProtocol(
        None,  # host:port (client side only)
        None,  # path (client side only)
        False,  # is_client_side
        factory,
        logger,
        True,  # disconnect_on_exception: a bug in one call's callback closes only that call
        handshake_timeout_s,
        False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto ping (Twilio streams media)
        True,  # auto pong
        max_frame_size,
        None,  # extra headers (client side only)
        read_buffer_size,
    )
    return protocol


def server_protocol_factory(factory: ListenerFactory, *, logger: logging.Logger, max_frame_size: int,
                            read_buffer_size: int, handshake_timeout_s: float = 5.0,
                            ) -> Callable[[], asyncio.BufferedProtocol]:
    """A protocol factory for accepted connections, as ``picows.ws_create_server`` would build."""

    def protocol() -> asyncio.BufferedProtocol:
        return _build(factory, logger, max_frame_size, read_buffer_size, handshake_timeout_s)

    return protocol


def socket_bio_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context``, marked so that aiofastnet runs its connections' TLS on the socket itself
    (no memory BIOs: see the module docstring). Verification and every other setting unchanged."""
    setattr(context, SOCKET_BIO_ATTRIBUTE, True)
    return context


def uses_socket_bio(transport: WSTransport) -> bool | None:
    """Whether a TLS connection's records go straight to its socket (None: not aiofastnet's TLS)."""
    extra = transport.underlying_transport.get_extra_info
    incoming, outgoing = extra("ssl_incoming_use_membio"), extra("ssl_outgoing_use_membio")
    if incoming is None or outgoing is None:
        return None
    return not incoming and not outgoing


class SocketBioCheck:
    """Checks the first TLS connection of a worker; says once if the socket BIO did not take."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = False

    def __call__(self, transport: WSTransport) -> None:
        if self._done:
            return
        self._done = True
        if not uses_socket_bio(transport):
            log.warning("aiofastnet %s kept memory BIOs for TLS (gateway/picows_adapter.py, socket_bio_tls): "
                        "calls work, with about 25 KiB more memory each", AIOFASTNET_VERSION)


class WSSender:
    """What a call sends through: text messages and a close, over a picows transport."""

    __slots__ = ("_transport",)

    def __init__(self, transport: WSTransport) -> None:
        self._transport = transport

    def send(self, data: bytes) -> None:
        self._transport.send(WSMsgType.TEXT, data)

    def send_many(self, *messages: bytes) -> None:
        for data in messages:
            self._transport.send(WSMsgType.TEXT, data)

    def close(self, code: int = 1000, reason: str = "", *, abort: bool = False) -> None:
        transport = self._transport
        if abort:  # a graceful close would wait, without limit, for a peer that no longer reads
            transport.disconnect(graceful=False)
            return
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), reason.encode())
        transport.disconnect()


# Kernel send buffers of the gateway's sockets (both legs), instead of Linux's autotuning up to
# tcp_wmem's 4 MiB: that much per socket is memory a stalled peer could pin per call (thousands of
# calls). 64 KiB holds over a second of either leg's traffic and sustains far more than a call's
# bandwidth at any realistic round trip; a peer that stops reading is noticed in seconds.
SOCKET_SNDBUF = 64 * 1024


def bound_send_buffer(transport: asyncio.BaseTransport) -> None:
    """Cap a connected socket's kernel send buffer at SOCKET_SNDBUF (ends autotuning)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)


class ServerWSSender(WSSender):
    """The server side of a socket (Twilio's leg): several messages go out in one write, and a
    peer that stops reading is noticed.

    A socket write is the dominant cost per message (a system call, and on loopback the receiver's
    TCP processing too), and every assistant chunk is two messages (media + its mark). Server
    frames are never masked (RFC 6455 §5.1), so the framing is a 2-10 byte header.

    Backpressure: while the transport is paused (its buffer above the high-water mark: the peer
    does not read), what is sent is counted; beyond ``stall_bytes`` ``on_stall`` runs once (the call
    ends as ``twilio_stalled``) instead of letting the buffer grow without bound.
    """

    __slots__ = ("_on_stall", "_stall_bytes", "paused", "queued")

    def __init__(self, transport: WSTransport, stall_bytes: int = 0, on_stall: Callable[[], object] | None = None
                 ) -> None:
        super().__init__(transport)
        self._stall_bytes = stall_bytes
        self._on_stall = on_stall
        self.paused = False
        self.queued = 0  # bytes sent while paused

    def resume(self) -> None:
        self.paused = False
        self.queued = 0

    def send(self, data: bytes) -> None:
        if self.paused:
            self._count(len(data))
        self._transport.send(WSMsgType.TEXT, data)

    def send_many(self, *messages: bytes) -> None:
        transport = self._transport
        if transport.is_close_frame_sent or transport.is_disconnected:
            return  # as picows does: nothing may follow a close frame
        parts: list[bytes] = []
        for data in messages:
            parts.append(text_frame_header(len(data)))
            parts.append(data)
        if self.paused:
            self._count(sum(map(len, parts)))
        transport.underlying_transport.writelines(parts)

    def _count(self, n: int) -> None:
        self.queued += n
        if self._stall_bytes and self.queued > self._stall_bytes and self._on_stall is not None:
            on_stall, self._on_stall = self._on_stall, None
            on_stall()


def text_frame_header(length: int) -> bytes:
    """FIN + text opcode, unmasked, with the RFC 6455 §5.2 payload length encoding."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


check_picows()
