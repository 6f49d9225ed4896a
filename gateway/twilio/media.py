"""Twilio media socket on picows: frames in, ``MediaSink`` callbacks out; nothing else.

The listener owns reassembly of fragmented messages, binary-frame and size violations, and close
codes. Messages go to the sink (the call) as a zero-copy memoryview valid only during the
callback (the fast path copies what it keeps).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from ..picows_adapter import ServerWSSender
from ..reassembly import Fragment, Reassembler
from ..sender import Sender


class MediaSink(Protocol):
    """What receives one media socket's messages (``call.Call``)."""

    def on_twilio(self, message: bytes | memoryview) -> None: ...

    def on_twilio_binary(self) -> None: ...

    def on_twilio_oversized(self, size: int) -> None: ...

    def twilio_closed(self) -> None: ...

    def on_twilio_stalled(self) -> None:
        """Twilio stopped reading while audio kept coming: more than the bound is waiting for it."""


class TwilioMediaListener(WSListener):
    """One per media socket; creates its sink when the socket opens."""

    def __init__(self, make_sink: Callable[[Sender], MediaSink], max_message_bytes: int, stall_s: float,
                 stall_bytes: int) -> None:
        self._make_sink = make_sink
        self._max = max_message_bytes
        self._stall_s = stall_s
        self._stall_bytes = stall_bytes
        self._stall_timer: asyncio.TimerHandle | None = None
        self._fragments = Reassembler(max_message_bytes)
        self.sink: MediaSink | None = None
        self._sender: ServerWSSender | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._sender = ServerWSSender(transport, self._stall_bytes, self._stalled)
        self.sink = self._make_sink(self._sender)

    def _stalled(self) -> None:
        self._stall_timer = None
        if self.sink is not None:
            self.sink.on_twilio_stalled()

    def pause_writing(self) -> None:
        """Twilio does not read (the socket's buffer is above its high-water mark): if it still
        does not after the stall time, the call ends (a bounded burst is no stall)."""
        if self._sender is not None and not self._sender.paused:
            self._sender.paused = True
            self._stall_timer = asyncio.get_running_loop().call_later(self._stall_s, self._stalled)

    def resume_writing(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._sender is not None:
            self._sender.resume()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        sink = self.sink
        assert sink is not None  # picows calls on_ws_connected first
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT and frame.fin:
            # picows refuses a frame over max_frame_size by sending a close, yet still delivers its
            # payload once it arrives: nothing may pass once a close is sent (one flag read).
            if not transport.is_close_frame_sent:
                sink.on_twilio(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type is WSMsgType.BINARY:
            sink.on_twilio_binary()
        elif msg_type is WSMsgType.TEXT or msg_type is WSMsgType.CONTINUATION:
            result = self._fragments.feed(frame)
            if isinstance(result, bytes):
                sink.on_twilio(result)
            elif result is Fragment.TOO_BIG:
                sink.on_twilio_oversized(self._max + 1)
            elif result is Fragment.ORPHAN:
                sink.on_twilio(b"")  # continuation without a start: reported as invalid JSON

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        sink = self.sink
        if sink is None:
            return
        handshake = transport.close_handshake
        sent = handshake.sent if handshake is not None else None
        if sent is not None and sent.code is WSCloseCode.MESSAGE_TOO_BIG:
            sink.on_twilio_oversized(self._max + 1)
        sink.twilio_closed()
