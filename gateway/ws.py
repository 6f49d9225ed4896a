"""``call.Sender`` over a picows transport (both legs of a call use it)."""
from __future__ import annotations

from picows import WSCloseCode, WSMsgType, WSTransport


class WSSender:
    __slots__ = ("_transport",)

    def __init__(self, transport: WSTransport) -> None:
        self._transport = transport

    def send(self, data: bytes) -> None:
        self._transport.send(WSMsgType.TEXT, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        transport = self._transport
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), reason.encode())
        transport.disconnect()
