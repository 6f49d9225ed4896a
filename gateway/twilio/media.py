"""Twilio media socket on picows: frames in, ``Call`` callbacks out; nothing else.

The listener owns reassembly of fragmented messages, binary-frame and size violations, and close
codes. Messages go to the call as a zero-copy memoryview valid only during the callback (the fast
path copies what it keeps).
"""
from __future__ import annotations

import logging

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from ..call import Call
from ..ws import ServerWSSender

log = logging.getLogger("gateway.twilio")


class TwilioMediaListener(WSListener):
    """One per media socket; creates its ``Call`` when the socket opens."""

    def __init__(self, make_call, max_message_bytes: int) -> None:
        self._make_call = make_call
        self._max = max_message_bytes
        self._fragments: bytearray | None = None
        self._fragment_type = WSMsgType.TEXT
        self.call: Call | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.call = self._make_call(ServerWSSender(transport))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        call = self.call
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT and frame.fin:
            call.on_twilio(frame.get_payload_as_memoryview())
        elif msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type is WSMsgType.BINARY:
            call.on_twilio_binary()
        elif msg_type is WSMsgType.TEXT or msg_type is WSMsgType.CONTINUATION:
            self._reassemble(frame)

    def _reassemble(self, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            self._fragments = bytearray(frame.get_payload_as_memoryview())
            return
        if self._fragments is None:
            self.call.on_twilio(b"")  # continuation without a start: reported as invalid JSON
            return
        self._fragments += frame.get_payload_as_memoryview()
        if len(self._fragments) > self._max:
            self._fragments = None
            self.call.on_twilio_oversized(self._max + 1)
        elif frame.fin:
            message, self._fragments = bytes(self._fragments), None
            self.call.on_twilio(message)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        call = self.call
        if call is None:
            return
        sent = transport.close_handshake.sent if transport.close_handshake else None
        if sent is not None and sent.code is WSCloseCode.MESSAGE_TOO_BIG:
            call.on_twilio_oversized(self._max + 1)
        call.twilio_closed()
