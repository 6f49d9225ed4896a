"""``call.Sender`` over a picows transport (both legs of a call use it)."""
from __future__ import annotations

from picows import WSCloseCode, WSMsgType, WSTransport


class WSSender:
    __slots__ = ("_transport",)

    def __init__(self, transport: WSTransport) -> None:
        self._transport = transport

    def send(self, data: bytes) -> None:
        self._transport.send(WSMsgType.TEXT, data)

    def send_many(self, *messages: bytes) -> None:
        for data in messages:
            self._transport.send(WSMsgType.TEXT, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        transport = self._transport
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code), reason.encode())
        transport.disconnect()


class ServerWSSender(WSSender):
    """The server side of a socket (Twilio's leg): several messages go out in one write.

    A socket write is the dominant cost per message (a system call, and on loopback the receiver's
    TCP processing too), and every assistant chunk is two messages (media + its mark). Server
    frames are never masked (RFC 6455 §5.1), so the framing is a 2-4 byte header; picows sends one
    frame per write, hence this.
    """

    __slots__ = ()

    def send_many(self, *messages: bytes) -> None:
        transport = self._transport
        if transport.is_close_frame_sent or transport.is_disconnected:
            return  # as picows does: nothing may follow a close frame
        parts: list[bytes] = []
        for data in messages:
            parts.append(_text_frame_header(len(data)))
            parts.append(data)
        transport.underlying_transport.writelines(parts)


def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode, unmasked, with the RFC 6455 §5.2 payload length encoding."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")
